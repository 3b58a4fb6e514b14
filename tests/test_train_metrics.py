"""Metrics against hand-computed IoU on tiny masks."""

import numpy as np
import pytest

from training.datasets import IGNORE
from training.metrics import IoUAccumulator, episode_areas


def test_episode_areas_by_hand():
    target = np.array([[1, 1, 0],
                       [0, 0, 0],
                       [IGNORE, IGNORE, 1]], np.uint8)
    pred = np.array([[1, 0, 1],
                     [0, 0, 0],
                     [1, 1, 1]], bool)
    inter, union = episode_areas(pred, target)
    # valid pixels: 7. fg: pred {00, 02, 22}, gt {00, 01, 22} -> inter 2, union 4.
    # bg: pred {01, 10, 11, 12}, gt {02, 10, 11, 12} -> inter 3, union 5. The two IGNORE pixels count nowhere.
    assert inter.tolist() == [3, 2] and union.tolist() == [5, 4]


def test_shapes_must_match():
    with pytest.raises(ValueError, match="differ in size"):
        episode_areas(np.zeros((2, 2), bool), np.zeros((2, 3), np.uint8))


def test_miou_and_fbiou_accumulate_per_class():
    acc = IoUAccumulator([3, 7, 9])
    acc.add(3, np.array([6.0, 2.0]), np.array([8.0, 4.0]))  # class 3: fg 2/4
    acc.add(3, np.array([5.0, 1.0]), np.array([7.0, 4.0]))  # class 3 summed: fg 3/8
    acc.add(7, np.array([9.0, 3.0]), np.array([10.0, 4.0]))  # class 7: fg 3/4
    # class 9 has no episode: left out of the means (reported as missing from per_class_iou)
    assert acc.per_class_iou() == {3: 3 / 8, 7: 3 / 4}
    assert acc.miou() == pytest.approx((3 / 8 + 3 / 4) / 2)
    assert acc.fbiou() == pytest.approx(((6 + 5 + 9) / (8 + 7 + 10) + (2 + 1 + 3) / (4 + 4 + 4)) / 2)
    assert acc.episodes.tolist() == [2, 1, 0]


def test_perfect_and_empty_predictions():
    target = np.zeros((4, 4), np.uint8)
    target[1:3, 1:3] = 1
    acc = IoUAccumulator([0])
    acc.add(0, *episode_areas(target.astype(bool), target))
    assert acc.miou() == 1.0 and acc.fbiou() == 1.0
    acc = IoUAccumulator([0])
    acc.add(0, *episode_areas(np.zeros((4, 4), bool), target))
    assert acc.miou() == 0.0 and acc.fbiou() == pytest.approx(12 / 16 / 2)
