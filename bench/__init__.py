"""Benchmarks, each run as `python -m bench.<name>`."""

# First, before any benchmark imports torch: mnist_net's __init__ sets OMP_WAIT_POLICY, which torch
# reads once, when it loads libgomp.
import mnist_net  # noqa: F401
