"""Benchmark loaders on small fake trees in each real layout: folds, classes, FS-SAM2's episode sampling,
held-out validation, the shipped split lists, and clear errors for bad data roots."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.datasets import IGNORE, DatasetLayoutError, PascalDataset, build_dataset, held_out
from training.splits import read_classwise, read_names


def _save(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _rgb(rng, h=40, w=48):
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def _names(prefix: str, want_held_out: bool, n: int) -> list[str]:
    out, i = [], 0
    while len(out) < n:
        name = f"{prefix}{i:06d}"
        if held_out(name) == want_held_out:
            out.append(name)
        i += 1
    return out


@pytest.fixture(scope="module")
def pascal_root(tmp_path_factory):
    """VOC2012 tree + fold-0 lists: test images show labels 1-2 (fold 0 classes 0-1), train images 6-7."""
    root, lists = tmp_path_factory.mktemp("pascal"), tmp_path_factory.mktemp("pascal_lists")
    rng = np.random.default_rng(0)
    test_names = [f"2007_{i:06d}" for i in range(6)]
    train_names = _names("2008_", False, 8) + _names("2008_", True, 3)
    labels = {}
    for i, n in enumerate(test_names + train_names):
        lab = np.zeros((40, 48), np.uint8)
        base = 1 if n in test_names else 6
        lab[5:20, 5:20] = base + i % 2
        lab[25:35, 25:40] = base + 1 - i % 2
        lab[20, :] = IGNORE
        labels[n] = lab
        _save(root / "VOC2012/JPEGImages" / f"{n}.jpg", _rgb(rng))
        _save(root / "VOC2012/SegmentationClassAug" / f"{n}.png", lab)
    for split, names, classes in (("val", test_names, (1, 2)), ("train", train_names, (6, 7))):
        d = lists / "pascal/fss_list" / split
        d.mkdir(parents=True)
        (d / "data_list_0.txt").write_text("\n".join(names) + "\n")
        (d / "sub_class_file_list_0.txt").write_text(repr({c: list(names) for c in classes}))
    return root, lists, labels


def _reference_pascal_episode(names, classwise, class_ids, seed, idx, shots, labels):
    """A literal port of FS-SAM2's DatasetPASCAL.sample_episode (its data/pascal.py)."""
    rng = np.random.default_rng((seed, idx, -1 + 1))
    idx %= len(names)
    query_name = names[idx]
    label_classes = sorted(set(labels[query_name].ravel().tolist()))
    label_classes = [c for c in label_classes if c not in (0, 255)]
    label_classes = [c - 1 for c in label_classes if c - 1 in class_ids]
    class_sample = rng.choice(label_classes)
    valid = [x for x in classwise[class_sample] if x != query_name]
    return query_name, rng.choice(valid, shots, replace=False).tolist(), int(class_sample)


def test_pascal_test_episodes_are_fs_sam2s(pascal_root):
    root, lists, labels = pascal_root
    ds = PascalDataset(root, 0, "test", shots=2, seed=42, lists_dir=lists)
    assert len(ds) == 1000 and ds.class_ids == [0, 1, 2, 3, 4]
    names = read_names("pascal/fss_list/val/data_list_0.txt", lists)
    classwise = read_classwise("pascal/fss_list/val/sub_class_file_list_0.txt", lists)
    for idx in range(12):
        spec = ds.spec(idx)
        q, sup, c = _reference_pascal_episode(names, classwise, ds.class_ids, 42, idx, 2, labels)
        assert (spec.query, list(spec.supports), spec.class_id) == (q, sup, c)
    ep = ds.episode(3)
    assert ep.spec == ds.spec(3) and ep.query.shape == (40, 48, 3)
    assert set(np.unique(ep.query_mask)) <= {0, 1, IGNORE} and (ep.query_mask[20] == IGNORE).all()
    assert all(set(np.unique(m)) <= {0, 1} and m.any() for _, m in ep.supports)  # ignore -> background in supports


def test_pascal_validation_is_held_out_and_disjoint_from_training(pascal_root):
    root, lists, _ = pascal_root
    trn = PascalDataset(root, 0, "trn", shots=1, lists_dir=lists)
    val = PascalDataset(root, 0, "val", shots=1, num_episodes=20, lists_dir=lists)
    test = PascalDataset(root, 0, "test", shots=1, lists_dir=lists)
    assert trn.class_ids == val.class_ids == list(range(5, 20))
    trn_images = {
        n for e in range(3) for i in range(len(trn)) for n in (trn.spec(i, e).query, *trn.spec(i, e).supports)
    }
    val_queries = {val.spec(i).query for i in range(len(val))}
    assert val_queries and not val_queries & trn_images and all(held_out(q) for q in val_queries)
    assert not val_queries & {test.spec(i).query for i in range(20)}
    assert trn.spec(1, epoch=0) != trn.spec(1, epoch=1) or trn.spec(2, epoch=0) != trn.spec(2, epoch=1)


