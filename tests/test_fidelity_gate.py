"""The fidelity gate's measures against conversions it must catch: non-finite values, constant shifts that flip
decisions on degenerate references, scalar-head drift, other weights; the refusal to judge degenerate references; the
reference run once per episode for every candidate, and the early stop.

Broken candidates are the FP32 export (random-init tiny at 128x128) with the mask decoder's outputs edited in the
graph (an Add after the output), so every figure comes from real ONNX Runtime runs of the whole pipeline."""

import json
import shutil

import numpy as np
import pytest
from graph_edits import edit_outputs, rerecord

from runtime import cli as runtime_cli
from runtime.engine.manifest import MANIFEST_NAME, load_manifest
from runtime.tools import fidelity
from runtime.tools.synthetic import synthetic_episodes

SIZE = 128
EXPORT = ["--model", "sam2.1_hiera_t", "--random-init", "--seed", "0", "--image-size", str(SIZE), "--quiet"]


@pytest.fixture(scope="module")
def fp32(artifacts_128):
    """The shared 128^2 FP32 export; `_variant` edits copies of it (an edited graph's flavours are dropped)."""
    return artifacts_128


def _variant(
    src, dst, add: dict[str, np.ndarray | float], precision: str = "fp16", scale: dict[str, float] | None = None
):
    """Copy of the artifacts `src` whose mask decoder's outputs are edited by `edit_outputs`, labelled `precision`."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".*_cache"))  # not the shared export's caches
    edit_outputs(dst / "mask_decoder.onnx", add, scale)
    rerecord(dst, "mask_decoder", precision=precision)
    manifest = json.loads((dst / MANIFEST_NAME).read_text())
    manifest["precision"] = precision
    (dst / MANIFEST_NAME).write_text(json.dumps(manifest))
    return dst


def _check(candidate, reference, *extra):
    return runtime_cli.main(
        ["check", "--artifacts", str(candidate), "--reference", str(reference), "--episodes", "3", *extra]
    )


def test_correct_conversion_passes_on_judgeable_masks(fp32, tmp_path, capsys):
    same = _variant(fp32, tmp_path / "same", {"low_res_logits": 0.0})
    assert _check(same, fp32, "--json", str(tmp_path / "r.json")) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["verdict"] == "pass" and report["degenerate_episodes"] == 0, "the pass must not be vacuous"
    assert all(0.01 <= e["reference_foreground"] <= 0.99 for e in report["per_episode"])
    assert "PASS" in capsys.readouterr().out


def test_partial_nan_and_inf_fail_and_are_named(fp32, tmp_path, capsys):
    """A few non-finite pixels (a local FP16 overflow) in every episode: correlation and IoU alone let them through."""
    bad = np.zeros((1, 1, SIZE // 4, SIZE // 4), np.float32)
    bad[0, 0, 3, 5], bad[0, 0, 10, 20] = np.nan, np.inf
    broken = _variant(fp32, tmp_path / "nan", {"low_res_logits": bad})
    assert _check(broken, fp32, "--json", str(tmp_path / "r.json")) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "non-finite values in mask_decoder low_res_logits" in out
    assert "worst graph mask_decoder (low_res_logits, non-finite values)" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["graphs"]["mask_decoder"]["low_res_logits"]["nonfinite"] == 2 * report["episodes"]
    assert report["nonfinite_logits"] > 0
    assert not any(
        isinstance(v, float) and np.isnan(v) for v in report["graphs"]["mask_decoder"]["low_res_logits"].values()
    )


def test_nan_first_episode_cannot_pass_a_min():
    """min() over episodes must not depend on where the NaN is: the metrics never return NaN."""
    ref = np.linspace(-1, 1, 64).reshape(8, 8)
    got = ref.copy()
    got[0, 0] = np.nan
    assert fidelity.pearson(got, ref) == pytest.approx(1.0) and fidelity.nonfinite(got, ref) == 1
    assert fidelity.sign_agreement(got, ref) == pytest.approx(63 / 64)
    stats = fidelity.OutputFidelity()
    stats.update(got, ref)
    assert stats.nonfinite == 1 and not np.isnan([stats.cosine, stats.pearson, stats.rel_max_error]).any()


def test_constant_shift_flipping_degenerate_masks_fails_and_correct_one_is_refused(fp32, tmp_path, capsys):
    """Every reference mask full (logits + 1000): a conversion that shifts the logits by -2000 flips every decision
    while Pearson stays 1 and the IoU has nothing to judge; a faithful one cannot be judged and is refused (exit 2)."""
    full = _variant(fp32, tmp_path / "full", {"low_res_logits": 1000.0}, precision="fp32")
    flipped = _variant(full, tmp_path / "flipped", {"low_res_logits": -2000.0})
    assert _check(flipped, full, "--json", str(tmp_path / "r.json")) == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["degenerate_episodes"] == report["episodes"] and report["min_logits_pearson"] > 0.999
    assert report["min_sign_agreement"] == 0.0 and "min sign agreement" in capsys.readouterr().out

    faithful = _variant(full, tmp_path / "faithful", {"low_res_logits": 0.0})
    assert _check(faithful, full) == 2
    out = capsys.readouterr().out
    assert "REFUSED" in out and "judgeable" in out and "--calib-dataset" in out and "--episodes" in out


def test_scalar_head_drift_fails(fp32, tmp_path, capsys):
    drift = _variant(fp32, tmp_path / "iou", {"iou_score": 0.5})
    assert _check(drift, fp32) == 1
    assert "max iou_score error" in capsys.readouterr().out
    flipped = _variant(fp32, tmp_path / "obj", {"object_score_logits": 0.0}, scale={"object_score_logits": -1.0})
    assert _check(flipped, fp32) == 1
    out = capsys.readouterr().out
    assert "object presence decided differently in" in out and "max object_score error" in out


def test_other_weights_are_not_the_same_model(fp32, tmp_path, capsys):
    other = _variant(fp32, tmp_path / "seed1", {"low_res_logits": 0.0})
    manifest = json.loads((other / MANIFEST_NAME).read_text())
    manifest["model"]["seed"] = 1
    (other / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert _check(other, fp32) == 2
    err = capsys.readouterr().err
    assert "not the same model" in err and "weights random-init seed 1 vs random-init seed 0" in err
    with pytest.raises(fidelity.FidelityError, match="checkpoint sha256"):
        ckpt = load_manifest(fp32, verify_files=False)
        other_ckpt = type(ckpt.model)(
            **(ckpt.model.__dict__ | {"random_init": False, "seed": None, "checkpoint_sha256": "ab" * 32})
        )
        fidelity.check_comparable(ckpt, type(ckpt)(**(ckpt.__dict__ | {"model": other_ckpt})))


def test_reference_runs_once_per_episode_for_all_candidates_and_stops_early(fp32, tmp_path, monkeypatch):
    same = _variant(fp32, tmp_path / "same", {"low_res_logits": 0.0})
    shifted = _variant(fp32, tmp_path / "shift", {"low_res_logits": -40.0})
    runs: list[str] = []
    real = fidelity.run_episode
    monkeypatch.setattr(fidelity, "run_episode", lambda seg, ep: runs.append(str(seg.artifacts_dir)) or real(seg, ep))
    episodes = synthetic_episodes(3, 0, (1, 2), SIZE)
    thresholds = fidelity.GateThresholds.for_precision("fp16")
    seconds: dict[str, float] = {}
    reports = fidelity.compare_candidates(
        {"a": (same, None), "b": (same, None)}, fp32, episodes, thresholds=thresholds, seconds=seconds
    )
    assert runs.count(str(fp32)) == 3 and runs.count(str(same)) == 6
    assert {k: len(r.episodes) for k, r in reports.items()} == {"a": 3, "b": 3} and reports["a"].passed
    assert seconds.keys() == {"reference", "a", "b"}
    runs.clear()
    reports = fidelity.compare_candidates(
        {"ok": (same, None), "bad": (shifted, None)}, fp32, episodes, thresholds=thresholds, stop_early=True
    )
    assert runs.count(str(fp32)) == 1, "a failure certain after one episode stops the gate"
    assert reports["bad"].verdict().status == "fail" and reports["bad"].planned_episodes == 3
    assert "stopped early" in reports["bad"].table()


def test_isolated_runs_on_the_first_episodes_only_still_count_every_nonfinite_value(fp32, tmp_path):
    """`isolated_episodes` limits the per-graph runs on the reference's feeds; the non-finite values of the candidate's
    own calls in the other episodes are still counted and named, so the verdict does not depend on the limit."""
    bad = np.zeros((1, 1, SIZE // 4, SIZE // 4), np.float32)
    bad[0, 0, 3, 5] = np.nan
    broken = _variant(fp32, tmp_path / "nan", {"low_res_logits": bad})
    # a small upstream drift: the decoder's feeds differ from FP32's
    edit_outputs(broken / "memory_encoder.onnx", {"memory": 1e-3})
    rerecord(broken, "memory_encoder")
    episodes = synthetic_episodes(3, 0, (1, 2), SIZE)
    thresholds = fidelity.GateThresholds.for_precision("fp16")
    full, limited, none = (
        fidelity.compare_candidates({"c": (broken, None)}, fp32, episodes, thresholds=thresholds, isolated_episodes=n)[
            "c"
        ]
        for n in (None, 1, 0)
    )
    calls = {
        n: r.graphs["mask_decoder"]["low_res_logits"].calls for n, r in (("all", full), ("1", limited), ("0", none))
    }
    assert calls == {"all": 3, "1": 1, "0": 0}
    assert full.graphs["image_encoder"]["image_embed"].calls == none.graphs["image_encoder"]["image_embed"].calls > 3
    for report in (full, limited, none):
        assert report.nonfinite_outputs == [("mask_decoder", "low_res_logits", 3)]
        assert report.verdict().status == "fail"


def test_export_gate_exit_codes(fp32, tmp_path, monkeypatch, capsys):
    """fssam2-export: 1 for a broken conversion, 2 when the gate cannot judge, 0 for a faithful one (with phase times)."""
    import calibration.pipeline as pipeline
    from calibration.export_cli import main

    args = EXPORT + [
        "--precision",
        "mixed",
        "--module-precision",
        "mask_decoder=fp16",
        "--calib-episodes",
        "1",
        "--gate-episodes",
        "2",
        "--no-ort-optimize",
    ]
    assert main(args + ["--out", str(tmp_path / "ok")]) == 0
    out = capsys.readouterr().out
    assert "time per phase:" in out and "gate reference" in out and "gate standard" in out and "calibration" in out

    assert main(args + ["--out", str(tmp_path / "refused"), "--gate-min-judgeable", "3"]) == 2
    assert "refused to judge" in capsys.readouterr().err and not (tmp_path / "refused").exists()

    real = pipeline.convert_fp16

    def shifted(src, dst, *a, **kw):  # a conversion that moves every logit by a constant
        model = real(src, dst, *a, **kw)
        edit_outputs(dst, {"low_res_logits": -40.0})
        return model

    monkeypatch.setattr(pipeline, "convert_fp16", shifted)
    assert main(args + ["--out", str(tmp_path / "broken")]) == 1
    err = capsys.readouterr().err
    assert "fidelity gate failed" in err and "min sign agreement" in err and not (tmp_path / "broken").exists()
