"""Metrics against hand-computed IoU on tiny masks and N-way label maps, and the N-way label rule."""

import numpy as np
import pytest

from training.datasets import IGNORE
from training.evaluate import label_map
from training.metrics import IoUAccumulator, episode_areas, foreground_areas


def _add_binary(acc: IoUAccumulator, class_id: int, inter: np.ndarray, union: np.ndarray) -> None:
    """A 1-way episode's [bg, fg] areas: the class's areas are the foreground ones."""
    acc.add([class_id], inter[1:], union[1:], inter, union)


def test_episode_areas_by_hand():
    target = np.array([[1, 1, 0], [0, 0, 0], [IGNORE, IGNORE, 1]], np.uint8)
    pred = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 1]], bool)
    inter, union = episode_areas(pred, target)
    # valid pixels: 7. fg: pred {00, 02, 22}, gt {00, 01, 22} -> inter 2, union 4.
    # bg: pred {01, 10, 11, 12}, gt {02, 10, 11, 12} -> inter 3, union 5. The two IGNORE pixels count nowhere.
    assert inter.tolist() == [3, 2] and union.tolist() == [5, 4]


def test_shapes_must_match():
    with pytest.raises(ValueError, match="differ in size"):
        episode_areas(np.zeros((2, 2), bool), np.zeros((2, 3), np.uint8))


def test_miou_and_fbiou_accumulate_per_class():
    acc = IoUAccumulator([3, 7, 9])
    _add_binary(acc, 3, np.array([6.0, 2.0]), np.array([8.0, 4.0]))  # class 3: fg 2/4
    _add_binary(acc, 3, np.array([5.0, 1.0]), np.array([7.0, 4.0]))  # class 3 summed: fg 3/8
    _add_binary(acc, 7, np.array([9.0, 3.0]), np.array([10.0, 4.0]))  # class 7: fg 3/4
    # class 9 has no episode: left out of the means (reported as missing from per_class_iou)
    assert acc.per_class_iou() == {3: 3 / 8, 7: 3 / 4}
    assert acc.miou() == pytest.approx((3 / 8 + 3 / 4) / 2)
    assert acc.fbiou() == pytest.approx(((6 + 5 + 9) / (8 + 7 + 10) + (2 + 1 + 3) / (4 + 4 + 4)) / 2)
    assert acc.episodes.tolist() == [2, 1, 0]


def test_perfect_and_empty_predictions():
    target = np.zeros((4, 4), np.uint8)
    target[1:3, 1:3] = 1
    acc = IoUAccumulator([0])
    _add_binary(acc, 0, *episode_areas(target.astype(bool), target))
    assert acc.miou() == 1.0 and acc.fbiou() == 1.0
    acc = IoUAccumulator([0])
    _add_binary(acc, 0, *episode_areas(np.zeros((4, 4), bool), target))
    assert acc.miou() == 0.0 and acc.fbiou() == pytest.approx(12 / 16 / 2)


# 2-way query: class A (label 1) top-left 2x2, class B (label 2) bottom-right 2x2, an ignored row between.
TARGET = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [IGNORE, IGNORE, IGNORE, IGNORE], [0, 0, 2, 2], [0, 0, 2, 2]], np.uint8)


def _ways_acc(pred: np.ndarray, class_ids=(10, 20)) -> IoUAccumulator:
    acc = IoUAccumulator([10, 20, 30])
    inter, union = episode_areas(pred, TARGET, ways=2)
    acc.add(list(class_ids), inter[1:], union[1:], *foreground_areas(pred, TARGET))
    return acc


def test_ways_areas_by_hand():
    pred = np.array(
        [
            [1, 1, 1, 0],
            [1, 2, 0, 0],
            [2, 2, 2, 2],  # ignored: counts nowhere
            [0, 0, 2, 2],
            [1, 0, 0, 2],
        ]
    )
    inter, union = episode_areas(pred, TARGET, ways=2)
    # label 0: pred {03, 12, 13, 30, 31, 41, 42}, gt {02, 03, 12, 13, 30, 31, 40, 41} -> 6 / 9
    # label 1: pred {00, 01, 02, 10, 40}, gt {00, 01, 10, 11} -> 3 / 6; label 2: pred {11, 32, 33, 43}, gt 4 -> 3 / 5
    assert inter.tolist() == [6, 3, 3] and union.tolist() == [9, 6, 5]
    fb_inter, fb_union = foreground_areas(pred, TARGET)
    # fg: pred {00, 01, 02, 10, 11, 32, 33, 40, 43}, gt {00, 01, 10, 11, 32, 33, 42, 43} -> 7 / 10; bg 6 / 9
    assert fb_inter.tolist() == [6, 7] and fb_union.tolist() == [9, 10]
    acc = _ways_acc(pred)
    assert acc.per_class_iou() == {10: 3 / 6, 20: 3 / 5}  # class 30 was in no episode
    assert acc.miou() == pytest.approx((3 / 6 + 3 / 5) / 2) and acc.fbiou() == pytest.approx((6 / 9 + 7 / 10) / 2)


def test_swapped_classes_score_zero_miou_but_full_fbiou():
    perfect = np.where(TARGET == IGNORE, 0, TARGET)
    swapped = np.select([perfect == 1, perfect == 2], [2, 1], 0)
    assert _ways_acc(perfect).miou() == 1.0 and _ways_acc(perfect).fbiou() == 1.0
    assert _ways_acc(swapped).miou() == 0.0 and _ways_acc(swapped).fbiou() == 1.0  # FB-IoU cannot see the swap
    flipped = perfect[:, ::-1]  # the right places, mirrored: overlaps background only
    assert _ways_acc(flipped).miou() == 0.0
    # the same prediction scored against the classes named in the other order is the swap
    assert _ways_acc(perfect, class_ids=(20, 10)).per_class_iou() == {10: 1.0, 20: 1.0}


def test_areas_reject_labels_outside_the_episode():
    with pytest.raises(ValueError, match="labels must be 0..2"):
        episode_areas(np.full(TARGET.shape, 3), TARGET, ways=2)
    with pytest.raises(ValueError, match="labels must be 0..1"):
        episode_areas(np.zeros(TARGET.shape, int), TARGET, ways=1)
    acc = IoUAccumulator([10, 20])
    with pytest.raises(ValueError, match="2 classes but 1"):
        acc.add([10, 20], np.ones(1), np.ones(1), np.ones(2), np.ones(2))


def test_label_map_rule():
    logits = np.array(
        [[[2.0, -1.0, 0.5, -3.0, 1.0]], [[1.0, 3.0, 0.5, -2.0, 0.0]], [[-5.0, 2.0, 0.1, -1.0, 1.0]]]
    )  # (N=3, H=1, W=5)
    # per pixel: class 0 highest; class 1 highest; 0 and 1 tie -> lower index 0; none positive -> bg;
    # 0 and 2 tie at 1.0 -> 0
    assert label_map(logits).tolist() == [[1, 2, 1, 0, 1]]
    one = np.array([[[0.3, 0.0, -0.2]]])
    assert label_map(one).tolist() == [[1, 0, 0]]  # N = 1: logits > 0
    # classes reversed: labels renamed, and ties now go to the class that comes first in the new order
    assert label_map(logits[::-1]).tolist() == [[3, 2, 2, 0, 1]]
