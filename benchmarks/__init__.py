"""Benchmarks of jaxsce against optax and PyTorch; run with ``python -m benchmarks``."""
