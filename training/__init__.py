"""FS-SAM2 LoRA meta-training (peft), few-shot benchmarks, evaluation and adapter merging: `fssam2-train`.

Modules: `lora` (adapters), `datasets` + `splits` (episodes), `batches` (resize, augmentation, loss),
`fit` (training loop, DDP), `metrics` + `evaluate` (mIoU / FB-IoU, PyTorch or exported runtime),
`merge` (official SAM2 checkpoint + record), `run` (run directory), `cli`.
"""
