"""N-way evaluation (`fssam2-train eval --ways N`) of a random-init tiny model at 64^2 on synthetic episodes:
the PyTorch N-way forward (query encoded once) equals N 1-way episodes, and the PyTorch model and its exported
artifacts through the runtime agree episode by episode and pixel by pixel on the label map."""

import numpy as np
import pytest
import torch
from conftest import _export as export_at

from fssam2_export.models import build_model
from fssam2_export.reference import episode_forward, reference_episode, reference_ways
from training.cli import main
from training.datasets import build_dataset
from training.evaluate import EvalReport, runtime_predictor, torch_predictor

SIZE, WAYS = 64, 3
EVAL = [
    "eval",
    "--dataset",
    "synthetic",
    "--fold",
    "0",
    "--shots",
    "1",
    "--episodes",
    "3",
    "--ways",
    str(WAYS),
    "--quiet",
]


@pytest.fixture(scope="module")
def model():
    return build_model("sam2.1_hiera_t", random_init=True, seed=0, image_size=SIZE).model


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return export_at(tmp_path_factory, SIZE)


def test_reference_ways_equals_one_episode_per_class(model, record_metric):
    ep = build_dataset("synthetic", None, 0, "test", 2).ways_episode(0, WAYS)
    ways = reference_ways(model, ep.supports, ep.query)
    singles = [reference_episode(model, supports, ep.query) for supports in ep.supports]
    err = max(float(np.abs(w.logits - s.logits).max()) for w, s in zip(ways, singles))
    record_metric("N-way torch forward vs N 1-way episodes, logits max-abs", err)
    assert err <= 1e-5
    assert all(abs(w.object_score - s.object_score) <= 1e-5 for w, s in zip(ways, singles))
    assert np.abs(ways[0].logits - ways[1].logits).max() > 1e-3  # the classes' supports matter
    with pytest.raises(ValueError, match="same number of supports"):
        reference_ways(model, [ep.supports[0], ep.supports[1][:1]], ep.query)
    x = torch.zeros(3, 2, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="2 queries for 3 episodes"):
        episode_forward(model, x, torch.ones(3, 2, SIZE, SIZE), torch.zeros(2, 3, SIZE, SIZE))


def test_torch_and_artifacts_label_maps_agree(model, art):
    ds = build_dataset("synthetic", None, 0, "test", 1)
    ep = ds.ways_episode(1, WAYS)
    t, r = torch_predictor(model)(ep), runtime_predictor(art)(ep)
    assert t.shape == r.shape == ep.query_label.shape and set(np.unique(t)) == set(range(WAYS + 1))  # not degenerate
    assert (t == r).mean() >= 0.999
    ep.supports.reverse()  # the same classes named in the opposite order: the labels are renamed
    assert (torch_predictor(model)(ep) == np.where(t > 0, WAYS + 1 - t, 0)).mean() >= 0.999
    assert (t[:, ::-1] == r).mean() < 0.9  # a mirrored label map would not pass the agreement above


def test_torch_and_artifacts_ways_eval_agree(art, tmp_path, record_metric):
    torch_out, runtime_out = tmp_path / "torch.json", tmp_path / "runtime.json"
    assert (
        main(
            EVAL
            + [
                "--base",
                "--model",
                "sam2.1_hiera_t",
                "--random-init",
                "--init-seed",
                "0",
                "--image-size",
                str(SIZE),
                "--out",
                str(torch_out),
            ]
        )
        == 0
    )
    assert main(EVAL + ["--artifacts", str(art), "--out", str(runtime_out)]) == 0
    t, r = EvalReport.from_json(torch_out.read_text()), EvalReport.from_json(runtime_out.read_text())
    assert t.ways == r.ways == WAYS and len(t.episodes) == 3
    assert [(e.class_ids, e.query, e.supports) for e in t.episodes] == [
        (e.class_ids, e.query, e.supports) for e in r.episodes
    ]
    assert all(len(set(e.class_ids)) == WAYS and len(e.iou) == WAYS for e in t.episodes)
    pairs = [(a, b) for x, y in zip(t.episodes, r.episodes) for a, b in zip(x.iou, y.iou)]
    assert all((a is None) == (b is None) for a, b in pairs)
    diff = max(abs(a - b) for a, b in pairs if a is not None)
    record_metric("N-way eval per-episode per-class IoU |torch - runtime| max", diff)
    assert diff <= 5e-3 and abs(t.miou - r.miou) <= 5e-3 and abs(t.fbiou - r.fbiou) <= 5e-3
    assert any(0 < a < 1 for a, _ in pairs), "degenerate predictions would make the comparison vacuous"
    assert set(t.per_class_iou) == {c for e in t.episodes for c in e.class_ids}


def test_cli_rejects_more_ways_than_classes(tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = EVAL + ["--base", "--model", "sam2.1_hiera_t", "--random-init", "--image-size", str(SIZE), "--out", str(out)]
    argv[argv.index("--ways") + 1] = "6"  # synthetic fold 0 has 5 test classes
    assert main(argv) == 2 and "--ways must be 1..5" in capsys.readouterr().err and not out.exists()
