"""Benchmarks for issue 5: `python -m benchmarks` (see benchmarks/README.md)."""
