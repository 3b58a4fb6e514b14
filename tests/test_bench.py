"""`fssam2 bench` (runtime, torch-free) and the PyTorch comparison, at a small size."""

import json

import numpy as np
import pytest

from runtime import FewShotSegmenter
from runtime.cli import main as fssam2
from runtime.tools.bench import PhaseRecorder, Stats, memory_attention_gflop
from runtime.tools.fidelity import JUDGEABLE_FOREGROUND

BENCH = ["--shots", "1", "2", "--queries", "2", "--warmup", "1", "--supports", "2", "--input-size", "96x64", "--quiet"]
MODULES = {"preprocess", "image_encoder", "memory_attention", "mask_decoder", "postprocess", "total", "glue"}


def test_stats_and_flop_count():
    s = Stats.of([4.0, 1.0, 3.0, 2.0])
    assert (s.n, s.min, s.p50, s.mean) == (4, 1.0, 2.5, 2.5) and s.p50 <= s.p90 <= s.p99 <= 4.0
    # SAM2 @1024, K=1: attention matmuls alone are 4 layers x 2 x (2 x 2 x 4096^2 x 256) = 137 GFLOP
    assert 137 < memory_attention_gflop(64, 256, 64, 4096) < 200
    assert memory_attention_gflop(64, 256, 64, 5 * 4096) - memory_attention_gflop(64, 256, 64, 4096) == pytest.approx(
        4 * 2 * 4096 * 4 * 4096 * (256 + 64) / 1e9, rel=0.05
    )


def test_timing_hook_sees_every_module_and_phase(artifacts, episode):
    seen = []
    seg = FewShotSegmenter(artifacts, on_timing=lambda name, ms: seen.append(name))
    seg.segment(episode.query, seg.encode_supports(episode.supports[:1]))
    assert seen[:8] == [
        f"{kind}:{g}"
        for g in ("image_encoder", "memory_encoder", "memory_attention", "mask_decoder")
        for kind in ("verify", "load")
    ]
    assert seen[8:] == [
        "preprocess",
        "image_encoder",
        "memory_encoder",
        "support",
        "preprocess",
        "image_encoder",
        "memory_attention",
        "mask_decoder",
        "postprocess",
        "query",
    ]
    assert seg.timings() == {}  # aggregates only with profile=True


def test_recorder_computes_glue_per_call():
    rec = PhaseRecorder()
    rec.phase = "query"
    for name, ms in [("image_encoder", 5.0), ("mask_decoder", 3.0), ("query", 8.5)]:
        rec(name, ms)
    q = rec.take("query")
    assert q["glue"] == [pytest.approx(0.5)] and q["total"] == [8.5] and q["image_encoder"] == [5.0]


