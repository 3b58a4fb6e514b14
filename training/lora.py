"""LoRA adapters on SAM2 with peft, per module, as FS-SAM2 attaches them (one `get_peft_model` per module).

Defaults are FS-SAM2's: image encoder r=4 on `qkv` and `proj` (Hiera's attention, stage projections and
patch embedding), memory attention r=32 on `q_proj`/`k_proj`/`v_proj`/`out_proj`, memory encoder r=32 on
`out_proj`; alpha 16, dropout 0.1, no bias. Every other parameter is frozen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

LORA_MODULES = ("image_encoder", "memory_attention", "memory_encoder")


@dataclass(frozen=True)
class LoraSpec:
    r: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]

    def config(self) -> LoraConfig:
        return LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=list(self.targets), bias="none"
        )

    def to_json(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}

    @staticmethod
    def from_json(d: dict) -> LoraSpec:
        return LoraSpec(int(d["r"]), float(d["alpha"]), float(d["dropout"]), tuple(d["targets"]))


DEFAULT_LORA: dict[str, LoraSpec] = {
    "image_encoder": LoraSpec(4, 16, 0.1, ("qkv", "proj")),
    "memory_attention": LoraSpec(32, 16, 0.1, ("q_proj", "k_proj", "v_proj", "out_proj")),
    "memory_encoder": LoraSpec(32, 16, 0.1, ("out_proj",)),
}


def parse_lora_overrides(overrides: list[str], base: dict[str, LoraSpec] | None = None) -> dict[str, LoraSpec]:
    """Apply `MODULE:key=value[,key=value]` (keys r, alpha, dropout, targets as a+b+c) or `MODULE:off`."""
    specs = dict(DEFAULT_LORA if base is None else base)
    for item in overrides:
        module, _, body = item.partition(":")
        if module not in LORA_MODULES or not body:
            raise ValueError(
                f"--lora {item!r}: expected MODULE:key=value,... or MODULE:off with MODULE in {LORA_MODULES}"
            )
        if body == "off":
            specs.pop(module, None)
            continue
        spec = specs.get(module, DEFAULT_LORA[module])
        for kv in body.split(","):
            key, _, value = kv.partition("=")
            if key == "targets":
                spec = replace(spec, targets=tuple(t for t in value.split("+") if t))
            elif key in ("r", "alpha", "dropout"):
                spec = replace(spec, **{key: int(value) if key == "r" else float(value)})
            else:
                raise ValueError(f"--lora {item!r}: unknown key {key!r} (r, alpha, dropout, targets)")
        specs[module] = spec
    return specs


def peft_modules(model: nn.Module) -> dict[str, PeftModel]:
    return {name: m for name in LORA_MODULES if isinstance(m := getattr(model, name), PeftModel)}


def freeze_all_but_lora(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)


def add_lora(model: nn.Module, specs: dict[str, LoraSpec]) -> None:
    """Wrap each module of `specs` with fresh adapters (trainable) and freeze everything else."""
    for name, spec in specs.items():
        setattr(model, name, get_peft_model(getattr(model, name), spec.config()))
    freeze_all_but_lora(model)


def save_lora(model: nn.Module, directory: Path) -> None:
    """peft `save_pretrained` of each wrapped module into directory/<module>/."""
    for name, m in peft_modules(model).items():
        m.save_pretrained(str(directory / name))


def load_lora(model: nn.Module, directory: Path, trainable: bool = False) -> list[str]:
    """Attach the adapters saved in directory/<module>/ (peft `from_pretrained`); returns the modules."""
    found = [name for name in LORA_MODULES if (directory / name / "adapter_config.json").is_file()]
    if not found:
        raise FileNotFoundError(f"no peft adapters (<module>/adapter_config.json) under {directory}")
    for name in found:
        setattr(
            model, name, PeftModel.from_pretrained(getattr(model, name), str(directory / name), is_trainable=trainable)
        )
    freeze_all_but_lora(model)
    return found


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weights (`merge_and_unload`), leaving plain sam2 modules."""
    for name, m in peft_modules(model).items():
        setattr(model, name, m.merge_and_unload())


def trainable_table(model: nn.Module) -> list[tuple[str, int, int]]:
    """(top-level module, trainable, total) parameter counts."""
    rows: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        row = rows.setdefault(name.split(".")[0], [0, 0])
        row[0] += p.numel() if p.requires_grad else 0
        row[1] += p.numel()
    return [(k, t, n) for k, (t, n) in rows.items()]


def format_trainable(rows: list[tuple[str, int, int]]) -> str:
    lines = [f"{'module':<24}{'trainable':>12}{'total':>14}"]
    lines += [f"{name:<24}{t:>12,}{n:>14,}" for name, t, n in rows]
    t, n = sum(r[1] for r in rows), sum(r[2] for r in rows)
    lines.append(f"{'all':<24}{t:>12,}{n:>14,}  ({100 * t / max(n, 1):.2f} % trainable)")
    return "\n".join(lines)
