"""Support sets as values: encoding, combining, the file format and its checks, N-way segmentation."""

import dataclasses
import json
import os
import struct

import numpy as np
import pytest

from runtime import Error, FewShotSegmenter, InputError, MultiClassSegmentation, SupportSet, SupportSetError
from runtime.engine.results import label_map


@pytest.fixture(scope="module")
def sets(seg, episode):
    """Three sets from different supports: (cat, dog, bird) by convention."""
    s = episode.supports
    return seg.encode_supports(s[:2]), seg.encode_supports(s[2:3]), seg.encode_supports(s[3:5])


def test_encode_supports_makes_an_immutable_set(seg, episode, sets):
    cats = sets[0]
    t = seg.manifest.episode.tokens_per_support
    assert cats.shots == len(cats) == 2 and cats.memory.shape == (1, 2 * t, seg.fingerprint.memory_channels)
    assert cats.memory.flags.c_contiguous and cats.memory_pos.flags.c_contiguous
    from PIL import Image

    for (_, mask), size, area in zip(episode.supports[:2], cats.image_sizes, cats.mask_areas):
        m = np.asarray(Image.open(mask)) > 0
        assert tuple(size) == m.shape and area == m.sum() and 0 < area < m.size
    with pytest.raises(ValueError, match="read-only"):
        cats.memory[0, 0, 0] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cats.memory = cats.memory_pos
    with pytest.raises(InputError, match="at least one"):
        seg.encode_supports([])


def test_combining_sets_equals_encoding_together(seg, episode, sets):
    cats, dogs, _ = sets
    both = cats + dogs
    together = seg.encode_supports(episode.supports[:3])
    assert both.shots == 3 and cats.shots == 2  # a new set; the operands are unchanged
    np.testing.assert_array_equal(both.memory, together.memory)
    np.testing.assert_array_equal(both.mask_areas, together.mask_areas)
    other = dataclasses.replace(dogs, fingerprint=dataclasses.replace(dogs.fingerprint, weights="sha256:ab12"))
    with pytest.raises(SupportSetError, match="weights: set 0 random-init:seed=0 != set 1 sha256:ab12"):
        cats + other


def test_save_load_round_trip(seg, sets, tmp_path):
    cats = sets[0]
    path = cats.save(tmp_path / "cats.fssam2")
    back = SupportSet.load(path, seg)
    for name in ("memory", "memory_pos", "image_sizes", "mask_areas"):
        a, b = getattr(back, name), getattr(cats, name)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert back.fingerprint == cats.fingerprint and not back.memory.flags.writeable
    header = json.loads(path.read_bytes()[8 : 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]])
    meta = header["__metadata__"]
    assert meta["format"] == "fssam2-support-set" and meta["format_version"] == "1" and meta["shots"] == "2"
    assert meta["weights"] == "random-init:seed=0" and meta["memory_dtype"] == "float32"
    assert (
        header["memory"]["dtype"] == "F32"
        and header["image_sizes"]["dtype"] == "I32"
        and header["mask_areas"]["dtype"] == "I64"
    )
    assert os.listdir(tmp_path) == ["cats.fssam2"]


def test_save_is_atomic(sets, tmp_path, monkeypatch):
    path = sets[1].save(tmp_path / "s.fssam2")
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        sets[0].save(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["s.fssam2"]  # old file intact, no temp left


def _rewrite(src, dst, **meta_changes):
    """Copy a set file with some metadata values changed (None deletes the key)."""
    raw = src.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    for k, v in meta_changes.items():
        header["__metadata__"].pop(k) if v is None else header["__metadata__"].__setitem__(k, v)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    dst.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])
    return dst


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"weights": "sha256:ab12"}, r"weights: set sha256:ab12 != artifacts random-init:seed=0"),
        (
            {"image_size": "512", "model": "sam2.1_hiera_l"},
            r"model: set sam2.1_hiera_l != artifacts sam2.1_hiera_t; image_size: set 512 != artifacts 256",
        ),
        ({"memory_dtype": "float16"}, r"memory_dtype: set float16 != artifacts float32"),
        ({"format_version": "2"}, r"format version '2'; this runtime reads version 1"),
        ({"format": "other"}, r"not an fssam2 support set"),
        ({"shots": "3"}, r"metadata says 3 shots, the tensors hold 2"),
        ({"weights": None}, r"malformed metadata"),
    ],
)
def test_load_names_what_differs(seg, sets, tmp_path, changes, match):
    good = sets[0].save(tmp_path / "good.fssam2")
    bad = _rewrite(good, tmp_path / "bad.fssam2", **changes)
    with pytest.raises(SupportSetError, match=match):
        SupportSet.load(bad, seg)
    SupportSet.load(good, seg)  # the unchanged file loads


