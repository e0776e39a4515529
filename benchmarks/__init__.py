"""Side-by-side throughput benchmarks of mi-crow against plain PyTorch baselines (``python -m benchmarks.run``)."""
