"""Quality tools over the engine and backends: the fidelity gate (fidelity), synthetic episodes (synthetic), the
shapes benchmark (shapes) and the latency bench behind `fssam2 bench` (bench)."""
