"""Meta-training of the LoRA adapters (FS-SAM2's `train.py`), single process or torchrun + DDP.

AdamW (no weight decay on < 2-D tensors), cosine learning rate per step, bf16 autocast where the GPU
supports it, BCE + Dice on the SxS logits. Randomness is a function of (seed, rank, step) and episodes of
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
from runtime.outputs import recover_dir, replace_dir

from .batches import Augment, TrainEpisodes, episode_loss, prepare
from .datasets import build_dataset
from .evaluate import run_episodes, torch_predictor
from .lora import add_lora, format_trainable, load_lora, save_lora, trainable_table
from .run import CONFIG_NAME, LOG_NAME, RunConfig, adapters_dir, read_config

TRAINER_STATE = "trainer.pt"


@dataclass
class FitResult:
    run: Path
    step: int  # optimiser steps done in total
    losses: list[float] = field(default_factory=list)  # per step, this session
    val_miou: list[tuple[int, float]] = field(default_factory=list)  # (step, mIoU), this session
    best_val_miou: float | None = None


class EpisodeModule(nn.Module):
    """The episode forward as an nn.Module, so DDP can wrap it."""

    def __init__(self, sam: nn.Module):
        super().__init__()
        self.sam = sam

    def forward(self, support_images, support_masks, query_images) -> torch.Tensor:
        return episode_forward(self.sam, support_images, support_masks, query_images).logits


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
        raise ValueError(f"--device {device}: this torch has no usable CUDA device (torch.cuda.is_available() is False); "
                         "use --device cpu or auto")
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


def use_amp(amp: str, device: torch.device) -> bool:
    if amp not in ("auto", "bf16", "off"):
        raise ValueError(f"amp must be auto, bf16 or off, got {amp!r}")
    return amp == "bf16" or (amp == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())


def _optimizer(model: nn.Module, config: RunConfig, device: torch.device) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2]},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, weight_decay=config.weight_decay,
                             betas=(0.9, 0.999), fused=device.type == "cuda")


class _Log:
    def __init__(self, path: Path | None):
        self.path = path

    def __call__(self, event: str, **fields) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps({"event": event, "time": round(time.time(), 3), **fields}) + "\n")


def fit(config: RunConfig | None, out: str | Path, *, resume: bool = False, stop_after: int | None = None,
        device: str = "auto", progress: bool = True) -> FitResult:
    """Train into run directory `out`; with `resume`, continue the run there (its config.json is used).
    `stop_after` ends this session after that many steps (continue later with `resume`)."""
    out = Path(out)
    dd = _init_distributed(device)
    try:
        return _fit(config, out, resume, stop_after, dd, progress)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _fit(config: RunConfig | None, out: Path, resume: bool, stop_after: int | None, dd: _Dist, progress: bool) -> FitResult:
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
    trn = build_dataset(config.dataset, config.data_root, config.fold, "trn", config.shots, config.seed)
    val = build_dataset(config.dataset, config.data_root, config.fold, "val", config.shots, config.seed,
                        num_episodes=config.val_episodes)
    if dd.world > 1:
        dist.barrier()  # every rank has checked `out` before rank 0 writes into it
    if dd.main and not resume:
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_NAME).write_text(config.to_json())
    log = _Log(out / LOG_NAME if dd.main else None)

    torch.manual_seed(config.seed)  # identical fresh adapters on every rank
    sam = config.base.build().model
    if resume:
        load_lora(sam, adapters_dir(out, "last"), trainable=True)
    else:
        add_lora(sam, config.lora)
    sam.to(dd.device).train()
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
        raise ValueError(f"{len(episodes)} training episodes over {dd.world} process(es) make no batch of {config.batch_size}")
    total = config.steps or config.epochs * per_epoch
    val_every = config.val_every or per_epoch

    optimizer = _optimizer(sam, config, dd.device)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    step, best = 0, None
    if resume:
        state = torch.load(out / "last" / TRAINER_STATE, map_location=dd.device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, best = int(state["step"]), state["best_val_miou"]
    module: nn.Module = EpisodeModule(sam)
    if dd.world > 1:
        module = DistributedDataParallel(module, device_ids=[dd.device.index] if dd.device.type == "cuda" else None)
    augment = Augment() if config.augment else None
    log("start" if not resume else "resume", step=step, total_steps=total, steps_per_epoch=per_epoch, world_size=dd.world,
        amp=amp, device=str(dd.device), trainable={name: t for name, t, _ in rows})

    result = FitResult(out, step, best_val_miou=best)
    end = total if stop_after is None else min(total, step + stop_after)
    bar = tqdm(total=end, initial=step, disable=not (progress and dd.main), desc="fit", unit="step")

    def save(which: str, val_miou: float | None = None) -> None:
        if dd.main:
            tmp = out / f".{which}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            save_lora(sam, tmp / "adapters")
            if which == "last":
                torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                            "best_val_miou": result.best_val_miou}, tmp / TRAINER_STATE)
            (tmp / "state.json").write_text(json.dumps({"step": step, "val_miou": val_miou}) + "\n")
            replace_dir(tmp, out / which)
        if dd.world > 1:
            dist.barrier()

    def validate() -> None:
        acc, _ = run_episodes(torch_predictor(sam, amp), val, range(dd.rank, len(val), dd.world), progress=False)
        if dd.world > 1:
            t = torch.from_numpy(acc.as_array()).to(dd.device)
            dist.all_reduce(t)
            acc.load_array(t.cpu().numpy())
        sam.train()
        miou, is_best = acc.miou(), result.best_val_miou is None or acc.miou() > result.best_val_miou
        result.val_miou.append((step, miou))
        log("val", step=step, miou=miou, fbiou=acc.fbiou(), episodes=int(acc.episodes.sum()), best=is_best)
        if is_best:
            result.best_val_miou = miou
            save("best", miou)

    while step < end:
        epoch = step // per_epoch
        sampler.set_epoch(epoch)
        episodes.set_epoch(epoch)
        indices = list(sampler)[(step % per_epoch) * config.batch_size: per_epoch * config.batch_size]
        loader = DataLoader(episodes, batch_size=config.batch_size, sampler=indices, num_workers=config.workers,
                            drop_last=True, pin_memory=dd.device.type == "cuda")
        for batch in loader:
            torch.manual_seed(_step_seed(config.seed, dd.rank, step))
            si, sm, qi, qm = prepare(batch, dd.device, augment)
            with torch.autocast(dd.device.type, dtype=torch.bfloat16, enabled=amp):
                logits = module(si, sm, qi)
            loss, bce, dice = episode_loss(logits, qm)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            step += 1
            stats = torch.stack([loss.detach(), bce.detach(), dice.detach()]).float()
            if dd.world > 1:
                dist.all_reduce(stats)
                stats /= dd.world
            loss_v, bce_v, dice_v = (float(v) for v in stats)
            result.losses.append(loss_v)
            log("train", step=step, epoch=epoch, loss=loss_v, bce=bce_v, dice=dice_v, lr=lr)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_v:.4f}", lr=f"{lr:.2e}")
            if step % val_every == 0 or step == total:
                validate()
            if step >= end:
                break
    bar.close()
    result.step = step
    save("last")
    log("end" if step >= total else "stop", step=step, best_val_miou=result.best_val_miou)
    return result
