"""The FHIR R4 and CDS Hooks request factories the tests use.

They live in `examples/fhir_builders.py`, because `python -m examples.generate` builds the example requests with
them and must not import anything from `tests/`; this module re-exports them under the name the tests use.
"""

from examples.fhir_builders import *  # noqa: F403
