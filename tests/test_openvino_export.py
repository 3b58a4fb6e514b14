"""`fssam2-export --precision bf16`: FP32 graphs with an `openvino` flavour each, gated through OpenVINO on this
machine; FP32 islands (found by the drift tools, marked in OpenVINO's IR) and the cache key that carries them; the
clear stop where OpenVINO BF16 is missing. Random-init tiny at 128² (the shared `artifacts_128`)."""

import dataclasses
import json
import sys

import numpy as np
import pytest
from conftest import require_openvino

require_openvino()
pytestmark = pytest.mark.usefixtures("openvino_bf16")  # BF16 where OpenVINO runs it, listed or converted; else FP32

from calibration import pipeline  # noqa: E402
from calibration.export_cli import main as export_main  # noqa: E402
from runtime import FewShotSegmenter, ManifestError, load_manifest  # noqa: E402
from runtime.backends.openvino import OpenVinoBackend, openvino_flavour  # noqa: E402
from runtime.backends.openvino_tuning import runtime_precisions  # noqa: E402
from runtime.engine.manifest import Flavour, file_sha256  # noqa: E402
from runtime.tools.fidelity import GateThresholds  # noqa: E402

KEPT_FP32 = "memory_encoder"  # --module-precision memory_encoder=fp32
# a Deconvolution with its bias fused in OpenVINO's CPU plugin
ISLAND = "/mask_decoder/output_upscaling.0/ConvTranspose"
# a Linear (ONNX Runtime's folding makes it a Gemm: OpenVINO's MatMul, Multiply, Add), a FullyConnected with bias in
# OpenVINO's CPU plugin unless it is an island
GEMM = "/mask_decoder/transformer/layers.0/cross_attn_token_to_image/k_proj/MatMul/MatMulAddFusion"


def _options(**kw):
    return pipeline.PrecisionOptions("bf16", {KEPT_FP32: "fp32"}, gate_episodes=2, **kw)


@pytest.fixture(scope="module")
def bf16(needs_bf16, tmp_path_factory):
    """`fssam2-export --precision bf16`, end to end through the CLI."""
    out = tmp_path_factory.mktemp("bf16") / "art"
    args = ["--random-init", "--seed", "0", "--image-size", "128", "--quiet", "--precision", "bf16", "--gate-episodes"]
    assert export_main([*args, "2", "--module-precision", f"{KEPT_FP32}=fp32", "--out", str(out)]) == 0
    return out


def test_bf16_export_keeps_fp32_graphs_and_adds_gated_openvino_flavours(bf16, artifacts_128):
    out = bf16
    manifest, fp32 = load_manifest(out), load_manifest(artifacts_128)  # loads, every file verified
    assert manifest.precision == "fp32"
    for name, g in manifest.graphs.items():
        assert (g.sha256, g.precision) == (fp32.graphs[name].sha256, "fp32"), "the standard graphs are unchanged FP32"
        f = openvino_flavour(g)
        assert (f.kind, f.file, f.sha256, f.source_sha256, f.providers) == (
            "onnx",
            g.file,
            g.sha256,
            g.sha256,
            ["openvino"],
        )
        assert f.precision == ("fp32" if name == KEPT_FP32 else "bf16")
        assert f.meta["device"] == "CPU" and f.meta["openvino"] and f.meta["fp32_nodes"] == []
        assert f.meta["gate"] == "passed on CPU" and f.meta["island_rounds"] == 0
        assert g.artifact_for("cpu").file != g.file or not g.flavours[:-1], "ORT keeps its own flavours first"
    report = json.loads((out / pipeline.REPORT_JSON).read_text())["openvino"]
    assert report["passed"] and report["thresholds"] == dataclasses.asdict(GateThresholds.for_precision("bf16"))
    assert report["degenerate_episodes"] < 2, "the pass must not be vacuous"
    assert report["graph_precisions"] == {n: openvino_flavour(g).precision for n, g in manifest.graphs.items()}
    assert manifest.fidelity["gate"] == "on" and manifest.fidelity["openvino"]["passed"]


