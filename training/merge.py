"""Fold a run's adapters into its base SAM2 weights and write sam2's official checkpoint format.

The result is `{"model": state_dict}` with exactly the base model's keys and shapes (loadable by sam2's
`build_sam2`, `fssam2_export.models.build_model(checkpoint=...)` and `fssam2-export --checkpoint`), plus
`<checkpoint>.fssam2.json` beside it: base model and its sha256, adapter configs and sha256s, the run's
training configuration and best validation score, the merged file's sha256.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from fssam2_export.models import TRAINING_RECORD_SUFFIX
from runtime.manifest import file_sha256
from runtime.outputs import write_atomic
from runtime.versions import dist_version

from .lora import load_lora, merge_lora
from .run import adapters_dir, read_config

RECORD_FORMAT = "fssam2-merged-checkpoint/1"


@dataclass
class MergeResult:
    checkpoint: Path
    record: Path
    sha256: str
    num_keys: int


def merge_run(run: str | Path, out: str | Path, which: str = "best") -> MergeResult:
    run, out = Path(run), Path(out)
    config = read_config(run)
    sam = config.base.build().model
    base_shapes = {k: tuple(v.shape) for k, v in sam.state_dict().items()}
    modules = load_lora(sam, adapters_dir(run, which))
    merge_lora(sam)
    state = {k: v.detach().clone().contiguous() for k, v in sam.state_dict().items()}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if shapes != base_shapes:
        extra, missing = sorted(set(shapes) - set(base_shapes)), sorted(set(base_shapes) - set(shapes))
        raise RuntimeError(f"merged state dict differs from the base model's: extra {extra[:8]}, missing {missing[:8]}")
    buf = io.BytesIO()
    torch.save({"model": state}, buf)
    write_atomic(out, buf.getbuffer())
    sha = file_sha256(out)
    adir = adapters_dir(run, which)
    state_file = run / which / "state.json"
    record = {
        "format": RECORD_FORMAT,
        "checkpoint_sha256": sha,
        "base": asdict(config.base),
        "adapters": {
            m: {
                "config": json.loads((adir / m / "adapter_config.json").read_text()),
                "sha256": file_sha256(adir / m / "adapter_model.safetensors"),
            }
            for m in modules
        },
        "run": {
            "dir": str(run.resolve()),
            "which": which,
            "state": json.loads(state_file.read_text()) if state_file.is_file() else None,
            "config": json.loads(config.to_json()),
        },
        "tools": {
            "torch": torch.__version__,
            "peft": dist_version("peft"),
            "sam2": dist_version("sam2"),
            "fssam2": dist_version("fssam2"),
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    record_path = out.with_name(out.name + TRAINING_RECORD_SUFFIX)
    write_atomic(record_path, (json.dumps(record, indent=2) + "\n").encode())
    return MergeResult(out, record_path, sha, len(state))
