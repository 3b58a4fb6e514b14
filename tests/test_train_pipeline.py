"""The whole training stage through `fssam2-train` on synthetic data with a random-init tiny model at 64^2:
fit (+ exact resume), eval of the run, merge into an official checkpoint, sam2's own loader, export from it,
and eval of the exported artifacts through the runtime on the same episodes."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fssam2_export.models import build_model, hydra_overrides
from fssam2_export.reference import reference_episode
from runtime.engine.manifest import load_manifest
from training.cli import main
from training.datasets import build_dataset
from training.evaluate import EvalReport
from training.run import load_run_model

SIZE = 64
FIT = [
    "fit",
    "--dataset",
    "synthetic",
    "--model",
    "sam2.1_hiera_t",
    "--random-init",
    "--image-size",
    str(SIZE),
    "--batch-size",
    "1",
    "--steps",
    "4",
    "--val-every",
    "2",
    "--val-episodes",
    "3",
    "--lr",
    "1e-3",
    "--workers",
    "0",
    "--quiet",
]
EVAL = ["eval", "--dataset", "synthetic", "--fold", "0", "--shots", "2", "--episodes", "6", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "demo"
    assert main(FIT + ["--out", str(out)]) == 0
    return out


def _adapters(run_dir, which="last"):
    d = run_dir / which / "adapters"
    return {m.name: load_file(m / "adapter_model.safetensors") for m in sorted(d.iterdir())}


def test_fit_writes_run_log_and_adapters(run):
    events = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train = [e for e in events if e["event"] == "train"]
    val = [e for e in events if e["event"] == "val"]
    assert [e["step"] for e in train] == [1, 2, 3, 4] and [e["step"] for e in val] == [2, 4]
    assert train[0]["lr"] == pytest.approx(1e-3) and train[-1]["lr"] < train[0]["lr"]  # cosine per step
    assert all(np.isfinite(e["loss"]) for e in train) and events[-1]["event"] == "end"
    assert events[0]["trainable"]["sam_mask_decoder"] == 0 and events[0]["trainable"]["memory_encoder"] > 0
    assert set(_adapters(run)) == {"image_encoder", "memory_attention", "memory_encoder"}
    best = json.loads((run / "best" / "state.json").read_text())
    assert best["val_miou"] == max(e["miou"] for e in val)
    assert main(FIT + ["--out", str(run)]) == 2  # an existing run is not overwritten


def test_resume_continues_exactly(run, tmp_path):
    out = tmp_path / "resumed"
    assert main(FIT + ["--out", str(out), "--stop-after", "2"]) == 0
    assert json.loads((out / "last" / "state.json").read_text())["step"] == 2
    assert main(["fit", "--resume", "--out", str(out), "--quiet"]) == 0
    a, b = _adapters(run), _adapters(out)
    for module in a:
        for key in a[module]:
            assert torch.equal(a[module][key], b[module][key]), (module, key)


def test_merge_eval_export_eval(run, tmp_path, record_metric):
    from sam2.build_sam import build_sam2

    from calibration.export_cli import main as export_main

    ckpt = tmp_path / "fssam2_demo.pt"
    assert main(["merge", "--run", str(run), "--out", str(ckpt)]) == 0
    record = json.loads((tmp_path / "fssam2_demo.pt.fssam2.json").read_text())
    assert record["base"]["random_init"] and set(record["adapters"]) == {
        "image_encoder",
        "memory_attention",
        "memory_encoder",
    }
    assert record["adapters"]["memory_attention"]["config"]["r"] == 32 and len(record["checkpoint_sha256"]) == 64

    base = build_model("sam2.1_hiera_t", random_init=True, seed=0, image_size=SIZE).model
    merged_sd = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
    assert set(merged_sd) == set(base.state_dict())
    sam2_loaded = build_sam2(
        "configs/sam2.1/sam2.1_hiera_t.yaml", str(ckpt), device="cpu", hydra_overrides_extra=hydra_overrides(SIZE)
    )
    assert torch.equal(
        sam2_loaded.state_dict()["memory_encoder.out_proj.weight"], merged_sd["memory_encoder.out_proj.weight"]
    )

    loaded = build_model("sam2.1_hiera_t", checkpoint=ckpt, image_size=SIZE)
    assert loaded.source.training_record["checkpoint_sha256"] == loaded.source.checkpoint_sha256
    peft_model = load_run_model(run)
    ds_episode = build_dataset("synthetic", None, 0, "test", 2).episode(0)
    supports = ds_episode.supports
    with_adapters = reference_episode(peft_model, supports, ds_episode.query).logits
    merged = reference_episode(loaded.model, supports, ds_episode.query).logits
    plain = reference_episode(base, supports, ds_episode.query).logits
    err = float(np.abs(merged - with_adapters).max())
    record_metric("merged vs peft run logits max-abs", err)
    assert err <= 1e-5 and np.abs(with_adapters - plain).max() > 1e-4

    art = tmp_path / "artifacts"
    assert (
        export_main(
            [
                "--model",
                "sam2.1_hiera_t",
                "--checkpoint",
                str(ckpt),
                "--image-size",
                str(SIZE),
                "--out",
                str(art),
                "--quiet",
            ]
        )
        == 0
    )
    assert load_manifest(art).model.training == record  # the adapters' record travels into the export manifest
    torch_report, runtime_report = tmp_path / "torch.json", tmp_path / "runtime.json"
    assert main(EVAL + ["--run", str(run), "--out", str(torch_report)]) == 0
    assert main(EVAL + ["--artifacts", str(art), "--out", str(runtime_report)]) == 0
    t = EvalReport.from_json(torch_report.read_text())
    r = EvalReport.from_json(runtime_report.read_text())
    assert [(e.query, e.supports) for e in t.episodes] == [(e.query, e.supports) for e in r.episodes]
    assert len(t.episodes) == 6 and t.source["kind"] == "torch" and r.source["kind"] == "runtime"
    assert all(
        len(e.iou) == 1 and e.class_ids == [build_dataset("synthetic", None, 0, "test", 2).spec(e.index).class_id]
        for e in t.episodes
    )  # the default 1-way report: one class per episode, the 1-way episodes
    diffs = [abs(a.iou[0] - b.iou[0]) for a, b in zip(t.episodes, r.episodes)]
    record_metric("eval per-episode IoU |torch - runtime| max", max(diffs))
    assert max(diffs) <= 5e-3 and abs(t.miou - r.miou) <= 5e-3
    assert any(0 < e.iou[0] < 1 for e in t.episodes), "degenerate predictions would make the comparison vacuous"


def test_a_crash_while_saving_keeps_the_resume_state(run, tmp_path, monkeypatch):
    """A crash between the two renames of `last/` (old aside, new in) loses nothing: the resume finds the aside
    copy and continues exactly (the delete-then-rename it replaces lost `last/` here)."""
    out = tmp_path / "crashed"
    assert main(FIT + ["--out", str(out), "--stop-after", "2"]) == 0
    rename = Path.rename

    def crash_before_the_new_copy(self, target):
        if self.name == ".last.tmp":
            raise KeyboardInterrupt("killed while saving")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", crash_before_the_new_copy)
    with pytest.raises(KeyboardInterrupt):
        main(["fit", "--resume", "--out", str(out), "--quiet", "--stop-after", "1"])
    monkeypatch.undo()
    assert not (out / "last").exists()
    assert json.loads((out / ".last.old" / "state.json").read_text())["step"] == 2
    assert main(["fit", "--resume", "--out", str(out), "--quiet"]) == 0
    assert not (out / ".last.old").exists()
    a, b = _adapters(run), _adapters(out)
    assert a.keys() == b.keys() and all(torch.equal(a[m][k], b[m][k]) for m in a for k in a[m])
