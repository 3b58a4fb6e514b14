"""`fssam2 label` on one machine: outputs equal direct segmentation, bad images recorded while the rest
completes, resume after a killed job (nothing redone that was complete, nothing lost), the journal's rules."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from image_fakes import bomb_png, png, truncated
from PIL import Image

from runtime.apps.label import collect_inputs
from runtime.cli import main
from runtime.engine.errors import InputError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def set_files(seg_128, episode, tmp_path_factory):
    d = tmp_path_factory.mktemp("sets")
    cats = seg_128.encode_supports(episode.supports[:2]).save(d / "cats.fssam2")
    dogs = seg_128.encode_supports(episode.supports[2:4]).save(d / "dogs.fssam2")
    return {"cat": cats, "dog": dogs}


def _good_images(episode, rng) -> dict[str, np.ndarray]:
    """Episode images (structured) and noise images of several sizes, by relative path."""
    images = {f"ep/img{i}.png": np.asarray(Image.open(p).convert("RGB")) for i, (p, _) in enumerate(episode.supports)}
    images["ep/query.png"] = np.asarray(Image.open(episode.query).convert("RGB"))
    for i, (h, w) in enumerate([(90, 120), (64, 64), (150, 100)]):
        images[f"noise/n{i}.png"] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return images


@pytest.fixture(scope="module")
def collection(episode, tmp_path_factory):
    """A directory of good images and three bad ones (not an image, truncated, a decompression-bomb header)."""
    root = tmp_path_factory.mktemp("photos")
    good = _good_images(episode, np.random.default_rng(0))
    for rel, rgb in good.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(root / rel)
    bad = {
        "bad/notimage.png": b"this is not an image",
        "bad/truncated.png": truncated(png(good["ep/query.png"])),
        "bad/bomb.png": bomb_png(40000, 40000),
    }
    (root / "bad").mkdir()
    for rel, data in bad.items():
        (root / rel).write_bytes(data)
    return root, good, bad


def _label(args: list[str], capsys) -> tuple[int, str]:
    rc = main(["label", "--quiet", *args])
    out = capsys.readouterr()
    return rc, out.out + out.err


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _modes(out: Path) -> set[int]:
    """The permission bits of every file under `out`."""
    return {q.stat().st_mode & 0o777 for q in out.rglob("*") if q.is_file()}


def _summary(text: str) -> tuple[int, int, int]:
    m = re.search(r"(\d+) done, (\d+) skipped \(complete\), (\d+) failed", text)
    assert m, text
    return tuple(int(g) for g in m.groups())


def test_label_n_classes_equals_direct_segmentation_and_records_bad_images(
    seg_128, set_files, collection, tmp_path, capsys
):
    root, good, bad = collection
    out = tmp_path / "out"
    args = [
        "--artifacts",
        str(seg_128.artifacts_dir),
        "--class",
        f"cat={set_files['cat']}",
        "--class",
        f"dog={set_files['dog']}",
        "--images",
        str(root),
        "--out",
        str(out),
        "--overlay",
        "--table",
        "parquet",
    ]
    rc, text = _label(args, capsys)
    assert rc == 1, text  # some images failed
    assert _summary(text) == (len(good), 0, len(bad))
    from runtime import SupportSet

    sets = {n: SupportSet.load(p) for n, p in set_files.items()}
    records = {r["key"]: r for r in _records(out)}
    assert set(records) == set(good) | set(bad)
    seen_labels = set()
    for rel, rgb in good.items():
        r = records[rel]
        expected = seg_128.segment(rgb, sets)
        with Image.open(out / r["mask"]) as im:
            assert im.mode == "P"
            labels = np.asarray(im)
        np.testing.assert_array_equal(labels, expected.label_map)
        assert (r["status"], r["error"], r["width"], r["height"]) == ("ok", None, rgb.shape[1], rgb.shape[0])
        assert r["fg_area"] == int((labels > 0).sum()) and r["area.dog"] == int((labels == 2).sum())
        assert r["score.cat"] == pytest.approx(expected["cat"].score) and r["object_score.dog"] == pytest.approx(
            expected["dog"].object_score
        )
        assert (out / "overlays" / rel).exists()
        seen_labels |= set(np.unique(labels).tolist())
    assert seen_labels == {0, 1, 2}, "degenerate masks: the comparison would not see a wrong label"
    errors = {rel: records[rel]["error"] for rel in bad}
    assert "not an image" in errors["bad/notimage.png"]
    assert "cannot decode" in errors["bad/truncated.png"]
    assert "pixels" in errors["bad/bomb.png"] and "1600000000" in errors["bad/bomb.png"]
    assert all(records[rel]["status"] == "failed" and records[rel]["mask"] is None for rel in bad)
    import pyarrow.parquet as pq

    assert pq.read_table(out / "results.parquet").to_pylist() == list(records.values())
    assert _modes(out) == {0o644}  # masks, overlays, the tables, job.json: readable by others (umask 022)


def test_one_class_mask_and_pixel_limit(seg_128, set_files, collection, tmp_path, capsys):
    root, good, _ = collection
    out = tmp_path / "out"
    old_umask = os.umask(0o027)
    try:
        rc, text = _label(
            [
                "--artifacts",
                str(seg_128.artifacts_dir),
                "--class",
                f"cat={set_files['cat']}",
                "--images",
                str(root / "noise" / "*.png"),
                "--out",
                str(out),
                "--max-pixels",
                "11000",
            ],
            capsys,
        )
    finally:
        os.umask(old_umask)
    assert rc == 1 and _summary(text) == (2, 0, 1)
    assert _modes(out) == {0o640}  # the umask's mode, not mkstemp's 0600
    records = {r["key"]: r for r in _records(out)}
    assert "15000 pixels, more than the limit of 11000" in records["n2.png"]["error"]
    from runtime import SupportSet

    cats = SupportSet.load(set_files["cat"])
    mask = np.asarray(Image.open(out / "masks" / "n0.png"))
    np.testing.assert_array_equal(mask, seg_128.segment(good["noise/n0.png"], cats).mask.astype(np.uint8) * 255)
    assert 0 < (mask > 0).mean() < 1


class _Poisoned:
    """The real segmenter, except that images of some sizes raise what a backend, memory or a decoder can."""

    def __init__(self, seg, faults: dict[tuple[int, int], Exception]):
        self.seg, self.faults = seg, faults

    def __getattr__(self, name):
        return getattr(self.seg, name)

    def segment(self, rgb, sets):
        if rgb.shape[:2] in self.faults:
            raise self.faults[rgb.shape[:2]]
        return self.seg.segment(rgb, sets)


def test_poison_images_fail_alone(seg_128, set_files, collection, tmp_path, capsys, monkeypatch):
    """Whatever one image raises (ONNX Runtime's own error, a MemoryError on a huge image, a Pillow error outside
    the guard) becomes its failed record with the reason; the others are labelled and the exit code is 1."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail
    from PIL import UnidentifiedImageError

    root, good, bad = collection
    faults = {
        (90, 120): Fail("[ONNXRuntimeError] : 1 : FAIL : bad allocation"),
        (64, 64): MemoryError(),
        (150, 100): UnidentifiedImageError("cannot identify"),
    }
    monkeypatch.setattr("runtime.cli.label.FewShotSegmenter", lambda *a, **k: _Poisoned(seg_128, faults))
    out = tmp_path / "out"
    args = ["--artifacts", str(seg_128.artifacts_dir), "--class", f"cat={set_files['cat']}", "--out", str(out)]
    rc, text = _label([*args, "--images", str(root)], capsys)
    assert rc == 1 and _summary(text) == (len(good) - 3, 0, 3 + len(bad)), text
    records = {r["key"]: r for r in _records(out)}
    assert {k: records[k]["error"] for k in ("noise/n0.png", "noise/n1.png", "noise/n2.png")} == {
        "noise/n0.png": "Fail: [ONNXRuntimeError] : 1 : FAIL : bad allocation",
        "noise/n1.png": "MemoryError: ",
        "noise/n2.png": "UnidentifiedImageError: cannot identify",
    }
    assert all(records[k]["status"] == "ok" for k in good if k.startswith("ep/"))


