"""A run's learning curves as a PNG: training loss (per step and smoothed) and validation mIoU against steps."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from runtime.engine.files import write_atomic


def read_log(path: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, loss) of every training step and (step, mIoU) of every validation in a run's log.jsonl; a step
    logged twice (a session resumed after a crash) keeps its last entry."""
    loss: dict[int, float] = {}
    val: dict[int, float] = {}
    for line in path.read_text().splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if e.get("event") == "train":
            loss[int(e["step"])] = float(e["loss"])
        elif e.get("event") == "val":
            val[int(e["step"])] = float(e["miou"])
    return sorted(loss.items()), sorted(val.items())


def write_curves(log: Path, out: Path, title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss, val = read_log(log)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    if loss:
        steps, values = np.array(loss).T
        a.plot(steps, values, color="0.8", lw=0.6, label="per step")
        w = max(1, min(100, len(values) // 20))
        a.plot(steps[w - 1 :], np.convolve(values, np.ones(w) / w, "valid"), color="C0", label=f"mean of {w}")
        a.legend()
    a.set(xlabel="step", ylabel="loss (BCE + Dice)", title="training loss")
    if val:
        steps, values = np.array(val).T
        b.plot(steps, 100 * values, "o-", color="C1", ms=3)
    b.set(xlabel="step", ylabel="mIoU (%)", title="validation mIoU")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    write_atomic(out, buf.getvalue())
