"""The `shapes` benchmark and its pretraining episodes (runtime.tools.shapes, training.datasets), and the non-learned
colour baseline that the benchmark must defeat."""

import numpy as np
import pytest

from runtime.tools import shapes
from training.baseline import color_histogram_predictor, color_log_odds
from training.datasets import IGNORE, build_dataset
from training.evaluate import run_episodes


def test_a_class_is_a_conjunction_of_shape_and_texture():
    parts = [shapes.class_parts(c) for c in range(shapes.NUM_CLASSES)]
    assert len(set(parts)) == shapes.NUM_CLASSES
    for shape in shapes.SHAPES:  # each outline in two classes, with two textures
        assert len({t for s, t in parts if s == shape}) == 2
    for texture in shapes.TEXTURES:  # each texture in several classes
        assert sum(t == texture for _, t in parts) >= 4
    for fold in range(shapes.FOLDS):  # a novel class's outline and texture are both seen in training, never together
        novel = shapes.test_classes(fold)
        base = [parts[c] for c in range(shapes.NUM_CLASSES) if c not in novel]
        for c in novel:
            s, t = parts[c]
            assert any(b[0] == s for b in base) and any(b[1] == t for b in base) and (s, t) not in base


def test_images_are_deterministic_and_training_never_shows_a_novel_class():
    a = shapes.class_image(7, 3, "trn", 0)
    assert all(np.array_equal(x, y) for x, y in zip(a, shapes.class_image(7, 3, "trn", 0)))
    assert not np.array_equal(a[0], shapes.class_image(7, 4, "trn", 0)[0])
    assert not np.array_equal(a[0], shapes.class_image(7, 3, "val", 0)[0])  # splits have their own streams
    novel = set(shapes.test_classes(0))
    for split in ("trn", "val"):
        for c in range(5, 20, 3):
            for i in range(4):
                image, label = shapes.class_image(c, i, split, 0)
                shown = {int(v) - 1 for v in np.unique(label) if v}
                assert c in shown and not shown & novel, (split, c, i, shown)
                assert (label == c + 1).mean() >= shapes.MIN_VISIBLE and image.shape[:2] == label.shape
    with pytest.raises(ValueError, match="test class"):
        shapes.class_image(2, 0, "trn", 0)
    shown = set()
    for i in range(30):
        shown |= {int(v) - 1 for v in np.unique(shapes.class_image(1, i, "test", 0)[1]) if v}
    assert shown - novel, "test images also show base classes as distractors"


def test_instance_views_show_the_same_object_in_new_scenes():
    first, second = shapes.instance_image(5, 0), shapes.instance_image(5, 1)
    assert not np.array_equal(first[0], second[0])
    for _, mask in (first, second):
        assert set(np.unique(mask)) <= {0, 1} and mask.mean() >= shapes.MIN_VISIBLE
    colours = [set(map(tuple, image[mask == 1].reshape(-1, 3)[::7].tolist())) for image, mask in (first, second)]
    assert len(colours[0] & colours[1]) > 0  # the object's look travels with it


@pytest.mark.parametrize("split", ["trn", "val", "test"])
def test_dataset_episodes(split):
    d = build_dataset("shapes", None, 1, split, 2)
    epoch = 0 if split == "trn" else -1
    specs = [d.spec(i, epoch) for i in range(6)]
    assert specs == [d.spec(i, epoch) for i in range(6)]
    for s in specs:
        assert s.class_id in d.class_ids and len(s.supports) == 2 and s.query not in s.supports
        assert s.query.startswith(f"{split}/{s.class_id}/")
    if split == "trn":  # unlimited images: a new epoch draws new ones
        assert d.spec(0, 1) != specs[0]
    ep = d.episode(0, epoch)
    assert set(np.unique(ep.query_mask)) <= {0, 1, IGNORE} and ep.query_mask.any()
    assert all(m.any() for _, m in ep.supports)


def test_instances_dataset():
    d = build_dataset("shapes-instances", None, 0, "val", 1)
    a, b = d.spec(0), d.spec(1)
    assert a.query.split("/")[0] == a.supports[0].split("/")[0] != b.query.split("/")[0]
    assert d.class_ids == [0] and d.episode(0).query_mask.any()
    with pytest.raises(ValueError, match="single fold"):
        build_dataset("shapes-instances", None, 1, "trn", 1)
    with pytest.raises(ValueError, match="ways"):
        d.check_ways(2)


def test_colour_baseline_separates_colour_from_shape():
    """The baseline solves a support that is the query itself and the old colour-coded benchmark, and fails on
    `shapes`, where colour is drawn per instance; a flipped support mask flips its answer."""
    image, label = shapes.class_image(3, 0, "test", 0)
    mask = (label == 4).astype(np.uint8)
    odds = color_log_odds([(image, mask)], image)
    inter, union = ((odds > 0) & (mask == 1)).sum(), ((odds > 0) | (mask == 1)).sum()
    assert inter / union > 0.5
    flipped = color_log_odds([(image, 1 - mask)], image)
    assert ((flipped > 0) & (mask == 1)).sum() < 0.2 * mask.sum()

    def miou(name):
        d = build_dataset(name, None, 0, "test", 1, num_episodes=40)
        return run_episodes(color_histogram_predictor(), d, range(40), progress=False)[0].miou()

    old, new = miou("synthetic"), miou("shapes")
    assert old > 0.4 and new < 0.15, (old, new)
