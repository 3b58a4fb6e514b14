"""Evaluate a few-shot segmenter on a benchmark's episodes: the PyTorch model (with or without adapters,
through the same episode forward as training) or exported artifacts through `runtime.FewShotSegmenter`.

Both see identical episodes (images at their own size, predictions at the query's size), so the report of
one can be compared with the other episode by episode.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm

from fssam2_export.reference import reference_episode

from .datasets import Episode, FewShotDataset
from .metrics import IoUAccumulator, episode_areas

Predictor = Callable[[Episode], np.ndarray]  # -> logits (H, W) at the query's size


@dataclass
class EpisodeResult:
    index: int
    class_id: int
    query: str
    supports: list[str]
    iou: float  # foreground IoU of this episode


@dataclass
class EvalReport:
    source: dict
    dataset: str
    fold: int
    shots: int
    split: str
    seed: int
    miou: float
    fbiou: float
    per_class_iou: dict[int, float]
    episodes: list[EpisodeResult] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @staticmethod
    def from_json(text: str) -> EvalReport:
        d = json.loads(text)
        d["per_class_iou"] = {int(k): v for k, v in d["per_class_iou"].items()}
        d["episodes"] = [EpisodeResult(**e) for e in d["episodes"]]
        return EvalReport(**d)

    def table(self) -> str:
        head = f"{self.dataset} fold {self.fold}, {self.shots}-shot, {len(self.episodes)} {self.split} episodes"
        lines = [head, f"  mIoU   {100 * self.miou:6.2f}", f"  FB-IoU {100 * self.fbiou:6.2f}", "  class  IoU"]
        lines += [f"  {c:>5}  {100 * v:6.2f}" for c, v in sorted(self.per_class_iou.items())]
        return "\n".join(lines)


def torch_predictor(model: torch.nn.Module, amp: bool = False) -> Predictor:
    """FS-SAM2's episode in PyTorch (`reference_episode`), optionally under bf16 autocast."""
    model.eval()
    device = next(model.parameters()).device

    def predict(ep: Episode) -> np.ndarray:
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        with ctx:
            return reference_episode(model, list(zip(ep.support_images, ep.support_masks)), ep.query_image).logits

    return predict


def runtime_predictor(artifacts: str | Path, provider: str = "cpu") -> Predictor:
    """Exported graphs through the torch-free runtime."""
    from runtime import FewShotSegmenter

    seg = FewShotSegmenter(artifacts, provider=provider)

    def predict(ep: Episode) -> np.ndarray:
        seg.reset()
        for image, mask in zip(ep.support_images, ep.support_masks):
            seg.add_support(image, mask)
        return seg.segment(ep.query_image).logits

    return predict


def run_episodes(predict: Predictor, dataset: FewShotDataset, indices: Iterable[int], progress: bool = True,
                 workers: int = 0) -> tuple[IoUAccumulator, list[EpisodeResult]]:
    """Accumulate areas over the episodes `indices` of `dataset` (its fixed, seeded episodes)."""
    indices = list(indices)
    acc, results = IoUAccumulator(dataset.class_ids), []
    loader = torch.utils.data.DataLoader(_Episodes(dataset, indices), batch_size=None, num_workers=workers,
                                         collate_fn=_as_is)
    for ep in tqdm(loader, total=len(indices), disable=not progress, desc="episodes", leave=False):
        inter, union = episode_areas(predict(ep) > 0, ep.query_mask)
        acc.add(ep.spec.class_id, inter, union)
        results.append(EpisodeResult(ep.spec.index, ep.spec.class_id, ep.spec.query, list(ep.spec.supports),
                                     float(inter[1] / max(union[1], 1.0))))
    return acc, results


def evaluate(predict: Predictor, dataset: FewShotDataset, source: dict, fold: int, progress: bool = True,
             workers: int = 0) -> EvalReport:
    t0 = time.perf_counter()
    acc, results = run_episodes(predict, dataset, range(len(dataset)), progress, workers)
    return EvalReport(source, dataset.benchmark, fold, dataset.shots, dataset.split, dataset.seed, acc.miou(),
                      acc.fbiou(), acc.per_class_iou(), results, time.perf_counter() - t0)


def _as_is(ep: Episode) -> Episode:
    return ep


class _Episodes(torch.utils.data.Dataset):
    def __init__(self, dataset: FewShotDataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Episode:
        return self.dataset.episode(self.indices[i])
