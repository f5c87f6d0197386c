"""Benchmarks against the targets of docs/performance.md: `python -m benchmarks` (see benchmarks/README.md)."""
