"""Evaluate a few-shot segmenter on a benchmark's N-way K-shot episodes (N = 1 by default): the PyTorch model
(with or without adapters, through the same episode forward as training) or exported artifacts through
`runtime.FewShotSegmenter`.

Both see identical episodes (images at their own size, predictions at the query's size) and predict a label
map with the same rule (`label_map`), so the report of one can be compared with the other episode by episode.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from fssam2_export.reference import reference_ways

from .datasets import FewShotDataset, WaysEpisode
from .metrics import IoUAccumulator, episode_areas, foreground_areas

if TYPE_CHECKING:
    from runtime import FewShotSegmenter, RuntimeOptions

Predictor = Callable[[WaysEpisode], np.ndarray]  # -> label map (H, W) at the query's size, see `label_map`


@dataclass
class EpisodeResult:
    index: int
    class_ids: list[int]
    query: str
    supports: list[list[str]]  # K per class
    iou: list[float | None]  # per class: IoU in this episode; None where the class is neither shown nor predicted


@dataclass
class EvalReport:
    source: dict
    dataset: str
    fold: int
    ways: int
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
        head = (
            f"{self.dataset} fold {self.fold}, {self.ways}-way {self.shots}-shot, {len(self.episodes)} "
            f"{self.split} episodes"
        )
        lines = [head, f"  mIoU   {100 * self.miou:6.2f}", f"  FB-IoU {100 * self.fbiou:6.2f}", "  class  IoU"]
        lines += [f"  {c:>5}  {100 * v:6.2f}" for c, v in sorted(self.per_class_iou.items())]
        return "\n".join(lines)


def label_map(logits: np.ndarray) -> np.ndarray:
    """(N, H, W) class logits -> (H, W) int32 label map: per pixel 1 + the index of the class with the highest
    logit where that logit is > 0, else 0 (background); a tie goes to the lower index. N = 1: logits > 0."""
    return np.where(logits.max(0) > 0, logits.argmax(0) + 1, 0).astype(np.int32)


def torch_predictor(model: torch.nn.Module, amp: bool = False) -> Predictor:
    """FS-SAM2's episode in PyTorch (`reference_ways`: the query encoded once), optionally under bf16 autocast."""
    model.eval()
    device = next(model.parameters()).device

    def predict(ep: WaysEpisode) -> np.ndarray:
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        with ctx:
            results = reference_ways(model, ep.supports, ep.query)
        return label_map(np.stack([r.logits for r in results]))

    return predict


def runtime_predictor(artifacts: str | Path, options: RuntimeOptions | None = None) -> Predictor:
    """Exported graphs through the torch-free runtime, run as `options` say (default: ONNX Runtime on the CPU)."""
    from runtime import FewShotSegmenter

    seg = FewShotSegmenter(artifacts, options)
    return lambda ep: segment_ways(seg, ep.supports, ep.query)


def segment_ways(
    seg: FewShotSegmenter, classes: list[list[tuple[np.ndarray, np.ndarray]]], query: np.ndarray
) -> np.ndarray:
    """The runtime's N-way label map of `query`, one support list per class: one support set per class and one
    query encoding (`FewShotSegmenter.segment` with a dict of sets applies `label_map`'s rule)."""
    sets = {str(i): seg.encode_supports(supports) for i, supports in enumerate(classes)}
    return seg.segment(query, sets).label_map.astype(np.int32)


def run_episodes(
    predict: Predictor,
    dataset: FewShotDataset,
    indices: Iterable[int],
    progress: bool = True,
    workers: int = 0,
    ways: int = 1,
) -> tuple[IoUAccumulator, list[EpisodeResult]]:
    """Accumulate areas over the N-way episodes `indices` of `dataset` (its fixed, seeded episodes)."""
    indices = list(indices)
    acc, results = IoUAccumulator(dataset.class_ids), []
    loader = torch.utils.data.DataLoader(
        _Episodes(dataset, indices, ways), batch_size=None, num_workers=workers, collate_fn=_as_is
    )
    for ep in tqdm(loader, total=len(indices), disable=not progress, desc="episodes", leave=False):
        pred = predict(ep)
        inter, union = episode_areas(pred, ep.query_label, ways)
        acc.add(ep.spec.class_ids, inter[1:], union[1:], *foreground_areas(pred, ep.query_label))
        iou = [float(i / u) if u else None for i, u in zip(inter[1:], union[1:])]
        results.append(
            EpisodeResult(
                ep.spec.index, list(ep.spec.class_ids), ep.spec.query, [list(s) for s in ep.spec.supports], iou
            )
        )
    return acc, results


def evaluate(
    predict: Predictor,
    dataset: FewShotDataset,
    source: dict,
    fold: int,
    progress: bool = True,
    workers: int = 0,
    ways: int = 1,
) -> EvalReport:
    t0 = time.perf_counter()
    acc, results = run_episodes(predict, dataset, range(len(dataset)), progress, workers, ways)
    return EvalReport(
        source,
        dataset.benchmark,
        fold,
        ways,
        dataset.shots,
        dataset.split,
        dataset.seed,
        acc.miou(),
        acc.fbiou(),
        acc.per_class_iou(),
        results,
        time.perf_counter() - t0,
    )


def _as_is(ep: WaysEpisode) -> WaysEpisode:
    return ep


class _Episodes(torch.utils.data.Dataset):
    def __init__(self, dataset: FewShotDataset, indices: list[int], ways: int):
        self.dataset, self.indices, self.ways = dataset, indices, ways

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> WaysEpisode:
        return self.dataset.ways_episode(self.indices[i], self.ways)
