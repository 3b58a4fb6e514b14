"""Benchmarks that need more than the runtime (PyTorch comparison); `fssam2 bench` is in runtime/."""
