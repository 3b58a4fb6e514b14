"""`fssam2-train fit` under torchrun: 2 CPU processes, gloo, DistributedDataParallel, 2 steps at 64^2."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_torchrun_two_processes_gloo(tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "training.cli",
        "fit",
        "--dataset",
        "synthetic",
        "--model",
        "sam2.1_hiera_t",
        "--random-init",
        "--image-size",
        "64",
        "--batch-size",
        "1",
        "--steps",
        "2",
        "--val-episodes",
        "4",
        "--workers",
        "0",
        "--out",
        str(out),
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]  # written by rank 0 only
    assert events[0]["event"] == "start" and events[0]["world_size"] == 2
    assert events[0]["steps_per_epoch"] == 270  # 540 synthetic training episodes sharded over 2 ranks
    assert [e["step"] for e in events if e["event"] == "train"] == [1, 2]
    val = [e for e in events if e["event"] == "val"]
    assert len(val) == 1 and val[0]["episodes"] == 4  # each rank ran 2 validation episodes, reduced
    assert (
        events[-1]["event"] == "end"
        and (out / "best" / "adapters" / "memory_attention" / "adapter_model.safetensors").is_file()
    )


FIT = [
    "fit",
    "--dataset",
    "synthetic",
    "--model",
    "sam2.1_hiera_t",
    "--random-init",
    "--image-size",
    "64",
    "--batch-size",
    "1",
    "--steps",
    "1",
    "--workers",
    "0",
    "--quiet",
    "--device",
    "cuda",
]


def test_device_cuda_without_cuda_is_refused_alone_and_under_torchrun(tmp_path, capsys):
    """No silent CPU training when CUDA was asked for: exit 2 with the reason, nothing written."""
    import torch

    from training.cli import main

    assert not torch.cuda.is_available()  # the point of the test: this machine has no CUDA
    assert main([*FIT, "--out", str(tmp_path / "alone")]) == 2
    assert "--device cuda: this torch has no usable CUDA device" in capsys.readouterr().err
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "training.cli",
        *FIT,
        "--out",
        str(tmp_path / "ddp"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "--device cuda: this torch has no usable CUDA device" in proc.stderr, proc.stderr[
        -3000:
    ]
    assert not (tmp_path / "alone").exists() and not (tmp_path / "ddp" / "log.jsonl").exists()
