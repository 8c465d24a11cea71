"""Command-line experiments reproducing the paper's benchmarks (``python -m experiments.NAME``)."""
