"""The two command-line tools, end to end, and export's all-or-nothing writes."""

import numpy as np
import pytest
from PIL import Image

from calibration import export_cli
from fssam2_export import export as export_mod
from runtime import cli as runtime_cli
from runtime.engine.manifest import load_manifest


def test_segment_cli_writes_mask_and_overlay(artifacts, seg, episode, tmp_path, capsys):
    out, ov = tmp_path / "q_mask.png", tmp_path / "sub" / "q_overlay.png"
    args = [
        "segment",
        "--artifacts",
        str(artifacts),
        "--query",
        str(episode.query),
        "--out",
        str(out),
        "--overlay",
        str(ov),
        "--profile",
    ]
    for image, mask in episode.supports[:2]:
        args += ["--support", str(image), str(mask)]
    assert runtime_cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "2-shot" in printed and "memory_attention" in printed and "random-init" in printed
    query = np.asarray(Image.open(episode.query))
    written = np.asarray(Image.open(out))
    assert written.shape == query.shape[:2] and set(np.unique(written)) <= {0, 255}
    np.testing.assert_array_equal(
        written > 0, seg.segment(episode.query, seg.encode_supports(episode.supports[:2])).mask
    )
    assert np.asarray(Image.open(ov)).shape == query.shape
    assert not list(tmp_path.glob(".*.png")), "temp files left behind"


def test_cli_errors_are_clean(artifacts, episode, tmp_path, capsys):
    rc = runtime_cli.main(
        [
            "segment",
            "--artifacts",
            str(tmp_path),
            "--support",
            str(episode.query),
            str(episode.query_mask),
            "--query",
            str(episode.query),
            "--out",
            str(tmp_path / "m.png"),
        ]
    )
    assert rc == 2 and "no manifest.json" in capsys.readouterr().err
    rc = runtime_cli.main(
        [
            "segment",
            "--artifacts",
            str(artifacts),
            "--support",
            str(episode.query),
            str(tmp_path / "nope.png"),
            "--query",
            str(episode.query),
            "--out",
            str(tmp_path / "m.png"),
        ]
    )
    assert rc == 2 and "cannot read mask" in capsys.readouterr().err
    assert not (tmp_path / "m.png").exists()


def test_info_prints_io_table(artifacts, capsys):
    assert runtime_cli.main(["info", "--artifacts", str(artifacts)]) == 0
    text = capsys.readouterr().out
    assert "num_memory_tokens" in text and "low_res_logits" in text and "random-init" in text


def test_export_refuses_nonempty_dir_and_bad_flags(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("user data")
    assert export_cli.main(["--random-init", "--seed", "0", "--image-size", "128", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "keep.txt").exists()
    with pytest.raises(SystemExit):
        export_cli.main(["--random-init", "--out", str(tmp_path / "x")])  # no --seed
    with pytest.raises(SystemExit):
        export_cli.main(["--seed", "0", "--out", str(tmp_path / "x")])  # no weight source
    assert export_cli.main(["--random-init", "--seed", "0", "--image-size", "100", "--out", str(tmp_path / "x")]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert (
        export_cli.main(
            [
                "--random-init",
                "--seed",
                "0",
                "--precision",
                "mixed",
                "--image-size",
                "128",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "--precision mixed needs --module-precision" in capsys.readouterr().err
    assert (
        export_cli.main(
            [
                "--random-init",
                "--seed",
                "0",
                "--precision",
                "int8",
                "--module-precision",
                "image_encoder=int4",
                "--image-size",
                "128",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "int4" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_failed_export_leaves_old_artifacts_untouched(artifacts, tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "art"
    shutil.copytree(artifacts, out)
    before = load_manifest(out).created

    def boom(path, shapes):
        raise RuntimeError("simulated failure while validating")

    monkeypatch.setattr(export_mod, "simplify_and_validate", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        export_cli.main(
            ["--random-init", "--seed", "1", "--image-size", "128", "--out", str(out), "--overwrite", "--quiet"]
        )
    assert load_manifest(out).created == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"], "partial export left behind"


def test_support_sets_and_n_way_through_the_cli(artifacts, seg, episode, tmp_path, capsys):
    import dataclasses

    from runtime import SupportSet

    s = episode.supports
    cats, dogs = tmp_path / "cats.fssam2", tmp_path / "dogs.fssam2"
    for out, pairs in ((cats, s[:2]), (dogs, s[2:3])):
        args = ["support", "--artifacts", str(artifacts), "--out", str(out)]
        for image, mask in pairs:
            args += ["--support", str(image), str(mask)]
        assert runtime_cli.main(args) == 0
    assert runtime_cli.main(["info", "--support-set", str(cats), "--artifacts", str(artifacts)]) == 0
    text = capsys.readouterr().out
    assert "2 supports" in text and "random-init:seed=0" in text and "usable with these artifacts" in text

    labels, masks, ov = tmp_path / "labels.png", tmp_path / "masks", tmp_path / "ov.png"
    assert (
        runtime_cli.main(
            [
                "segment",
                "--artifacts",
                str(artifacts),
                "--class",
                f"cat={cats}",
                "--class",
                f"dog={dogs}",
                "--query",
                str(episode.query),
                "--out",
                str(labels),
                "--class-masks",
                str(masks),
                "--overlay",
                str(ov),
            ]
        )
        == 0
    )
    want = seg.segment(episode.query, {"cat": seg.encode_supports(s[:2]), "dog": seg.encode_supports(s[2:3])})
    written = Image.open(labels)
    assert written.mode == "P" and written.getpalette()[3:9] == [31, 119, 180, 255, 127, 14]
    np.testing.assert_array_equal(np.asarray(written), want.label_map)
    for name in ("cat", "dog"):
        np.testing.assert_array_equal(np.asarray(Image.open(masks / f"{name}.png")) > 0, want[name].mask)
    query = np.asarray(Image.open(episode.query))
    drawn = np.asarray(Image.open(ov))
    assert drawn.shape == query.shape and (drawn != query).any()
    assert "2-way label map" in capsys.readouterr().out

    one = tmp_path / "one.png"
    assert (
        runtime_cli.main(
            [
                "segment",
                "--artifacts",
                str(artifacts),
                "--support-set",
                str(cats),
                "--query",
                str(episode.query),
                "--out",
                str(one),
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(np.asarray(Image.open(one)) > 0, want["cat"].mask)

    foreign = SupportSet.load(cats)
    foreign = dataclasses.replace(foreign, fingerprint=dataclasses.replace(foreign.fingerprint, weights="sha256:ab12"))
    foreign.save(tmp_path / "foreign.fssam2")
    capsys.readouterr()
    for bad, match in (
        (["--class", f"cat={tmp_path / 'foreign.fssam2'}"], "weights: set sha256:ab12 != artifacts random-init:seed=0"),
        (["--class", "cat"], "NAME=SET"),
        (["--support-set", str(cats), "--class-masks", str(masks)], "--class-masks needs --class"),
    ):
        assert (
            runtime_cli.main(
                [
                    "segment",
                    "--artifacts",
                    str(artifacts),
                    *bad,
                    "--query",
                    str(episode.query),
                    "--out",
                    str(tmp_path / "x.png"),
                ]
            )
            == 2
        )
        assert match in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    assert (
        runtime_cli.main(["info", "--support-set", str(tmp_path / "foreign.fssam2"), "--artifacts", str(artifacts)])
        == 2
    )
