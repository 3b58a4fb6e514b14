"""Few-shot segmentation metrics as FS-SAM2 (and HSNet, PANet before it) compute them.

Per episode, at the query's own size with pixels marked IGNORE excluded: each chosen class's intersection
and union between the predicted label map and the query's label map (1-way: the thresholded prediction
and the {0, 1} mask), and the foreground / background ones (foreground = any class). Accumulated over all
episodes: mIoU = mean over the classes of (summed intersection / summed union), a class counting in the
episodes that chose it; FB-IoU = mean over {bg, fg} of (summed intersection / summed union).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .datasets import IGNORE


def episode_areas(pred: np.ndarray, target: np.ndarray, ways: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(intersection, union), each of labels [0 (background), 1, ..., ways], of a predicted label map (or a
    bool mask when ways = 1) and a {0..ways, IGNORE} target."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and mask {target.shape} differ in size")
    valid = target != IGNORE
    p, t = pred.astype(np.int64)[valid], target[valid].astype(np.int64)
    if p.size and (min(p.min(), t.min()) < 0 or max(p.max(), t.max()) > ways):
        raise ValueError(
            f"labels must be 0..{ways} (or IGNORE in the target); got prediction "
            f"{p.min()}..{p.max()}, target {t.min()}..{t.max()}"
        )
    inter = np.bincount(t[p == t], minlength=ways + 1)[: ways + 1].astype(np.float64)
    union = np.bincount(p, minlength=ways + 1)[: ways + 1] + np.bincount(t, minlength=ways + 1)[: ways + 1] - inter
    return inter, union.astype(np.float64)


def foreground_areas(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[background, foreground] (intersection, union) of label maps, any class counting as foreground."""
    return episode_areas(pred > 0, np.where(target == IGNORE, IGNORE, target > 0).astype(np.uint8))


@dataclass
class IoUAccumulator:
    """Summed areas: per class (columns follow `class_ids`) and foreground / background over all episodes."""

    class_ids: list[int]
    inter: np.ndarray = field(init=False)  # (classes,) summed intersection of each class
    union: np.ndarray = field(init=False)
    episodes: np.ndarray = field(init=False)  # (classes,) episodes that chose each class
    fb_inter: np.ndarray = field(init=False)  # [background, foreground]
    fb_union: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.class_ids)
        self.inter, self.union, self.episodes = np.zeros(n), np.zeros(n), np.zeros(n)
        self.fb_inter, self.fb_union = np.zeros(2), np.zeros(2)
        self._column = {c: i for i, c in enumerate(self.class_ids)}

    def add(
        self, class_ids: Sequence[int], inter: np.ndarray, union: np.ndarray, fb_inter: np.ndarray, fb_union: np.ndarray
    ) -> None:
        """One episode: the areas of its classes (in `class_ids` order) and its [bg, fg] areas."""
        if len(inter) != len(class_ids) or len(union) != len(class_ids):
            raise ValueError(f"{len(class_ids)} classes but {len(inter)} / {len(union)} areas")
        cols = [self._column[c] for c in class_ids]
        self.inter[cols] += inter
        self.union[cols] += union
        self.episodes[cols] += 1
        self.fb_inter += fb_inter
        self.fb_union += fb_union

    def as_array(self) -> np.ndarray:
        """All sums as one vector (for an all-reduce); `load_array` takes it back."""
        return np.concatenate([self.inter, self.union, self.episodes, self.fb_inter, self.fb_union])

    def load_array(self, arr: np.ndarray) -> None:
        n = len(self.class_ids)
        self.inter, self.union, self.episodes = arr[:n], arr[n : 2 * n], arr[2 * n : 3 * n]
        self.fb_inter, self.fb_union = arr[3 * n : 3 * n + 2], arr[3 * n + 2 :]

    def per_class_iou(self) -> dict[int, float]:
        """IoU of each class that has at least one episode."""
        iou = self.inter / np.maximum(self.union, 1.0)
        return {c: float(iou[i]) for i, c in enumerate(self.class_ids) if self.episodes[i]}

    def miou(self) -> float:
        per_class = self.per_class_iou()
        return float(np.mean(list(per_class.values()))) if per_class else float("nan")

    def fbiou(self) -> float:
        if not self.episodes.any():
            return float("nan")
        return float(np.mean(self.fb_inter / np.maximum(self.fb_union, 1.0)))