def test_bench_cli_writes_versioned_report_and_plot(artifacts, tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    plot = ["--plot", str(png)] if _has_matplotlib() else []
    assert fssam2(["bench", "--artifacts", str(artifacts), "--out", str(out), *plot, *BENCH]) == 0
    report = json.loads(out.read_text())
    assert report["schema"] == "fssam2-bench/1"
    env = report["environment"]
    assert env["cpu"]["model"] and env["cpu"]["logical_cores"] >= 1 and env["onnxruntime"]
    (run,) = report["runs"]
    assert run["error"] is None and run["precision"] == "fp32" and run["image_size"] == 256
    assert set(run["providers_used"]["memory_attention"]) == {"CPUExecutionProvider"}
    assert run["files"]["memory_attention"] == "memory_attention.mha.onnx"  # the fused flavour ran
    assert set(run["cache"].values()) == {"hit"}  # warm load after the first
    assert set(run["load_ms"]) == {"first", "warm"} and run["load_ms"]["warm"]["total"] > 0
    assert {"preprocess", "image_encoder", "memory_encoder", "total", "glue"} <= set(run["support"])
    assert [k["shots"] for k in run["shots"]] == [1, 2]
    for k in run["shots"]:
        assert set(k["query"]) == MODULES and k["query"]["total"]["n"] == 2
        assert (
            k["queries_per_s"] > 0
            and 0 <= k["glue_fraction"] < 1
            and k["memory_attention_gflops"] > 0
            and k["peak_rss_mb"] > 0
        )
        q = k["query"]
        assert q["total"]["min"] >= q["image_encoder"]["min"]
    assert [w["classes"] for w in run["ways"]] == [1, 3]
    for w in run["ways"]:
        assert w["n_way"]["n"] == w["separate"]["n"] == 2 and w["ratio_p50"] == pytest.approx(
            w["n_way"]["p50"] / w["separate"]["p50"]
        )
    table = capsys.readouterr().out
    assert "queries/s" in table and "memory_attention" in table and "3-way (1-shot classes): one call" in table
    if plot:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_reports_failing_configuration_and_bad_arguments(artifacts, tmp_path, capsys):
    out = tmp_path / "bench.json"
    quick = ["--shots", "1", "--queries", "1", "--warmup", "0", "--supports", "1", "--input-size", "96x64", "--quiet"]
    assert fssam2(["bench", "--artifacts", str(artifacts), str(tmp_path / "missing"), "--out", str(out), *quick]) == 1
    runs = json.loads(out.read_text())["runs"]
    assert runs[0]["error"] is None and "ManifestError" in runs[1]["error"]
    assert fssam2(["bench", "--artifacts", str(artifacts), "--input-size", "big", "--quiet"]) == 2
    assert "WxH" in capsys.readouterr().err


def test_compare_pytorch_smoke(artifacts, tmp_path):
    """Also: the table says when PyTorch's BF16 is emulated (no BF16 matrix instructions), and only then."""
    from bench.compare_pytorch import format_table, main

    out = tmp_path / "cmp.json"
    assert (
        main(
            [
                "--artifacts",
                str(artifacts),
                "--shots",
                "1",
                "2",
                "--episodes",
                "1",
                "--warmup",
                "0",
                "--torch-dtype",
                "fp32",
                "bf16",
                "--input-size",
                "96x64",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["schema"] == "fssam2-compare-pytorch/2"
    (run,) = report["runs"]
    for k in run["by_shots"]:
        assert set(k["ratios"]) == {"cpu/fp32", "cpu/bf16"}
        for r in k["ratios"].values():
            assert {
                "query_cached_vs_query_phase",
                "query_cached_vs_forward",
                "support_phase",
                "module:memory_attention",
                "module:mask_decoder",
            } <= set(r)
            assert all(np.isfinite(v) and v > 0 for v in r.values())
        runtime = k["runtime_ms"]["cpu"]
        # the cached query does none of the support work (a query that re-encoded its supports would time the memory
        # encoder), so the speedup is what the support phase adds to a query
        assert set(runtime["query_modules"]) == MODULES
        assert k["support_cache_speedup"]["cpu"] == pytest.approx(
            1 + runtime["support_phase"] / runtime["query_cached"]
        )
        # against PyTorch FP32: the same model on the runtime side, autocast's drift on the other, judged on a reference
        # mask of 1-99 % foreground (on one of all or nothing every IoU comes out 1)
        lo, hi = JUDGEABLE_FOREGROUND
        assert lo <= k["fidelity_reference_foreground"] <= hi, "a degenerate reference mask: the IoUs say nothing"
        fid = k["fidelity"]
        assert fid["cpu"]["mask_iou"] >= 0.99 and fid["cpu"]["logits_pearson"] >= 0.9999
        assert 0.95 <= fid["torch-bf16"]["mask_iou"] and fid["torch-bf16"]["logits_pearson"] < 1.0, (
            "autocast did not run in bf16"
        )
        for d in ("fp32", "bf16"):
            assert k["pytorch_ms"][d]["support_phase"] > 0 and k["pytorch_ms"][d]["query_phase"] > 0
    units = dict.fromkeys(["amx_bf16", "amx_int8", "avx512_bf16", "vnni"], False)
    report["environment"]["cpu"]["matrix_units"] = units  # an AVX2-only CPU: BF16 emulated, said so
    assert "BF16 autocast is emulated" in format_table(report)
    report["environment"]["cpu"]["matrix_units"] = units | {"amx_bf16": True}
    assert "emulated" not in format_table(report)


def test_compare_pytorch_passes_openvino_precisions(artifacts, tmp_path, request):
    pytest.importorskip("openvino", reason="the openvino provider needs OpenVINO")
    request.getfixturevalue("needs_bf16")  # after the import check: the fixture imports openvino
    from bench.compare_pytorch import main

    out, quick = tmp_path / "cmp.json", ["--shots", "1", "--episodes", "1", "--warmup", "0", "--input-size", "96x64"]
    args = ["--artifacts", str(artifacts), "--providers", "openvino", "--ov-precision", "bf16,mask_decoder=fp32"]
    assert main([*args, *quick, "--out", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert report["settings"]["ov_precision"] == {"*": "bf16", "mask_decoder": "fp32"}
    ran = report["runs"][0]["graph_precisions"]["openvino"]
    assert ran == {
        "image_encoder": "bf16",
        "memory_encoder": "bf16",
        "memory_attention": "bf16",
        "mask_decoder": "fp32",
    }


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True
