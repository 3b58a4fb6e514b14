"""A non-learned few-shot baseline on raw pixels, run on the same episodes as the models (`evaluate`).

`color_histogram_predictor`: per class, RGB histograms (8 bins a channel, add-one smoothing) of the supports'
object and background pixels, and each query pixel's Bayes log-odds log P(fg | colour) - log P(bg | colour) with
the supports' object share as the prior; N-way through the same label-map rule as the models (`label_map`).
What it shows: how far a benchmark can be solved by colour statistics alone, without learning anything.
"""

from __future__ import annotations

import numpy as np

from .datasets import WaysEpisode
from .evaluate import Predictor, label_map

BINS = 8


def _bins(image: np.ndarray) -> np.ndarray:
    q = (image.astype(np.int32) * BINS) // 256
    return (q[..., 0] * BINS + q[..., 1]) * BINS + q[..., 2]


def color_log_odds(supports: list[tuple[np.ndarray, np.ndarray]], query: np.ndarray) -> np.ndarray:
    """(H, W) float32 log-odds that each query pixel is the supports' object, from colour histograms."""
    fg, bg = np.ones(BINS**3), np.ones(BINS**3)
    for image, mask in supports:
        b, m = _bins(image), mask.astype(bool)
        fg += np.bincount(b[m], minlength=BINS**3)
        bg += np.bincount(b[~m], minlength=BINS**3)
    prior = np.log(fg.sum() / bg.sum())
    table = np.log(fg / fg.sum()) - np.log(bg / bg.sum()) + prior
    return table[_bins(query)].astype(np.float32)


def color_histogram_predictor() -> Predictor:
    def predict(ep: WaysEpisode) -> np.ndarray:
        return label_map(np.stack([color_log_odds(s, ep.query) for s in ep.supports]))

    return predict


BASELINES = {"color-histogram": color_histogram_predictor}
