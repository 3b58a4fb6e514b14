"""The shipped learned model (models/fssam2-shapes-t128): it loads strictly, exports at its size, segments held-out
episodes of the classes it never saw in training, and agrees with PyTorch; the demo's episode through the `fssam2`
command. No test retrains it; a random-init model is what the other tests use."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from calibration.export_cli import main as export_main
from fssam2_export.models import build_model
from fssam2_export.reference import reference_episode
from runtime import FewShotSegmenter
from runtime.cli import main as cli_main
from runtime.tools import shapes

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "fssam2-shapes-t128" / "model.safetensors"
SIZE = 128
MEAN_FLOOR = 0.38  # mean IoU over the five novel classes' 2-shot held-out episodes (measured 0.437, model card)
EACH_FLOOR = 0.3  # every one of them (measured min 0.373); an offset copy of the truth scores <= 0.12


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shipped") / "artifacts"
    args = ["--model", "sam2.1_hiera_t", "--checkpoint", str(MODEL), "--image-size", str(SIZE), "--quiet"]
    assert export_main([*args, "--out", str(out)]) == 0
    return out


def test_weights_load_strictly_with_their_record():
    assert MODEL.stat().st_size < 85e6, "the shipped weights are fp16, well under ~80 MB"
    loaded = build_model("sam2.1_hiera_t", checkpoint=MODEL, image_size=SIZE)  # missing / extra keys raise
    record = loaded.source.training_record
    assert record and record["dtype"] == "fp16" and record["checkpoint_sha256"] == loaded.source.checkpoint_sha256
    assert record["adapters"], "the shipped model is the LoRA meta-trained one, merged"
    assert not loaded.source.stability_fallback  # docs/precision.md#learned-weights
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}  # widened on load


def test_segments_novel_classes(shipped):
    seg = FewShotSegmenter(shipped)
    assert not seg.manifest.model.random_init and seg.manifest.model.stability_fallback is False
    ious = []
    for c in shapes.test_classes(0):
        supports, query, truth = shapes.held_out_episode(0, 2, c)
        mask = seg.segment(query, seg.encode_supports(supports)).mask
        assert 0.005 < mask.mean() < 0.5, f"class {c}: a degenerate mask ({mask.mean():.1%} foreground)"
        ious.append(iou(mask, truth.astype(bool)))
        h, w = truth.shape  # the measure sees an offset and a flip of the same mask
        assert iou(mask, np.roll(truth, w // 3, axis=1).astype(bool)) < EACH_FLOOR
        assert iou(mask, truth[::-1, ::-1].astype(bool)) < EACH_FLOOR
    assert min(ious) > EACH_FLOOR and np.mean(ious) > MEAN_FLOOR, ious


def test_runtime_agrees_with_pytorch(shipped):
    """The export keeps the model's decoder setting (no stability fallback): same logits as sam2's modules."""
    sam = build_model("sam2.1_hiera_t", checkpoint=MODEL, image_size=SIZE).model
    seg = FewShotSegmenter(shipped)
    for c in shapes.test_classes(0)[:3]:
        supports, query, _ = shapes.held_out_episode(0, 1, c)
        ref = reference_episode(sam, supports, query).logits
        got = seg.segment(query, seg.encode_supports(supports)).logits
        assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.999
        assert ((ref > 0) == (got > 0)).mean() > 0.995


def test_demo_episode_through_the_cli(shipped, tmp_path, capsys):
    ep = shapes.write_episode(tmp_path, shots=2)
    args = ["segment", "--artifacts", str(shipped), "--query", str(ep.query), "--truth", str(ep.query_mask)]
    for image, mask in ep.supports:
        args += ["--support", str(image), str(mask)]
    assert cli_main([*args, "--out", str(tmp_path / "pred.png")]) == 0
    printed = capsys.readouterr().out
    assert "random-init" not in printed
    found = re.search(r"IoU with \S+: ([0-9.]+)", printed)
    assert found and float(found.group(1)) > MEAN_FLOOR, printed