def test_coco_layout_and_class_uniform_sampling(tmp_path):
    rng = np.random.default_rng(1)
    lists = tmp_path / "lists"
    names = [f"COCO_val2014_{i:012d}" for i in range(5)]
    for n in names:
        lab = np.zeros((30, 30), np.uint8)
        lab[3:15, 3:15], lab[16:28, 16:28] = 1, 5  # labels 1 and 5: classes 0 and 4, both of fold 0
        _save(tmp_path / "COCO2014/val2014" / f"{n}.jpg", _rgb(rng, 30, 30))
        _save(tmp_path / "COCO2014/annotations/val2014" / f"{n}.png", lab)
    d = lists / "coco/fss_list/val"
    d.mkdir(parents=True)
    (d / "data_list_0.txt").write_text("\n".join(names))
    (d / "sub_class_file_list_0.txt").write_text(repr({1 + 4 * k: names for k in range(20)}))
    ds = build_dataset("coco", tmp_path, 0, "test", 1, seed=42, lists_dir=lists)
    assert ds.class_ids == [4 * k for k in range(20)]
    rng_ref = np.random.default_rng((42, 0, 0))  # FS-SAM2's DatasetCOCO.sample_episode draws class, query, supports
    c = rng_ref.choice(ds.class_ids)
    q = rng_ref.choice(ds.classwise[c])
    s = rng_ref.choice([n for n in ds.classwise[c] if n != q], 1, replace=False).tolist()
    assert (ds.spec(0).class_id, ds.spec(0).query, list(ds.spec(0).supports)) == (c, q, s)
    assert set(np.unique(ds.episode(1).query_mask)) <= {0, 1}
    with pytest.raises(DatasetLayoutError, match="COCO2014/val2014"):
        build_dataset("coco", tmp_path / "nowhere", 0, "test", 1, lists_dir=lists)


