"""Full-size (1024^2) export + K=1 parity for the tiny model. Marked slow: a few minutes on 2 cores."""

import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_tiny_1024_export_and_parity(tmp_path, episode, record_metric):
    from fssam2_export.export import export_artifacts
    from fssam2_export.models import build_model
    from fssam2_export.reference import reference_episode
    from runtime import FewShotSegmenter

    loaded = build_model("sam2.1_hiera_t", random_init=True, seed=0, image_size=1024)
    t0 = time.perf_counter()
    report = export_artifacts(loaded, tmp_path / "art1024", progress=False)
    record_metric("export seconds tiny 1024", time.perf_counter() - t0)
    assert report.manifest.episode.tokens_per_support == 64 * 64

    seg = FewShotSegmenter(report.out_dir)
    got = seg.segment(episode.query, seg.encode_supports(episode.supports[:1]))
    ref = reference_episode(loaded.model, episode.supports[:1], episode.query)
    iou = np.logical_and(got.mask, ref.mask).sum() / max(np.logical_or(got.mask, ref.mask).sum(), 1)
    err = float(np.abs(got.logits - ref.logits).max())
    record_metric("episode IoU K=1 @1024", iou)
    record_metric("episode logits max-abs K=1 @1024", err)
    assert iou >= 0.999 and err <= 1e-3
