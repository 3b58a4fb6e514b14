"""Support-set files (docs/support-sets.md, format v1) written and read with safetensors.numpy, for the
cross-language tests of libfssam2: a reference writer from a `FewShotSegmenter`'s memory bank, a reader,
and the N-way label rule. The one place to swap for the Python `SupportSet` API (save/load, N-way
segment) once it exists on the same branch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from runtime import FewShotSegmenter
from runtime.manifest import Manifest

FSSAM2_VERSION = "0.1.0"


def weights_id(manifest: Manifest) -> str:
    m = manifest.model
    return f"random-init:seed={m.seed}" if m.random_init else f"sha256:{m.checkpoint_sha256}"


def metadata(manifest: Manifest, shots: int, memory_dtype: str = "float32") -> dict[str, str]:
    """The spec's `__metadata__` for a set of `shots` supports made with these artifacts."""
    return {"format": "fssam2-support-set", "format_version": "1", "shots": str(shots),
            "tokens_per_support": str(manifest.episode.tokens_per_support), "model": manifest.model.name,
            "weights": weights_id(manifest), "image_size": str(manifest.preprocess.image_size),
            "memory_dtype": memory_dtype, "fssam2_version": FSSAM2_VERSION}


def write_set(path: Path, seg: FewShotSegmenter, image_sizes: list[tuple[int, int]], mask_areas: list[int],
              tensors: dict[str, np.ndarray] | None = None, **meta: str) -> None:
    """The set `seg`'s memory bank holds, as a file; `tensors` / `meta` override entries (for broken files)."""
    bank = seg.memory_bank
    data = {"memory": np.ascontiguousarray(bank.memory), "memory_pos": np.ascontiguousarray(bank.memory_pos),
            "image_sizes": np.asarray(image_sizes, np.int32).reshape(-1, 2), "mask_areas": np.asarray(mask_areas, np.int64)}
    save_file({**data, **(tensors or {})}, str(path), metadata={**metadata(seg.manifest, bank.supports), **meta})


def read_set(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    with safe_open(str(path), framework="np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def segmenter_with_set(artifacts: Path, path: Path) -> FewShotSegmenter:
    """A Python segmenter whose memory bank holds the set in `path` (as it was written)."""
    seg = FewShotSegmenter(artifacts)
    tensors, _ = read_set(path)
    seg.memory_bank.append(tensors["memory"], tensors["memory_pos"])
    return seg


def label_map(logits: list[np.ndarray]) -> np.ndarray:
    """The N-way rule: per pixel 1 + the index of the class with the highest positive logit (the lower index
    on ties), else 0 (background)."""
    stacked = np.stack(logits)
    return np.where((stacked > 0).any(0), np.argmax(stacked, 0) + 1, 0).astype(np.uint8)