def test_default_precision_follows_the_flavour(bf16):
    seg = FewShotSegmenter(bf16, provider="openvino")
    assert {n: g.precision for n, g in seg.graphs.items()} == {
        n: "fp32" if n == KEPT_FP32 else "bf16" for n in seg.graphs
    }
    spec = seg.manifest.graphs[KEPT_FP32]
    assert OpenVinoBackend(precisions={KEPT_FP32: "bf16"}).precision_for(KEPT_FP32, spec) == "bf16", "explicit wins"
    assert OpenVinoBackend(precision="bf16").precision_for(KEPT_FP32, spec) == "bf16"


def test_default_precision_is_fp32_without_bf16(bf16, no_bf16):
    manifest = load_manifest(bf16, verify_files=False)
    backend = OpenVinoBackend()
    assert {backend.precision_for(n, g) for n, g in manifest.graphs.items()} == {"fp32"}


def _with_islands(art, tmp_path, nodes):
    """The mask decoder's spec with an openvino flavour listing `nodes` as FP32 islands."""
    spec = load_manifest(art, verify_files=False).graphs["mask_decoder"]
    flavour = Flavour("onnx", spec.file, spec.sha256, ["openvino"], "bf16", spec.sha256, {"fp32_nodes": nodes})
    return art / spec.file, dataclasses.replace(spec, flavours=[flavour])


def test_an_island_runs_fp32_in_bf16_graph_and_changes_the_cache_key(needs_bf16, artifacts_128, tmp_path, monkeypatch):
    backend = OpenVinoBackend(precision="bf16", cache_dir=tmp_path / "cache")
    path, plain = _with_islands(artifacts_128, tmp_path, [])
    _, marked = _with_islands(artifacts_128, tmp_path, [ISLAND])
    without = backend.load(path, plain, "mask_decoder")
    assert runtime_precisions(without.compiled)[ISLAND] == "bf16", "positive control: the node runs bf16 unmarked"
    island = backend.load(path, marked, "mask_decoder")
    assert island.cache == "built", "islands change the cache key"
    assert runtime_precisions(island.compiled)[ISLAND] == "f32" and island.fp32_nodes == [ISLAND]
    assert island.precision == "bf16"
    assert backend.load(path, marked, "mask_decoder").cache == "hit"
    monkeypatch.setattr("runtime.backends.openvino_tuning.ISLANDS_VERSION", 0)
    assert backend.load(path, marked, "mask_decoder").cache == "built", "a blob marked the old way is rebuilt"
    assert backend.load(path, plain, "mask_decoder").cache == "hit", "graphs without islands keep their blobs"
    monkeypatch.undo()
    assert OpenVinoBackend(precision="fp32", cache=False).load(path, marked, "mask_decoder").fp32_nodes == [], (
        "no islands in FP32"
    )

    _, unknown = _with_islands(artifacts_128, tmp_path, [ISLAND, "/no/such/node"])
    with pytest.raises(ManifestError, match="/no/such/node"):
        OpenVinoBackend(precision="bf16", cache=False).load(path, unknown, "mask_decoder")


def test_an_island_on_a_gemm_runs_its_fullyconnected_fp32(needs_bf16, artifacts_128, tmp_path):
    """The CPU plugin fuses a MatMul with its bias Add into a new FullyConnected, which would drop the island's mark:
    the Gemm's ops run bf16 unmarked and f32 marked, and its output tensor moves towards FP32's."""
    backend = OpenVinoBackend(precision="bf16", cache=False)
    path = artifacts_128 / "mask_decoder.onnx"
    models = {}
    for name, nodes in (("plain", []), ("marked", [GEMM])):
        (tmp_path / name).mkdir()
        models[name] = backend.read_model(path, nodes, tmp_path / name)
    ran = {name: runtime_precisions(backend.compile_model(m, "bf16")) for name, m in models.items()}
    assert ran["plain"][GEMM] == "bf16", "positive control: unmarked, the Gemm runs bf16 (one FullyConnected)"
    ops = [GEMM, f"{GEMM}/WithoutBiases"]  # the bias Add and the MatMul OpenVINO's ONNX reader made of the Gemm
    assert [ran["marked"].get(op) for op in ops] == ["f32", "f32"], "marked, its FullyConnected and bias Add run f32"

    plain = models["plain"]
    (tensor,) = next(op for op in plain.get_ordered_ops() if op.get_friendly_name() == GEMM).output(0).get_names()
    rng = np.random.default_rng(0)
    feeds = {i.get_any_name(): rng.standard_normal(i.get_shape()).astype(np.float32) for i in plain.inputs}
    fp32 = backend.run_with_outputs(plain, [tensor], feeds, "fp32")[tensor]
    error = {
        name: np.abs(backend.run_with_outputs(m, [tensor], feeds, "bf16")[tensor] - fp32).mean() / np.abs(fp32).mean()
        for name, m in models.items()
    }
    assert 0 < error["marked"] < 0.9 * error["plain"], error


