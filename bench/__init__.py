"""Benchmarks: `python -m bench.eventstore`, `python -m bench.api` (see BENCHMARKS.md)."""
