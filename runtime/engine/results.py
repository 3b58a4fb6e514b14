"""What a segmentation returns: one class's `Segmentation`, N classes' `MultiClassSegmentation` and its label map."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Segmentation:
    mask: np.ndarray  # (H, W) bool, in the query's own size
    logits: np.ndarray  # (H, W) float32 mask logits; mask = logits > 0
    score: float  # the decoder's predicted IoU of the mask
    object_score: float  # object-presence logit (> 0: object predicted present)
    low_res_logits: np.ndarray  # (h, w) float32 decoder output before upsampling


@dataclass(frozen=True)
class MultiClassSegmentation(Mapping[str, Segmentation]):
    """N-way result: each class's `Segmentation` (by name, in the order the classes were given) and a label map.

    `label_map[y, x]` is 0 (background) where no class has a positive logit, else 1 + the index of the class
    with the highest logit; on equal logits the class given first wins. Class masks are each class's own
    `logits > 0` and may overlap; the label map resolves overlaps by the highest logit."""

    classes: dict[str, Segmentation]
    label_map: np.ndarray  # (H, W) uint8 in the query's size: 0 background, i + 1 = the i-th class

    def __getitem__(self, name: str) -> Segmentation:
        return self.classes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.classes)

    def __len__(self) -> int:
        return len(self.classes)

    def label(self, name: str) -> int:
        """The label map value of class `name`."""
        return list(self.classes).index(name) + 1


MAX_CLASSES = 255  # the label map is uint8 (a palette PNG)


def label_map(logits: list[np.ndarray]) -> np.ndarray:
    """Per pixel: 1 + the index of the class with the highest positive logit (first class on ties), else 0.
    NaN counts as the maximum (as argmax does) and is not positive. Class by class: memory is one float32 and one
    uint8 map of the image, not a stack of N."""
    best = np.array(logits[0], np.float32)
    labels = np.ones(best.shape, np.uint8)
    for i, x in enumerate(logits[1:], 2):
        better = (x > best) | (np.isnan(x) & ~np.isnan(best))
        np.copyto(best, x, where=better)
        labels[better] = i
    labels[~(best > 0)] = 0
    return labels
