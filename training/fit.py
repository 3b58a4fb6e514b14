"""Meta-training of the LoRA adapters (FS-SAM2's `train.py`), single process or torchrun + DDP; with
`train="all"`, training of every parameter instead (pretraining a SAM2 from random init).

AdamW (no weight decay on < 2-D tensors), optional linear warm-up then cosine learning rate per step, optional
gradient-norm clipping, bf16 autocast where the GPU or CPU supports it, BCE + Dice on the SxS logits; with
`train="all"`, SAM2's own decoder supervision (`batches.decoder_loss`) instead. Randomness is a function of (seed, rank, step) and episodes of
(seed, index, epoch), so `--resume` continues exactly where a run stopped. Validation (`val` split, never
the test episodes) runs every `val_every` steps; the adapters with the best validation mIoU are kept.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from fssam2_export.reference import episode_forward
from runtime.engine.files import recover_dir, replace_dir

from .batches import Augment, TrainEpisodes, decoder_loss, episode_loss, prepare
from .curves import write_curves
from .datasets import build_dataset
from .evaluate import run_episodes, torch_predictor
from .lora import add_lora, format_trainable, load_lora, save_lora, trainable_table
from .run import (
    CONFIG_NAME,
    CURVES_NAME,
    LOG_NAME,
    WEIGHTS_NAME,
    RunConfig,
    adapters_dir,
    load_weights,
    read_config,
    weights_path,
)

TRAINER_STATE = "trainer.pt"


@dataclass
class FitResult:
    run: Path
    step: int  # optimiser steps done in total
    losses: list[float] = field(default_factory=list)  # per step, this session
    val_miou: list[tuple[int, float]] = field(default_factory=list)  # (step, mIoU), this session
    best_val_miou: float | None = None


class EpisodeModule(nn.Module):
    """The episode forward as an nn.Module, so DDP can wrap it: the (B, 1, S, S) logits, and with `all_tokens` every
    decoder token's low-res logits and IoU scores too."""

    def __init__(self, sam: nn.Module, all_tokens: bool = False):
        super().__init__()
        self.sam, self.all_tokens = sam, all_tokens

    def forward(self, support_images, support_masks, query_images):
        out = episode_forward(self.sam, support_images, support_masks, query_images, all_tokens=self.all_tokens)
        return (out.logits, out.tokens, out.token_iou) if self.all_tokens else out.logits


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU; an explicit CUDA device without CUDA is refused, never replaced."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"--device {device!r}: {e}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {device}: this torch has no usable CUDA device (torch.cuda.is_available() is False); "
            "use --device cpu or auto"
        )
    return dev


def _init_distributed(device: str) -> _Dist:
    dev = resolve_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun: one process per GPU, or CPU processes
        cuda = dev.type == "cuda"
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        if cuda:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
        return _Dist(dist.get_rank(), dist.get_world_size(), dev)
    return _Dist(device=dev)


def _step_seed(seed: int, rank: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def cpu_has_bf16() -> bool:
    """Whether the CPU computes BF16 natively (AMX-BF16 or AVX512_BF16), where oneDNN's autocast pays off."""
    from runtime.backends.cache import cpu_flags

    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def use_amp(amp: str, device: torch.device, cpu: bool = True) -> bool:
    """`auto`: bf16 autocast on a GPU that supports it, or (if `cpu`) on a CPU with BF16 units; `bf16` always;
    `off` never."""
    if amp not in ("auto", "bf16", "off"):
        raise ValueError(f"amp must be auto, bf16 or off, got {amp!r}")
    if amp != "auto":
        return amp == "bf16"
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu and cpu_has_bf16()


class WarmupCosine:
    """Learning-rate factor at a step: linear from 1/warmup to 1 over `warmup` steps, then cosine to 0 at `total`."""

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(self.total - self.warmup, 1)
        return 0.5 * (1 + float(np.cos(np.pi * min(step - self.warmup, span) / span)))


def _optimizer(model: nn.Module, config: RunConfig, device: torch.device) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=config.lr,
        weight_decay=config.weight_decay,
        betas=(0.9, 0.999),
        fused=device.type == "cuda",
    )


class _Log:
    def __init__(self, path: Path | None):
        self.path = path

    def __call__(self, event: str, **fields) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps({"event": event, "time": round(time.time(), 3), **fields}) + "\n")


