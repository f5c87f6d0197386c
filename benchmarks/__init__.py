"""Benchmarks against the targets of docs/performance-budget.md: `python -m benchmarks` (see benchmarks/README.md)."""
