"""Measurements of deployed artifacts: accuracy, latency, size, memory; and the run report."""
