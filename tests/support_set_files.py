"""Support-set files for the cross-language tests of libfssam2: Python's `SupportSet` writes and reads them;
`write_set` can also write deliberately broken files (tensors or metadata overridden) with safetensors.numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from runtime import SupportSet


def write_set(path: Path, support_set: SupportSet, tensors: dict[str, np.ndarray] | None = None, **meta: str) -> None:
    """`support_set` as a file; `tensors` / `meta` override entries (for broken files)."""
    data = {
        "memory": support_set.memory,
        "memory_pos": support_set.memory_pos,
        "image_sizes": support_set.image_sizes,
        "mask_areas": support_set.mask_areas,
    }
    save_file({**data, **(tensors or {})}, str(path), metadata={**support_set.metadata(), **meta})


def read_set(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    with safe_open(str(path), framework="np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
