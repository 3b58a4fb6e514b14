"""Fold a run's adapters into its base SAM2 weights (or take a `train="all"` run's weights) and write a checkpoint.

The result is sam2's official `{"model": state_dict}` (`.pt`) or the same state dict as safetensors
(`.safetensors`, optionally in fp16 / bf16), with exactly the base model's keys and shapes (loadable by
`fssam2_export.models.build_model(checkpoint=...)` and `fssam2-export --checkpoint`; sam2's `build_sam2` takes
the `.pt`), plus
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
from runtime.engine.files import write_atomic
from runtime.engine.manifest import file_sha256
from runtime.engine.versions import dist_version

from .lora import load_lora, merge_lora
from .run import adapters_dir, load_weights, read_config, weights_path

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

RECORD_FORMAT = "fssam2-merged-checkpoint/1"


@dataclass
class MergeResult:
    checkpoint: Path
    record: Path
    sha256: str
    num_keys: int


def merge_run(
    run: str | Path, out: str | Path, which: str = "best", dtype: str = "fp32", stability_fallback: bool | None = None
) -> MergeResult:
    """Write the run's `which` model to `out` (.pt or .safetensors), floating-point tensors as `dtype`; the record
    says whether inference keeps SAM2's stability fallback (`stability_fallback`; None: as the base model does)."""
    run, out = Path(run), Path(out)
    if out.suffix not in (".pt", ".pth", ".safetensors"):
        raise ValueError(f"--out {out}: a .pt (sam2's format) or .safetensors checkpoint path")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    config = read_config(run)
    base = config.base.build()
    sam = base.model
    if stability_fallback is None:
        stability_fallback = base.source.stability_fallback
    base_shapes = {k: tuple(v.shape) for k, v in sam.state_dict().items()}
    if config.train == "all":
        load_weights(sam, weights_path(run, which))
        modules: list[str] = []
    else:
        modules = load_lora(sam, adapters_dir(run, which))
        merge_lora(sam)
    cast = DTYPES[dtype]
    state = {
        k: (v.to(cast) if v.is_floating_point() else v).detach().clone().contiguous()
        for k, v in sam.state_dict().items()
    }
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if shapes != base_shapes:
        extra, missing = sorted(set(shapes) - set(base_shapes)), sorted(set(base_shapes) - set(shapes))
        raise RuntimeError(f"merged state dict differs from the base model's: extra {extra[:8]}, missing {missing[:8]}")
    if out.suffix == ".safetensors":
        from safetensors.torch import save

        write_atomic(out, save(state, metadata={"format": "pt", "dtype": dtype}))
    else:
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
        "dtype": dtype,
        "inference": {"stability_fallback": stability_fallback},
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
