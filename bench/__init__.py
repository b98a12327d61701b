"""The cache-sync benchmark: ``python -m bench --help``; see docs/benchmark.md."""