@pytest.mark.parametrize("dropped", [False, True], ids=["islands-hold", "gemm-mark-dropped"])
def test_tightened_gate_adds_islands_then_fails_naming_graph_and_node(
    needs_bf16, artifacts_128, tmp_path, monkeypatch, dropped
):
    """Node correlation >= 0.999999 (BF16 nodes reach ~0.999996, FP32 ones ~1 - 1e-8): the first drifting node
    becomes an island and the next round finds a later one (the island took effect, a Gemm's included); the loop ends
    after ISLAND_ROUNDS or when an island did not help (`dropped`: a Gemm's mark lost in OpenVINO's bias fusion, as
    without `_unfusable`), and the gate fails with the diagnosis and the islands in the report."""
    if dropped:
        monkeypatch.setattr("runtime.backends.openvino_tuning._unfusable", lambda model, marked: set())
    tight = dataclasses.replace(GateThresholds.for_precision("bf16"), logits_pearson=0.999999)
    with pytest.raises(pipeline.GateError, match=r"first diverging node .* pearson [\d.]+\); FP32 islands") as err:
        pipeline.convert_artifacts(
            artifacts_128, tmp_path, _options(thresholds=tight, ort_flavours=False), progress=False
        )
    report = json.loads((tmp_path / pipeline.REPORT_JSON).read_text())["openvino"]
    graph, islands, last = report["worst"]["graph"], report["fp32_islands"], report["worst"]["node"]
    assert f"worst graph {graph}" in str(err.value) and f"after {islands['rounds']} rounds" in str(err.value)
    found = islands["found"]
    assert 2 <= islands["rounds"] == len(found) <= pipeline.ISLAND_ROUNDS, "the first island must take effect"
    assert len({f["node"] for f in found}) == len(found)
    assert all(f["pearson"] < 0.999999 and f["node"] in islands["fp32_nodes"][f["graph"]] for f in found)
    gemm = [i for i, f in enumerate(found) if any(n.endswith("/MatMulAddFusion") for n in f["fp32_nodes"])]
    assert gemm, "a Gemm became an island"
    if dropped:
        assert islands["rounds"] < pipeline.ISLAND_ROUNDS and last in islands["fp32_nodes"][graph], "did not help"
    else:
        assert gemm[0] < len(found) - 1, "the Gemm's island took effect: the next round found a later node"


def test_without_bf16_the_gated_export_stops_and_no_gate_writes_unjudged(artifacts_128, tmp_path, no_bf16, capsys):
    args = ["--random-init", "--seed", "0", "--image-size", "128", "--quiet", "--precision", "bf16"]
    assert export_main([*args, "--out", str(tmp_path / "gated")]) == 2
    err = capsys.readouterr().err
    assert "offers ['fp16', 'fp32']" in err or "offers ['fp32']" in err
    assert "AMX or AVX512_BF16" in err and "--no-gate" in err
    assert not (tmp_path / "gated").exists()

    out = tmp_path / "unjudged"
    out.mkdir()
    pipeline.convert_artifacts(artifacts_128, out, _options(gate=False, ort_flavours=False), progress=False)
    manifest = load_manifest(out)
    assert manifest.fidelity["gate"] == "off (--no-gate)" and manifest.fidelity["openvino"].startswith("unjudged")
    assert {openvino_flavour(g).meta["gate"] for g in manifest.graphs.values()} == {"unjudged (--no-gate)"}
    assert all(file_sha256(out / g.file) == g.sha256 for g in manifest.graphs.values())


def test_without_openvino_the_gated_export_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    args = ["--random-init", "--seed", "0", "--image-size", "128", "--quiet", "--precision", "bf16"]
    assert export_main([*args, "--out", str(tmp_path / "art")]) == 2
    assert "pip install 'fssam2[openvino]'" in capsys.readouterr().err