def fit(
    config: RunConfig | None,
    out: str | Path,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> FitResult:
    """Train into run directory `out`; with `resume`, continue the run there (its config.json is used).
    `stop_after` ends this session after that many steps (continue later with `resume`)."""
    out = Path(out)
    dd = _init_distributed(device)
    try:
        return _fit(config, out, resume, stop_after, dd, progress)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _fit(
    config: RunConfig | None, out: Path, resume: bool, stop_after: int | None, dd: _Dist, progress: bool
) -> FitResult:
    config = _open_run(config, out, resume, dd)
    trn = build_dataset(config.dataset, config.data_root, config.fold, "trn", config.shots, config.seed)
    val = build_dataset(
        config.dataset,
        config.data_root,
        config.fold,
        "val",
        config.shots,
        config.seed,
        num_episodes=config.val_episodes,
    )
    if dd.world > 1:
        dist.barrier()  # every rank has checked `out` before rank 0 writes into it
    if dd.main and not resume:
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_NAME).write_text(config.to_json())
    session = _Session.start(config, out, resume, trn, val, dd, progress)
    session.run(stop_after, progress)
    return session.result


def _open_run(config: RunConfig | None, out: Path, resume: bool, dd: _Dist) -> RunConfig:
    """The run's config: `config` for a new run into an empty `out`, else (resume) the one saved there."""
    if resume:
        config = read_config(out)
        if dd.main:
            for which in ("last", "best"):  # a save interrupted between its two renames
                recover_dir(out / which)
        if dd.world > 1:
            dist.barrier()  # recovered before any rank looks
        if not (out / "last" / TRAINER_STATE).is_file():
            raise FileNotFoundError(f"nothing to resume in {out}: no last/{TRAINER_STATE}")
    elif config is None:
        raise ValueError("fit needs a RunConfig unless resuming")
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(f"run directory {out} is not empty; use --resume to continue it, or another --out")
    return config


def _model(config: RunConfig, out: Path, resume: bool, dd: _Dist) -> nn.Module:
    """SAM2 with fresh (seeded, identical on every rank) or resumed LoRA adapters, or with every parameter
    trainable (`train="all"`, resumed from last/), on the device, in train mode."""
    torch.manual_seed(config.seed)
    sam = config.base.build().model
    if config.train == "all":
        if resume:
            load_weights(sam, weights_path(out, "last"))
        sam.requires_grad_(True)
    elif resume:
        load_lora(sam, adapters_dir(out, "last"), trainable=True)
    else:
        add_lora(sam, config.lora)
    return sam.to(dd.device).train()