def _fss_tree(root: Path, listed: str) -> Path:
    """FSS-1000/{apple,zebra}/1..10 (masks of growing height) and a test list naming `listed`; -> lists dir."""
    rng = np.random.default_rng(2)
    lists = root / "lists"
    (lists / "fss").mkdir(parents=True)
    (lists / "fss/test.txt").write_text(listed)
    for cat in ("apple", "zebra"):
        for i in range(1, 11):
            mask = np.zeros((20, 20), np.uint8)
            mask[2 : 10 + i // 2, 4:12] = 255
            _save(root / "FSS-1000" / cat / f"{i}.jpg", _rgb(rng, 20, 20))
            _save(root / "FSS-1000" / cat / f"{i}.png", mask)
    return lists


def test_fss_every_test_image_is_a_query(tmp_path):
    lists = _fss_tree(tmp_path, "zebra\napple\n")
    ds = build_dataset("fss", tmp_path, 0, "test", 5, lists_dir=lists)
    assert len(ds) == 20 and ds.class_ids == [760, 761]
    assert ds.spec(0).query == "apple/1" and ds.spec(2).query == "apple/2"  # sorted paths, as FS-SAM2's glob
    spec = ds.spec(11)
    assert spec.class_id == 761 and len(set(spec.supports)) == 5 and spec.query not in spec.supports
    assert all(s.split("/")[0] == "zebra" for s in spec.supports)
    ep = ds.episode(4)
    assert set(np.unique(ep.query_mask)) == {0, 1}
    (tmp_path / "FSS-1000/zebra").rename(tmp_path / "FSS-1000/zebra_")
    with pytest.raises(DatasetLayoutError, match="zebra"):
        build_dataset("fss", tmp_path, 0, "test", 1, lists_dir=lists)


@pytest.mark.parametrize(
    "breakage,match",
    [
        ("no_root", "does not exist"),
        ("no_labels", "SegmentationClassAug is missing"),
        ("missing_file", "is missing"),
        ("rgb_mask", "single-channel"),
    ],
)
def test_pascal_bad_roots_name_path_and_layout(pascal_root, tmp_path, breakage, match):
    import shutil

    src, lists, _ = pascal_root
    root = tmp_path / "root"
    if breakage != "no_root":
        shutil.copytree(src, root)
    if breakage == "no_labels":
        shutil.rmtree(root / "VOC2012/SegmentationClassAug")
    first = read_names("pascal/fss_list/val/data_list_0.txt", lists)[0]
    if breakage == "missing_file":
        (root / "VOC2012/JPEGImages" / f"{first}.jpg").unlink()
    if breakage == "rgb_mask":
        Image.new("RGB", (48, 40)).save(root / "VOC2012/SegmentationClassAug" / f"{first}.png")
    with pytest.raises(DatasetLayoutError, match=match) as err:
        ds = PascalDataset(root, 0, "test", 1, lists_dir=lists)
        ds.episode(0)
    assert str(root) in str(err.value) and "VOC2012/JPEGImages/<name>.jpg" in str(err.value)


def test_shipped_split_lists():
    for fold in range(4):
        test = read_classwise(f"pascal/fss_list/val/sub_class_file_list_{fold}.txt")
        train = read_classwise(f"pascal/fss_list/train/sub_class_file_list_{fold}.txt")
        assert sorted(test) == PascalDataset.test_classes(fold)
        assert sorted(train) == [c for c in range(20) if c not in PascalDataset.test_classes(fold)]
        assert len(read_names(f"pascal/fss_list/val/data_list_{fold}.txt")) > 300
    assert sorted(read_classwise("pascal/fss_list/val/sub_class_file_list_10.txt")) == PascalDataset.CROSS_DOMAIN[10]
    assert sorted(read_classwise("coco/fss_list/val/sub_class_file_list_1.txt")) == [1 + 4 * k for k in range(20)]
    counts = [len(read_names(f"fss/{s}.txt")) for s in ("trn", "val", "test")]
    assert counts == [520, 240, 240]


def test_synthetic_episodes_are_deterministic_and_split_by_class():
    test = build_dataset("synthetic", None, 1, "test", 3)
    trn = build_dataset("synthetic", None, 1, "trn", 3)
    assert test.class_ids == [5, 6, 7, 8, 9] and not set(test.class_ids) & set(trn.class_ids)
    a, b = test.episode(7), test.episode(7)
    assert a.spec == b.spec and np.array_equal(a.query, b.query) and np.array_equal(a.query_mask, b.query_mask)
    assert a.query_mask.any() and all(m.any() for _, m in a.supports)


def test_unknown_dataset_and_fold():
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("ade20k", "x", 0, "test", 1)
    with pytest.raises(ValueError, match="fold"):
        build_dataset("synthetic", None, 7, "test", 1)


@pytest.mark.parametrize(
    "command,dataset,expected",
    [
        (["eval", "--base"], "pascal", "VOC2012/SegmentationClassAug/<name>.png"),
        (["fit"], "coco", "COCO2014/annotations/train2014/<name>.png"),
    ],
)
def test_cli_bad_data_root_is_a_clear_error(tmp_path, capsys, command, dataset, expected):
    from training.cli import main

    missing = tmp_path / "no_data_here"
    rc = main(
        command
        + [
            "--model",
            "sam2.1_hiera_t",
            "--random-init",
            "--image-size",
            "64",
            "--dataset",
            dataset,
            "--data-root",
            str(missing),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and str(missing) in err and expected in err, err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def pascal_ways_root(tmp_path_factory):
    """Fold-0 test tree for N-way: image i shows labels i%5+1 (top) and (i+1)%5+1 (bottom), an ignored row,
    and a label of another fold (6) that N-way queries must treat as background."""
    root, lists = tmp_path_factory.mktemp("pascal_ways"), tmp_path_factory.mktemp("pascal_ways_lists")
    rng = np.random.default_rng(3)
    names, labels, classwise = [f"2009_{i:06d}" for i in range(12)], {}, {c: [] for c in range(1, 6)}
    for i, n in enumerate(names):
        lab = np.zeros((40, 48), np.uint8)
        lab[2:15, 4:30], lab[25:38, 10:44], lab[30:34, 0:6] = i % 5 + 1, (i + 1) % 5 + 1, 6
        lab[20, :] = IGNORE
        labels[n] = lab
        classwise[i % 5 + 1].append(n)
        classwise[(i + 1) % 5 + 1].append(n)
        _save(root / "VOC2012/JPEGImages" / f"{n}.jpg", _rgb(rng))
        _save(root / "VOC2012/SegmentationClassAug" / f"{n}.png", lab)
    d = lists / "pascal/fss_list/val"
    d.mkdir(parents=True)
    (d / "data_list_0.txt").write_text("\n".join(names) + "\n")
    (d / "sub_class_file_list_0.txt").write_text(repr(classwise))
    return root, lists, labels


def _check_ways_episode(ds, index: int, ways: int, raw_label) -> None:
    spec = ds.ways_spec(index, ways)
    assert len(spec.class_ids) == len(set(spec.class_ids)) == ways and set(spec.class_ids) <= set(ds.class_ids)
    assert [len(s) for s in spec.supports] == [ds.shots] * ways
    assert all(len(set(s)) == ds.shots and spec.query not in s for s in spec.supports)
    ep = ds.ways_episode(index, ways)
    for c, supports in zip(spec.class_ids, ep.supports):
        assert all(set(np.unique(m)) <= {0, 1} and m.any() and m.shape == im.shape[:2] for im, m in supports), c
    raw = raw_label(spec.query)
    assert (ep.query_label == 1).any()  # the query shows the first class
    for j, c in enumerate(spec.class_ids):
        assert np.array_equal(ep.query_label == j + 1, raw == c + 1)
    assert np.array_equal(ep.query_label == IGNORE, raw == IGNORE)
    others = ~np.isin(raw, [c + 1 for c in spec.class_ids] + [IGNORE])
    assert others.any() and not ep.query_label[others].any()  # other classes (here label 6) are background


def test_pascal_ways_episodes(pascal_ways_root):
    root, lists, labels = pascal_ways_root
    ds = PascalDataset(root, 0, "test", shots=2, seed=42, lists_dir=lists)
    for i in range(15):
        _check_ways_episode(ds, i, 3, labels.__getitem__)
        one = ds.ways_spec(i, 1)  # 1-way = the 1-way episode
        assert (one.class_ids, one.query, one.supports) == (
            (ds.spec(i).class_id,),
            ds.spec(i).query,
            (ds.spec(i).supports,),
        )
        assert ds.ways_spec(i, 3).supports[0] == ds.spec(i).supports
    assert np.array_equal(ds.ways_episode(4, 1).query_label, ds.episode(4).query_mask)
    again = PascalDataset(root, 0, "test", shots=2, seed=42, lists_dir=lists)
    assert [again.ways_spec(i, 4) for i in range(15)] == [ds.ways_spec(i, 4) for i in range(15)]
    other_seed = PascalDataset(root, 0, "test", shots=2, seed=7, lists_dir=lists)
    assert [other_seed.ways_spec(i, 4) for i in range(15)] != [ds.ways_spec(i, 4) for i in range(15)]
    assert {c for i in range(15) for c in ds.ways_spec(i, 2).class_ids[1:]} == set(range(5))  # all classes drawn
    for bad in (0, 6):
        with pytest.raises(ValueError, match="--ways must be 1..5"):
            ds.ways_spec(0, bad)


def test_synthetic_ways_episodes():
    ds = build_dataset("synthetic", None, 2, "test", 2, seed=5)
    raw = ds.read_label
    for i in range(8):
        spec = ds.ways_spec(i, 5)
        assert sorted(spec.class_ids) == ds.class_ids
        ep = ds.ways_episode(i, 5)
        assert (ep.query_label == 1).any() and set(np.unique(ep.query_label)) <= set(range(6))
        for j, c in enumerate(spec.class_ids):
            assert np.array_equal(ep.query_label == j + 1, raw(spec.query) == c + 1)
        assert all(m.any() for s in ep.supports for _, m in s)
    a, b = ds.ways_episode(3, 2), build_dataset("synthetic", None, 2, "test", 2, seed=5).ways_episode(3, 2)
    assert a.spec == b.spec and np.array_equal(a.query_label, b.query_label)


def test_fss_ways_supports_come_from_each_category(tmp_path):
    lists = _fss_tree(tmp_path, "apple\nzebra\n")
    ds = build_dataset("fss", tmp_path, 0, "test", 3, lists_dir=lists)
    spec = ds.ways_spec(13, 2)
    assert spec.class_ids == (761, 760) and spec.query.startswith("zebra/")
    assert all(s.startswith("zebra/") for s in spec.supports[0]) and all(
        s.startswith("apple/") for s in spec.supports[1]
    )
    ep = ds.ways_episode(13, 2)
    assert np.array_equal(ep.query_label, ds.read_label(spec.query)) and set(np.unique(ep.query_label)) == {0, 1}
