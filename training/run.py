"""A training run on disk: its configuration and the base model it starts from.

<run>/config.json        RunConfig (base model + sha256, data, LoRA, optimisation)
<run>/log.jsonl          one JSON object a line: start, train (per step), val, end
<run>/curves.png         loss and validation mIoU against steps
<run>/best/adapters/     peft adapters with the best validation mIoU (+ best/state.json)
<run>/last/adapters/     the latest adapters (+ last/trainer.pt for --resume)

A run with `train="all"` (every parameter: pretraining from random init) keeps `<which>/model.safetensors`, the
whole model's weights, instead of adapters.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from fssam2_export.models import LoadedModel, build_model
from runtime.engine.manifest import file_sha256

from .lora import DEFAULT_LORA, LoraSpec, load_lora

CONFIG_NAME, LOG_NAME, CURVES_NAME, WEIGHTS_NAME = "config.json", "log.jsonl", "curves.png", "model.safetensors"
TRAIN_MODES = ("lora", "all")


@dataclass(frozen=True)
class BaseModelSpec:
    """The SAM2 the adapters sit on: an official checkpoint (checked by sha256) or a seeded random init."""

    name: str
    image_size: int
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    random_init: bool = False
    init_seed: int | None = None

    @staticmethod
    def from_args(
        name: str, image_size: int, checkpoint: str | None, random_init: bool, init_seed: int
    ) -> BaseModelSpec:
        if (checkpoint is None) == (not random_init):
            raise ValueError("give exactly one weight source: --checkpoint PATH or --random-init")
        if checkpoint is not None:
            path = Path(checkpoint).resolve()
            if not path.is_file():
                raise FileNotFoundError(f"checkpoint not found: {path}")
            return BaseModelSpec(name, image_size, str(path), file_sha256(path))
        return BaseModelSpec(name, image_size, random_init=True, init_seed=init_seed)

    def build(self) -> LoadedModel:
        if self.random_init:
            return build_model(self.name, random_init=True, seed=self.init_seed, image_size=self.image_size)
        path = Path(self.checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"base checkpoint of this run not found: {path}")
        loaded = build_model(self.name, checkpoint=path, image_size=self.image_size)
        if loaded.source.checkpoint_sha256 != self.checkpoint_sha256:
            raise ValueError(
                f"base checkpoint {path} changed since training (sha256 {loaded.source.checkpoint_sha256} "
                f"!= {self.checkpoint_sha256})"
            )
        return loaded


@dataclass
class RunConfig:
    base: BaseModelSpec
    dataset: str
    data_root: str | None
    fold: int
    shots: int
    lora: dict[str, LoraSpec] = field(default_factory=lambda: dict(DEFAULT_LORA))
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-6
    epochs: int = 50
    steps: int | None = None  # total optimiser steps; overrides epochs
    val_every: int | None = None  # steps; default once per epoch
    val_episodes: int | None = None  # default: the dataset's (1000 PASCAL/COCO, all FSS-1000 val, 100 synthetic)
    workers: int = 4
    seed: int = 42
    amp: str = "auto"  # auto (bf16 where the GPU or CPU has it) | bf16 | off
    augment: bool = True
    train: str = "lora"  # lora: FS-SAM2's adapters, base frozen | all: every parameter (pretraining)
    warmup: int = 0  # steps of linear learning-rate warm-up before the cosine decay
    clip_grad: float | None = None  # max gradient norm (None: no clipping, FS-SAM2's setting)

    def __post_init__(self) -> None:
        if self.train not in TRAIN_MODES:
            raise ValueError(f"train must be one of {TRAIN_MODES}, got {self.train!r}")

    def to_json(self) -> str:
        d = asdict(self)
        d["lora"] = {k: v.to_json() for k, v in self.lora.items()}
        return json.dumps(d, indent=2) + "\n"

    @staticmethod
    def from_json(text: str) -> RunConfig:
        d = json.loads(text)
        d["base"] = BaseModelSpec(**d["base"])
        d["lora"] = {k: LoraSpec.from_json(v) for k, v in d["lora"].items()}
        return RunConfig(**d)


def read_config(run: Path) -> RunConfig:
    path = run / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{run} is not a training run (no {CONFIG_NAME})")
    return RunConfig.from_json(path.read_text())


def adapters_dir(run: Path, which: str) -> Path:
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    return run / which / "adapters"


def weights_path(run: Path, which: str) -> Path:
    """The whole model's weights of a `train="all"` run."""
    return adapters_dir(run, which).parent / WEIGHTS_NAME


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a `train="all"` run's weights (every key of the model, strictly)."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"no model weights at {path}")
    model.load_state_dict(load_file(str(path)), strict=True)


def load_run_model(run: Path, which: str = "best") -> nn.Module:
    """The run's model (eval mode, CPU): its base SAM2 with the `which` adapters attached (peft modules), or the
    `which` weights of a run that trained every parameter."""
    config = read_config(run)
    sam = config.base.build().model
    if config.train == "all":
        load_weights(sam, weights_path(run, which))
    else:
        load_lora(sam, adapters_dir(run, which))
    return sam.eval()