@dataclass
class _Session:
    """One training session: the model, its optimiser state and the loop's steps (train, validate, save)."""

    config: RunConfig
    out: Path
    dd: _Dist
    sam: nn.Module
    module: nn.Module  # the episode forward (DDP-wrapped with several processes)
    amp: bool
    episodes: TrainEpisodes
    sampler: DistributedSampler
    val: object  # the validation dataset
    per_epoch: int
    total: int
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    augment: Augment | None
    log: _Log
    result: FitResult

    @classmethod
    def start(cls, config: RunConfig, out: Path, resume: bool, trn, val, dd: _Dist, progress: bool) -> _Session:
        log = _Log(out / LOG_NAME if dd.main else None)
        sam = _model(config, out, resume, dd)
        rows = trainable_table(sam)
        if dd.main and progress:
            print(format_trainable(rows))
        amp = use_amp(config.amp, dd.device)
        if dd.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True

        episodes = TrainEpisodes(trn, config.base.image_size)
        sampler = DistributedSampler(episodes, num_replicas=dd.world, rank=dd.rank, shuffle=True, seed=config.seed)
        per_epoch = len(sampler) // config.batch_size
        if per_epoch == 0:
            raise ValueError(
                f"{len(episodes)} training episodes over {dd.world} process(es) make no batch of {config.batch_size}"
            )
        total = config.steps or config.epochs * per_epoch

        optimizer = _optimizer(sam, config, dd.device)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(config.warmup, total))
        step, best = 0, None
        if resume:
            state = torch.load(out / "last" / TRAINER_STATE, map_location=dd.device, weights_only=True)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            step, best = int(state["step"]), state["best_val_miou"]
        module: nn.Module = EpisodeModule(sam, all_tokens=config.train == "all")
        if dd.world > 1:
            module = DistributedDataParallel(
                module,
                device_ids=[dd.device.index] if dd.device.type == "cuda" else None,
                find_unused_parameters=config.train == "all",  # SAM2's video-only modules get no gradient
            )
        log(
            "start" if not resume else "resume",
            step=step,
            total_steps=total,
            steps_per_epoch=per_epoch,
            world_size=dd.world,
            amp=amp,
            device=str(dd.device),
            trainable={name: t for name, t, _ in rows},
        )
        return cls(
            config,
            out,
            dd,
            sam,
            module,
            amp,
            episodes,
            sampler,
            val,
            per_epoch,
            total,
            optimizer,
            scheduler,
            Augment() if config.augment else None,
            log,
            FitResult(out, step, best_val_miou=best),
        )

    def run(self, stop_after: int | None, progress: bool) -> None:
        """Train to the run's end (or `stop_after` more steps), validating and saving `last/` every `val_every`
        steps and at the end."""
        config, dd, result = self.config, self.dd, self.result
        val_every = config.val_every or self.per_epoch
        end = self.total if stop_after is None else min(self.total, result.step + stop_after)
        bar = tqdm(total=end, initial=result.step, disable=not (progress and dd.main), desc="fit", unit="step")
        while result.step < end:
            epoch = result.step // self.per_epoch
            self.sampler.set_epoch(epoch)
            self.episodes.set_epoch(epoch)
            indices = list(self.sampler)[
                (result.step % self.per_epoch) * config.batch_size : self.per_epoch * config.batch_size
            ]
            loader = DataLoader(
                self.episodes,
                batch_size=config.batch_size,
                sampler=indices,
                num_workers=config.workers,
                drop_last=True,
                pin_memory=dd.device.type == "cuda",
            )
            for batch in loader:
                loss, lr = self.train_step(batch, epoch)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                if result.step % val_every == 0 or result.step == self.total:
                    self.validate()
                    if result.step < end:  # a crash loses at most val_every steps (--resume)
                        self.save("last")
                if result.step >= end:
                    break
        bar.close()
        self.save("last")
        self.log("end" if result.step >= self.total else "stop", step=result.step, best_val_miou=result.best_val_miou)

    def train_step(self, batch, epoch: int) -> tuple[float, float]:
        """One optimiser step on `batch`; returns the loss (mean over processes) and the learning rate used."""
        config, dd, result = self.config, self.dd, self.result
        torch.manual_seed(_step_seed(config.seed, dd.rank, result.step))
        si, sm, qi, qm = prepare(batch, dd.device, self.augment)
        with torch.autocast(dd.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = self.module(si, sm, qi)
        if config.train == "all":  # SAM2's decoder supervision: every token and its IoU score
            loss, bce, dice = decoder_loss(*out, qm)
        else:
            loss, bce, dice = episode_loss(out, qm)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.sam.parameters(), config.clip_grad)
        self.optimizer.step()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        result.step += 1
        stats = torch.stack([loss.detach(), bce.detach(), dice.detach()]).float()
        if dd.world > 1:
            dist.all_reduce(stats)
            stats /= dd.world
        loss_v, bce_v, dice_v = (float(v) for v in stats)
        result.losses.append(loss_v)
        self.log("train", step=result.step, epoch=epoch, loss=loss_v, bce=bce_v, dice=dice_v, lr=lr)
        return loss_v, lr

    def validate(self) -> None:
        """Validation mIoU over all processes; a new best is saved to `best/`."""
        dd, result = self.dd, self.result
        acc, _ = run_episodes(
            torch_predictor(self.sam, self.amp), self.val, range(dd.rank, len(self.val), dd.world), progress=False
        )
        if dd.world > 1:
            t = torch.from_numpy(acc.as_array()).to(dd.device)
            dist.all_reduce(t)
            acc.load_array(t.cpu().numpy())
        self.sam.train()
        miou, is_best = acc.miou(), result.best_val_miou is None or acc.miou() > result.best_val_miou
        result.val_miou.append((result.step, miou))
        self.log("val", step=result.step, miou=miou, fbiou=acc.fbiou(), episodes=int(acc.episodes.sum()), best=is_best)
        if is_best:
            result.best_val_miou = miou
            self.save("best", miou)
        if dd.main:
            write_curves(self.out / LOG_NAME, self.out / CURVES_NAME)

    def save(self, which: str, val_miou: float | None = None) -> None:
        """Adapters (+ optimiser state for `last`) into `out/<which>/`, replaced safely (`replace_dir`)."""
        if self.dd.main:
            tmp = self.out / f".{which}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            if self.config.train == "all":
                from safetensors.torch import save_file

                tmp.mkdir(parents=True)
                state = {k: v.detach().contiguous().cpu() for k, v in self.sam.state_dict().items()}
                save_file(state, str(tmp / WEIGHTS_NAME))
            else:
                save_lora(self.sam, tmp / "adapters")
            if which == "last":
                torch.save(
                    {
                        "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(),
                        "step": self.result.step,
                        "best_val_miou": self.result.best_val_miou,
                    },
                    tmp / TRAINER_STATE,
                )
            (tmp / "state.json").write_text(json.dumps({"step": self.result.step, "val_miou": val_miou}) + "\n")
            replace_dir(tmp, self.out / which)
        if self.dd.world > 1:
            dist.barrier()
