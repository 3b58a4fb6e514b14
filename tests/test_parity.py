"""The torch-free runtime against the PyTorch reference episode (sam2's modules in FS-SAM2 order)."""

import numpy as np
import pytest

from fssam2_export.reference import reference_episode
from runtime import FewShotSegmenter


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@pytest.fixture(scope="module")
def segmenter(artifacts):
    return FewShotSegmenter(artifacts, provider="cpu", profile=True)


@pytest.mark.parametrize("k", [1, 5])
def test_runtime_matches_reference_episode(segmenter, tiny_model, episode, record_metric, k):
    got = segmenter.segment(episode.query, segmenter.encode_supports(episode.supports[:k]))
    ref = reference_episode(tiny_model.model, episode.supports[:k], episode.query)
    assert got.mask.shape == ref.mask.shape == got.logits.shape
    iou, err = _iou(got.mask, ref.mask), float(np.abs(got.logits - ref.logits).max())
    record_metric(f"episode IoU K={k}", iou)
    record_metric(f"episode logits max-abs K={k}", err)
    assert iou >= 0.999
    assert err <= 1e-3
    assert abs(got.score - ref.iou_score) <= 1e-4 and abs(got.object_score - ref.object_score) <= 1e-4
    assert 0 < got.mask.sum() < got.mask.size, "a degenerate mask would make the IoU check vacuous"


def test_supports_are_encoded_once_and_reused(segmenter, episode):
    segmenter.clear_timings()
    supports = segmenter.encode_supports(episode.supports[:3])
    first = segmenter.segment(episode.query, supports)
    second = segmenter.segment(episode.query, supports)
    t = segmenter.timings()
    assert t["memory_encoder"].calls == 3  # not re-run per query
    assert t["image_encoder"].calls == 3 + 2
    assert t["memory_attention"].calls == t["mask_decoder"].calls == 2
    np.testing.assert_array_equal(first.logits, second.logits)


def test_more_supports_change_the_prediction(segmenter, episode):
    one = segmenter.encode_supports(episode.supports[:1])
    two = one + segmenter.encode_support(*episode.supports[1])
    assert (one.shots, two.shots) == (1, 2)  # a new set: the one handed out is unchanged
    assert not np.allclose(segmenter.segment(episode.query, one).logits, segmenter.segment(episode.query, two).logits)


def test_official_checkpoint_feeds_export_and_reference_alike(tiny_model, episode, tmp_path):
    """A checkpoint in sam2's format drives both sides: CLI export from it, reference built from it."""
    from calibration.export_cli import main
    from fssam2_export.models import build_model, save_checkpoint

    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(tiny_model.model, ckpt)
    out = tmp_path / "art"
    assert main(["--checkpoint", str(ckpt), "--image-size", "128", "--out", str(out), "--quiet"]) == 0
    seg = FewShotSegmenter(out)
    m = seg.manifest
    assert not m.model.random_init and m.model.seed is None and m.model.checkpoint_sha256
    assert m.preprocess.image_size == 128 and m.episode.tokens_per_support == 64
    got = seg.segment(episode.query, seg.encode_supports(episode.supports[:1]))
    ref = reference_episode(
        build_model("sam2.1_hiera_t", checkpoint=ckpt, image_size=128).model, episode.supports[:1], episode.query
    )
    assert _iou(got.mask, ref.mask) >= 0.999 and np.abs(got.logits - ref.logits).max() <= 1e-3


def test_injected_backend_is_used(artifacts, episode):
    """An injected backend loads each graph told its name, and its graphs run the episode."""
    from runtime import DelegatingGraph
    from runtime.backends import OrtBackend

    class Recording:
        name, provider = "recording", "cpu"

        def __init__(self):
            self.inner, self.loaded, self.runs = OrtBackend("cpu"), {}, []

        def precision_for(self, graph, spec):
            return self.inner.precision_for(graph, spec)

        def load(self, path, spec, graph):
            self.loaded[graph] = path.name
            runs = self.runs

            class Counted(DelegatingGraph):
                def run(self, feeds):
                    runs.append(graph)
                    return self.inner.run(feeds)

            return Counted(self.inner.load(path, spec, graph))

    backend = Recording()
    seg = FewShotSegmenter(artifacts, backend=backend)
    seg.segment(episode.query, seg.encode_supports(episode.supports[:1]))
    assert backend.loaded == {n: g.artifact_for("cpu").file for n, g in seg.manifest.graphs.items()}
    assert {n: g.providers for n, g in seg.graphs.items()} == dict.fromkeys(backend.loaded, ["CPUExecutionProvider"])
    assert backend.runs == ["image_encoder", "memory_encoder", "image_encoder", "memory_attention", "mask_decoder"]
