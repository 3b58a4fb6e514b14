"""Build SAM2 / SAM2.1 (all sizes) from the hydra configs the sam2 package ships, at any image size.

Weights come from exactly one explicit source: a checkpoint (sam2's `{"model": state_dict}` or a safetensors state
dict, loaded strictly) or `random_init=True` with a seed. There is no fallback from one to the other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from runtime.engine.manifest import file_sha256

MODEL_CONFIGS = {
    f"{family}_hiera_{size}": f"configs/{family}/{family}_hiera_{size}.yaml"
    for family in ("sam2", "sam2.1")
    for size in ("t", "s", "b+", "l")
}
DEFAULT_IMAGE_SIZE = 1024
# build_sam2's own defaults (apply_postprocessing=True): the decoder's stability-based multimask fallback.
POSTPROCESSING_OVERRIDES = [
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
]


# `fssam2-train merge` writes <checkpoint>.fssam2.json beside a merged checkpoint (adapters, source hashes).
TRAINING_RECORD_SUFFIX = ".fssam2.json"


class CheckpointError(ValueError):
    """A checkpoint does not fit the requested model."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights came from; recorded in the manifest."""

    name: str
    config: str
    image_size: int
    random_init: bool
    seed: int | None
    checkpoint: Path | None
    checkpoint_sha256: str | None
    training_record: dict | None = None  # the checkpoint's TRAINING_RECORD_SUFFIX file, if there is one
    stability_fallback: bool = True  # the mask decoder's stability-based multimask fallback (SAM2's default: on)


@dataclass
class LoadedModel:
    model: torch.nn.Module  # sam2.modeling.sam2_base.SAM2Base, eval mode, CPU
    source: ModelSource

    @property
    def image_size(self) -> int:
        return self.source.image_size

    @property
    def embed_size(self) -> int:
        return self.source.image_size // 16


def recorded_stability_fallback(record: dict | None) -> bool:
    """The stability fallback a training record asks for (`fssam2-train merge --stability-fallback`); on if none."""
    return bool(((record or {}).get("inference") or {}).get("stability_fallback", True))


def check_image_size(image_size: int) -> None:
    if image_size % 32 or image_size < 64:
        raise ValueError(f"image size must be a multiple of 32 and >= 64, got {image_size}")


def hydra_overrides(image_size: int) -> list[str]:
    """Overrides that make every size-dependent table match `image_size` (RoPE feat_sizes included)."""
    check_image_size(image_size)
    e = image_size // 16
    return [
        f"++model.image_size={image_size}",
        f"++model.memory_attention.layer.self_attention.feat_sizes=[{e},{e}]",
        f"++model.memory_attention.layer.cross_attention.feat_sizes=[{e},{e}]",
    ]


def _require_sam2():
    try:
        from sam2.build_sam import build_sam2
    except ImportError as e:
        raise ImportError(
            "fssam2_export needs the sam2 package: SAM2_BUILD_CUDA=0 pip install --no-deps "
            "--no-build-isolation sam2==1.1.0 (after torch; see README)"
        ) from e
    return build_sam2


def build_model(
    name: str,
    *,
    checkpoint: str | Path | None = None,
    random_init: bool = False,
    seed: int | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    stability_fallback: bool | None = None,
) -> LoadedModel:
    """Build `name` (a key of MODEL_CONFIGS) with weights from `checkpoint` xor `random_init`. `stability_fallback`
    None: as the checkpoint's training record says (`inference.stability_fallback`), else on (SAM2's default)."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_CONFIGS)}")
    if (checkpoint is None) == (not random_init):
        raise ValueError("give exactly one weight source: a checkpoint path, or random_init=True (with a seed)")
    if random_init and seed is None:
        raise ValueError("random_init needs an explicit seed so the weights are reproducible")
    build_sam2 = _require_sam2()
    config = MODEL_CONFIGS[name]
    overrides = hydra_overrides(image_size) + POSTPROCESSING_OVERRIDES
    if random_init:
        torch.manual_seed(seed)
    model = build_sam2(
        config, None, device="cpu", mode="eval", hydra_overrides_extra=overrides, apply_postprocessing=False
    )
    ckpt_path, sha, record = None, None, None
    if checkpoint is not None:
        ckpt_path = Path(checkpoint)
        load_checkpoint(model, ckpt_path, name)
        sha = file_sha256(ckpt_path)
        record_path = ckpt_path.with_name(ckpt_path.name + TRAINING_RECORD_SUFFIX)
        record = json.loads(record_path.read_text()) if record_path.is_file() else None
    if stability_fallback is None:
        stability_fallback = recorded_stability_fallback(record)
    model.sam_mask_decoder.dynamic_multimask_via_stability = stability_fallback
    model.eval()
    source = ModelSource(
        name, config, image_size, random_init, seed if random_init else None, ckpt_path, sha, record, stability_fallback
    )
    return LoadedModel(model, source)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of an official-format checkpoint (`{"model": state_dict}`, torch.save) or of a safetensors
    file (`.safetensors`: the state dict itself, any float precision)."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"cannot read safetensors checkpoint {path}: {e}") from e
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(blob, dict) or not isinstance(blob.get("model"), dict):
        raise CheckpointError(f"{path} is not in sam2's checkpoint format {{'model': state_dict}}")
    return blob["model"]


def load_checkpoint(model: torch.nn.Module, path: Path, name: str = "the model") -> None:
    """Load a checkpoint (`read_state_dict`) strictly, with errors that list what does not fit; fp16 / bf16
    weights are widened to the model's dtype."""
    sd = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    mismatched = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or mismatched:
        lines = [f"checkpoint {path} does not fit {name}:"]
        if mismatched:
            lines.append(
                f"  {len(mismatched)} shape mismatches (a checkpoint of another model size?): "
                + ", ".join(f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched[:8])
            )
        if missing:
            lines.append(f"  {len(missing)} missing keys: " + ", ".join(missing[:12]))
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected keys: " + ", ".join(unexpected[:12]))
        raise CheckpointError("\n".join(lines))
    sd = {k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True)


def save_checkpoint(model: torch.nn.Module, path: str | Path) -> None:
    """Write `model` in sam2's official checkpoint format."""
    torch.save({"model": model.state_dict()}, path)
