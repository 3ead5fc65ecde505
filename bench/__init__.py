"""Benchmarks of gemini-backend: `make bench` (see bench/README.md)."""
