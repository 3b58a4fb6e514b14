"""Few-shot segmentation metrics as FS-SAM2 (and HSNet before it) compute them.

Per episode: background and foreground intersection and union between the thresholded prediction and the
query mask at the query's own size, pixels marked IGNORE excluded. Accumulated per class over all episodes:
mIoU = mean over the classes of (summed fg intersection / summed fg union); FB-IoU = mean over {bg, fg} of
(intersection / union summed over all classes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .datasets import IGNORE


def episode_areas(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(intersection, union), each [background, foreground], of a bool prediction and a {0, 1, IGNORE} mask."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and mask {target.shape} differ in size")
    valid = target != IGNORE
    p, t = pred.astype(bool) & valid, (target == 1) & valid
    pb, tb = ~pred.astype(bool) & valid, (target == 0) & valid
    inter = np.array([(pb & tb).sum(), (p & t).sum()], np.float64)
    union = np.array([(pb | tb).sum(), (p | t).sum()], np.float64)
    return inter, union


@dataclass
class IoUAccumulator:
    """Summed areas per class (columns follow `class_ids`)."""

    class_ids: list[int]
    inter: np.ndarray = field(init=False)
    union: np.ndarray = field(init=False)
    episodes: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.class_ids)
        self.inter, self.union, self.episodes = np.zeros((2, n)), np.zeros((2, n)), np.zeros(n)
        self._column = {c: i for i, c in enumerate(self.class_ids)}

    def add(self, class_id: int, inter: np.ndarray, union: np.ndarray) -> None:
        i = self._column[class_id]
        self.inter[:, i] += inter
        self.union[:, i] += union
        self.episodes[i] += 1

    def per_class_iou(self) -> dict[int, float]:
        """Foreground IoU of each class that has at least one episode."""
        iou = self.inter[1] / np.maximum(self.union[1], 1.0)
        return {c: float(iou[i]) for i, c in enumerate(self.class_ids) if self.episodes[i]}

    def miou(self) -> float:
        per_class = self.per_class_iou()
        return float(np.mean(list(per_class.values()))) if per_class else float("nan")

    def fbiou(self) -> float:
        seen = self.episodes > 0
        if not seen.any():
            return float("nan")
        inter, union = self.inter[:, seen].sum(1), self.union[:, seen].sum(1)
        return float(np.mean(inter / np.maximum(union, 1.0)))
