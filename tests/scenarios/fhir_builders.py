"""The FHIR R4 and CDS Hooks request factories the tests use.

They live in `examples/fhir_builders.py`, because `python -m examples.generate` builds the example requests with
them and must not import anything from `tests/`. This name is that very module (private helpers included), so
the tests, the examples and the benchmarks share one set of factories and one id counter.
"""

import sys

from examples import fhir_builders

sys.modules[__name__] = fhir_builders