def test_resume_after_a_killed_job(seg_128, set_files, collection, tmp_path, capsys):
    """A job killed (SIGKILL) mid-way: the table lists only images whose mask exists; the re-run skips those
    (their files untouched) and does the rest; the result equals an uninterrupted run."""
    root, good, _ = collection
    listing = tmp_path / "images.txt"  # 14 images: the good ones twice, under two prefixes
    copies = tmp_path / "copies"
    for prefix in ("a", "b"):
        for rel in good:
            (copies / prefix / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / rel, copies / prefix / rel)
    listing.write_text("\n".join(f"copies/{p}/{rel}" for p in ("a", "b") for rel in good) + "\n# a comment\n")
    out = tmp_path / "out"
    args = [
        "--artifacts",
        str(seg_128.artifacts_dir),
        "--class",
        f"cat={set_files['cat']}",
        "--images",
        str(listing),
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "label", "--quiet", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    journal = out / "results.jsonl"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and journal.read_text().count("\n") >= 3:
                break
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -9, "the job finished before it was killed"
    listed = _records(out)
    assert 3 <= len(listed) < 2 * len(good)
    assert all((out / r["mask"]).exists() for r in listed)  # never a record without its mask
    before = {r["key"]: (out / r["mask"]).stat().st_mtime_ns for r in listed}

    rc, text = _label(args, capsys)
    assert rc == 0, text
    assert _summary(text) == (2 * len(good) - len(listed), len(listed), 0)
    assert all((out / "masks" / Path(k).with_suffix(".png")).stat().st_mtime_ns == t for k, t in before.items())
    records = _records(out)
    assert sorted(r["key"] for r in records) == sorted(f"copies/{p}/{rel}" for p in ("a", "b") for rel in good)
    assert not list(out.glob("masks/**/.*.tmp"))
    from runtime import SupportSet

    cats = SupportSet.load(set_files["cat"])
    for rel, rgb in good.items():
        expected = seg_128.segment(rgb, cats).mask.astype(np.uint8) * 255
        for p in ("a", "b"):
            np.testing.assert_array_equal(
                np.asarray(Image.open(out / "masks" / "copies" / p / Path(rel).with_suffix(".png"))), expected
            )


def test_rerun_redoes_what_is_incomplete_and_refuses_another_job(seg_128, set_files, collection, tmp_path, capsys):
    root, good, _ = collection
    out = tmp_path / "out"
    args = [
        "--artifacts",
        str(seg_128.artifacts_dir),
        "--class",
        f"cat={set_files['cat']}",
        "--images",
        str(root / "ep"),
        "--out",
        str(out),
        "--overlay",
    ]
    assert _label(args, capsys)[0] == 0
    first = _records(out)
    (out / first[0]["mask"]).unlink()  # a mask lost: its image must be redone
    (out / "overlays" / Path(first[1]["key"]).with_suffix(".png")).unlink()  # an overlay lost: redone too
    with open(out / "results.jsonl", "a") as f:
        f.write('{"key": "img9.png", "status": "o')  # a line cut short by a kill
    (out / "masks" / ".img0.png.x.tmp").write_bytes(b"partial")
    rc, text = _label(args, capsys)
    assert rc == 0 and _summary(text) == (2, len(first) - 2, 0)
    records = _records(out)
    assert sorted(r["key"] for r in records) == sorted(r["key"] for r in first)
    assert (out / first[0]["mask"]).exists() and not (out / "masks" / ".img0.png.x.tmp").exists()
    rc, text = _label([*args[:3], f"cat={set_files['dog']}", *args[4:]], capsys)
    assert rc == 2 and "holds the outputs of another job" in text


def test_collect_inputs(tmp_path):
    for rel in ("x/a.png", "x/b.jpg", "y/a.png", "y/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert [i.key for i in collect_inputs(str(tmp_path))] == ["x/a.png", "x/b.jpg", "y/a.png"]
    assert [i.key for i in collect_inputs(str(tmp_path / "*" / "a.png"))] == ["x/a.png", "y/a.png"]
    assert [i.key for i in collect_inputs(str(tmp_path / "**" / "*.jpg"))] == ["x/b.jpg"]  # from the glob's base
    (tmp_path / "list.txt").write_text("x/a.png\n\n# skipped\ny/a.png\n")
    assert [i.path for i in collect_inputs(str(tmp_path / "list.txt"))] == [
        str(tmp_path / "x/a.png"),
        str(tmp_path / "y/a.png"),
    ]
    (tmp_path / "x" / "a.jpg").write_bytes(b"")
    with pytest.raises(InputError, match="would write the same mask a.png"):
        collect_inputs(str(tmp_path / "x"))
    with pytest.raises(InputError, match="no images found"):
        collect_inputs(str(tmp_path / "nothing*"))


def test_keys_stay_when_inputs_are_added(tmp_path):
    """Keys (and so output names) are relative to the --images base, not to the images' common directory: an image
    added from a sibling folder renames nothing; an image outside the base keeps its absolute path as key."""
    for rel in ("photos/x/a.png", "photos/x/b.png", "photos/y/c.png", "elsewhere/d.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    listing = tmp_path / "photos" / "list.txt"
    listing.write_text("x/a.png\nx/b.png\n")
    assert [i.key for i in collect_inputs(str(listing))] == ["x/a.png", "x/b.png"]
    listing.write_text("x/a.png\nx/b.png\ny/c.png\n../elsewhere/d.png\n")
    keys = [i.key for i in collect_inputs(str(listing))]
    assert keys == [(tmp_path / "elsewhere/d.png").as_posix().lstrip("/"), "x/a.png", "x/b.png", "y/c.png"]
    assert [i.key for i in collect_inputs(str(tmp_path / "photos" / "x" / "*.png"))] == ["a.png", "b.png"]
    assert [i.key for i in collect_inputs(str(tmp_path / "photos" / "*" / "*.png"))] == [
        "x/a.png",
        "x/b.png",
        "y/c.png",
    ]


def test_resume_is_keyed_by_content_and_job(seg_128, set_files, collection, tmp_path, capsys):
    """A re-run redoes an image overwritten under the same name (an unreadable one fails and loses its old mask),
    prunes the rows of images no longer listed, and refuses the classes in another order, naming what differs."""
    root, good, _ = collection
    photos = tmp_path / "photos"
    sources = {
        "x/a.png": "noise/n0.png",
        "x/b.png": "noise/n1.png",
        "x/c.png": "ep/img0.png",
        "y/d.png": "ep/query.png",
    }
    for rel, src in sources.items():
        (photos / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / src, photos / rel)
    listing = photos / "list.txt"
    listing.write_text("x/a.png\nx/b.png\nx/c.png\n")
    out = tmp_path / "out"
    classes = ["--class", f"cat={set_files['cat']}", "--class", f"dog={set_files['dog']}"]
    args = ["--artifacts", str(seg_128.artifacts_dir), *classes, "--images", str(listing), "--out", str(out)]
    rc, text = _label([*args, "--table", "parquet"], capsys)
    assert rc == 0 and _summary(text) == (3, 0, 0), text
    job = json.loads((out / "job.json").read_text())
    assert [name for name, _ in job["classes"]] == ["cat", "dog"]
    assert (job["provider"], job["weights"], job["image_size"]) == ("cpu", "random-init:seed=0", 128)
    assert job["graphs"].startswith("sha256:")

    time.sleep(0.01)
    shutil.copy(root / "ep" / "img1.png", photos / "x" / "a.png")  # overwritten: another picture, same name
    (photos / "x" / "b.png").write_bytes(b"overwritten by something that is not an image")
    listing.write_text("x/a.png\nx/b.png\ny/d.png\n")  # x/c.png dropped, y/d.png added from a sibling folder
    rc, text = _label([*args, "--table", "parquet"], capsys)
    assert rc == 1 and _summary(text) == (2, 0, 1), text
    records = {r["key"]: r for r in _records(out)}
    assert sorted(records) == ["x/a.png", "x/b.png", "y/d.png"]  # x/c.png's row pruned, no key moved
    from runtime import SupportSet

    sets = {n: SupportSet.load(p) for n, p in set_files.items()}
    expected = seg_128.segment(good["ep/img1.png"], sets).label_map
    np.testing.assert_array_equal(np.asarray(Image.open(out / records["x/a.png"]["mask"])), expected)
    assert records["x/b.png"]["status"] == "failed" and not (out / "masks" / "x" / "b.png").exists()
    import pyarrow.parquet as pq

    assert pq.read_table(out / "results.parquet").to_pylist() == list(records.values())

    swapped = ["--class", f"dog={set_files['dog']}", "--class", f"cat={set_files['cat']}"]
    rc, text = _label(
        ["--artifacts", str(seg_128.artifacts_dir), *swapped, "--images", str(listing), "--out", str(out)], capsys
    )
    assert rc == 2 and 'holds the outputs of another job (classes: [["cat"' in text, text


def test_journal_refuses_another_provider_and_drops_a_stale_table(tmp_path, seg_128, set_files):
    from runtime import SupportSet
    from runtime.apps.label import Journal, LabelJob, job_description, model_identity

    sets = {"cat": SupportSet.load(set_files["cat"])}
    job = LabelJob(tmp_path, ("cat",))
    model = model_identity(seg_128.manifest, "cpu")
    Journal(job, job_description(sets, False, model), []).close()
    (tmp_path / "results.parquet").write_bytes(b"a table of an earlier run")
    with pytest.raises(InputError, match='provider: "cpu" -> "openvino"'):
        Journal(job, job_description(sets, False, {**model, "provider": "openvino"}), [])
    Journal(job, job_description(sets, False, model), []).close()
    assert not (tmp_path / "results.parquet").exists()  # written again at the end of the run, never stale
