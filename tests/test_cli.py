"""The two command-line tools, end to end, and export's all-or-nothing writes."""

import numpy as np
import pytest
from PIL import Image

from fssam2_export import cli as export_cli
from fssam2_export import export as export_mod
from runtime import FewShotSegmenter
from runtime import cli as runtime_cli
from runtime.manifest import load_manifest


def test_segment_cli_writes_mask_and_overlay(artifacts, episode, tmp_path, capsys):
    out, ov = tmp_path / "q_mask.png", tmp_path / "sub" / "q_overlay.png"
    args = ["segment", "--artifacts", str(artifacts), "--query", str(episode.query), "--out", str(out),
            "--overlay", str(ov), "--profile"]
    for image, mask in episode.supports[:2]:
        args += ["--support", str(image), str(mask)]
    assert runtime_cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "2-shot" in printed and "memory_attention" in printed and "random-init" in printed
    query = np.asarray(Image.open(episode.query))
    written = np.asarray(Image.open(out))
    assert written.shape == query.shape[:2] and set(np.unique(written)) <= {0, 255}
    seg = FewShotSegmenter(artifacts)
    for image, mask in episode.supports[:2]:
        seg.add_support(image, mask)
    np.testing.assert_array_equal(written > 0, seg.segment(episode.query).mask)
    assert np.asarray(Image.open(ov)).shape == query.shape
    assert not list(tmp_path.glob(".*.png")), "temp files left behind"


def test_cli_errors_are_clean(artifacts, episode, tmp_path, capsys):
    rc = runtime_cli.main(["segment", "--artifacts", str(tmp_path), "--support", str(episode.query), str(episode.query_mask),
                           "--query", str(episode.query), "--out", str(tmp_path / "m.png")])
    assert rc == 2 and "no manifest.json" in capsys.readouterr().err
    rc = runtime_cli.main(["segment", "--artifacts", str(artifacts), "--support", str(episode.query), str(tmp_path / "nope.png"),
                           "--query", str(episode.query), "--out", str(tmp_path / "m.png")])
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
    assert export_cli.main(["--random-init", "--seed", "0", "--precision", "mixed", "--image-size", "128",
                            "--out", str(tmp_path / "x")]) == 2
    assert "--precision mixed needs --module-precision" in capsys.readouterr().err
    assert export_cli.main(["--random-init", "--seed", "0", "--precision", "int8", "--module-precision", "image_encoder=int4",
                            "--image-size", "128", "--out", str(tmp_path / "x")]) == 2
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
        export_cli.main(["--random-init", "--seed", "1", "--image-size", "128", "--out", str(out), "--overwrite", "--quiet"])
    assert load_manifest(out).created == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"], "partial export left behind"
