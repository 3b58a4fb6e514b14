"""Quality tools: the fidelity gate, synthetic data, the shapes benchmark and the latency bench."""