def test_load_refuses_garbage_and_other_channels(seg, sets, tmp_path):
    junk = tmp_path / "junk.fssam2"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(SupportSetError, match="cannot read support set"):
        SupportSet.load(junk, seg)
    with pytest.raises(SupportSetError, match="cannot read"):
        SupportSet.load(tmp_path / "missing.fssam2", seg)
    wide = dataclasses.replace(seg.fingerprint, memory_channels=seg.fingerprint.memory_channels * 2)
    with pytest.raises(SupportSetError, match=r"memory_channels: set 64 != artifacts 128"):
        SupportSet.load(sets[0].save(tmp_path / "s.fssam2"), wide)
    assert issubclass(SupportSetError, Error)


def test_segment_refuses_a_set_of_another_model(seg, episode, sets):
    other = dataclasses.replace(sets[1], fingerprint=dataclasses.replace(sets[1].fingerprint, image_size=512))
    with pytest.raises(
        SupportSetError, match=r"class .dog. was made by another model.*image_size: set 512 != artifacts 256"
    ):
        seg.segment(episode.query, {"cat": sets[0], "dog": other})
    with pytest.raises(InputError, match="mapping of class name"):
        seg.segment(episode.query, [sets[0]])


def test_label_map_rule():
    a = np.array([[2.0, -1.0, 0.5, 1.0]], np.float32)
    b = np.array([[1.0, -3.0, 0.7, 1.0]], np.float32)
    c = np.array([[0.0, -0.5, np.nan, 3.0]], np.float32)
    # highest positive logit wins; all <= 0: background; ties: the class given first
    np.testing.assert_array_equal(label_map([a, b]), [[1, 0, 2, 1]])
    np.testing.assert_array_equal(label_map([b, a]), [[2, 0, 1, 1]])
    np.testing.assert_array_equal(label_map([a, b, c]), [[1, 0, 0, 3]])  # NaN is never a label
    assert label_map([a]).dtype == np.uint8


def test_n_way_equals_n_one_way_runs_with_one_image_encoding(artifacts, episode, sets):
    seen = []
    seg = FewShotSegmenter(artifacts, on_timing=lambda name, ms: seen.append(name))
    names = ("cat", "dog", "bird")
    singles = [seg.segment(episode.query, s) for s in sets]
    seen.clear()
    rs = seg.segment(episode.query, dict(zip(names, sets)))
    assert seen.count("image_encoder") == 1 and seen.count("memory_attention") == 3 and seen.count("query") == 1
    assert isinstance(rs, MultiClassSegmentation) and list(rs) == list(names) and rs.label("bird") == 3
    for name, single in zip(names, singles):
        assert np.array_equal(rs[name].mask, single.mask)
        assert np.abs(rs[name].logits - single.logits).max() <= 1e-5
        assert rs[name].score == pytest.approx(single.score, abs=1e-5)
    # the classes really differ, so a mix-up of sets between classes would be seen above
    assert min(np.abs(singles[i].logits - singles[j].logits).max() for i, j in ((0, 1), (0, 2), (1, 2))) > 1e-3
    stack = np.stack([single.logits for single in singles])
    want = np.where(stack.max(0) > 0, stack.argmax(0) + 1, 0)
    np.testing.assert_array_equal(rs.label_map, want)
    assert rs.label_map.shape == singles[0].mask.shape and len(np.unique(rs.label_map)) >= 2


@pytest.mark.parametrize("backend", ["cpu", "io-binding"])
def test_threads_give_serial_results(artifacts, episode, backend):
    """One segmenter, four threads, the same and different sets, 1-way and N-way, supports encoded meanwhile:
    bit-identical to serial."""
    from cpu_device_backend import BoundCpuBackend
    from thread_checks import assert_threads_match_serial, mixed_jobs

    seg = FewShotSegmenter(artifacts, backend=BoundCpuBackend() if backend == "io-binding" else None)
    assert assert_threads_match_serial(seg, mixed_jobs(seg, episode)) == 12


def test_pickled_set_is_an_equal_immutable_value(seg, sets):
    import pickle

    cats = sets[0]
    copy = pickle.loads(pickle.dumps(cats))
    assert copy is not cats and copy.fingerprint == cats.fingerprint and copy.shots == cats.shots
    for name in ("memory", "memory_pos", "image_sizes", "mask_areas"):
        a = getattr(copy, name)
        assert a.tobytes() == getattr(cats, name).tobytes() and not a.flags.writeable and a.flags.owndata
