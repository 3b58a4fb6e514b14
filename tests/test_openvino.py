"""The `openvino` provider: parity with the CPU ORT runtime, the compiled-blob cache, precision choice, clear
errors, and the fidelity gate on what OpenVINO runs. Random-init tiny at 256² (the shared `artifacts`)."""

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import require

require("openvino", "the openvino provider needs OpenVINO (pip install 'fssam2[openvino]')", "FSSAM2_REQUIRE_OPENVINO")
pytestmark = pytest.mark.usefixtures("openvino_bf16")  # BF16 where OpenVINO runs it, listed or converted

from graph_edits import rerecord  # noqa: E402

from runtime import FewShotSegmenter, ProviderUnavailableError, create_backend, load_manifest  # noqa: E402
from runtime import cli as runtime_cli  # noqa: E402
from runtime.fidelity import GateThresholds, iou, pearson, run_episode  # noqa: E402
from runtime.ov_backend import OpenVinoBackend, OpenVinoGraph  # noqa: E402
from runtime.synthetic import synthetic_episodes  # noqa: E402

GRAPH = "memory_encoder"  # small and quick to compile


@pytest.fixture(scope="module")
def art(artifacts, tmp_path_factory):
    """A private copy of the artifacts: the compiled-blob cache lives inside the directory."""
    out = tmp_path_factory.mktemp("ov") / "art"
    shutil.copytree(artifacts, out, ignore=shutil.ignore_patterns(".*_cache"))
    return out


@pytest.fixture(scope="module")
def results(art):
    """Three episodes through ORT CPU and OpenVINO in FP32 and BF16 (one segmenter each)."""
    episodes = synthetic_episodes(3, 0, (1, 3), 256)
    segs = {
        "ort": FewShotSegmenter(art),
        **{p: FewShotSegmenter(art, backend=OpenVinoBackend(precision=p)) for p in ("fp32", "bf16")},
    }
    return segs, [{name: run_episode(seg, ep) for name, seg in segs.items()} for ep in episodes]


def test_fp32_matches_the_cpu_runtime(results):
    """OpenVINO FP32 computes what ORT computes: logits within 1e-4 (measured 4e-7; float32 reassociation), same masks."""
    segs, runs = results
    assert {g.precision for g in segs["fp32"].graphs.values()} == {"fp32"}
    for r in runs:
        assert 0.05 < r["ort"].mask.mean() < 0.95, "reference mask is degenerate: the IoU would say nothing"
        assert np.abs(r["fp32"].logits - r["ort"].logits).max() < 1e-4
        assert iou(r["fp32"].mask, r["ort"].mask) > 0.999


def test_bf16_is_within_the_bf16_gate(results):
    """BF16 (8 mantissa bits) drifts measurably but stays within the gate: IoU >= 0.98, logits correlation >= 0.999."""
    segs, runs = results
    assert {g.precision for g in segs["bf16"].graphs.values()} == {"bf16"}
    for r in runs:
        assert iou(r["bf16"].mask, r["ort"].mask) >= 0.98
        assert pearson(r["bf16"].logits, r["ort"].logits) >= 0.999
        assert not np.array_equal(r["bf16"].logits, r["fp32"].logits), "bf16 ran as fp32"
    flipped = pearson(runs[0]["bf16"].logits[::-1], runs[0]["ort"].logits)  # the measure sees a flip
    assert flipped < 0.99


def _load(art, backend, spec=None):
    spec = spec or load_manifest(art, verify_files=False).graphs[GRAPH]
    return backend.load(art / spec.file, spec), spec


def _feeds(spec):
    rng = np.random.default_rng(0)
    return {t.name: rng.standard_normal(t.shape).astype(t.dtype) for t in spec.inputs}


def test_cache_builds_then_hits_and_rebuilds_on_a_changed_key(tmp_path, art, monkeypatch):
    cache = tmp_path / "cache"
    built, spec = _load(art, OpenVinoBackend(precision="fp32", cache_dir=cache))
    monkeypatch.setattr(OpenVinoBackend, "_compile", lambda *a: pytest.fail("a cache hit must not compile"))
    hit, _ = _load(art, OpenVinoBackend(precision="fp32", cache_dir=cache))
    assert (built.cache, hit.cache) == ("built", "hit")
    for name, value in built.run(_feeds(spec)).items():
        np.testing.assert_array_equal(hit.run(_feeds(spec))[name], value)
    monkeypatch.undo()

    changed = dataclasses.replace(spec, sha256="0" * 64)  # another graph version
    assert _load(art, OpenVinoBackend(precision="fp32", cache_dir=cache), changed)[0].cache == "built"
    newer = OpenVinoBackend(precision="fp32", cache_dir=cache)
    newer.version = "9999.0"  # an OpenVINO upgrade
    assert _load(art, newer)[0].cache == "built"
    assert _load(art, OpenVinoBackend(precision="bf16", cache_dir=cache))[0].cache == "built"  # another precision
    blobs = sorted(cache.glob("*.blob"))
    assert len(blobs) == 4, [b.name for b in blobs]
    assert _load(art, OpenVinoBackend(precision="fp32", cache_dir=cache, cache=False))[0].cache == "off"

    first = next(b for b in blobs if b.stat().st_mtime == min(x.stat().st_mtime for x in blobs))
    first.write_bytes(b"\0" * first.stat().st_size)  # same size, unreadable: rebuilt with a warning
    with pytest.warns(UserWarning, match="rebuilding unreadable OpenVINO cache entry"):
        assert _load(art, OpenVinoBackend(precision="fp32", cache_dir=cache))[0].cache == "built"


def _layer_types(graph) -> set[str]:
    """The kinds of layers a compiled graph runs (OpenVINO's runtime model): "Subgraph" for snippet kernels."""
    return {op.get_rt_info()["layerType"].astype(str) for op in graph.compiled.get_runtime_model().get_ops()}


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_compiled_memory_attention_holds_its_constants_once(art, precision):
    """The RoPE tables are shared by all of memory attention's products (export: `rope.rotate`); OpenVINO folds a
    copy per product for a table whose rank or sign differs from what the product takes (11x the weights at 1024²,
    2x at 256²). The compiled model's constants stay within 1.2x the ONNX initializers'."""
    spec = load_manifest(art, verify_files=False).graphs["memory_attention"]
    graph = _load(art, OpenVinoBackend(precision=precision, cache=False), spec)[0]
    held = sum(
        op.get_output_tensor(0).size  # bytes
        for op in graph.compiled.get_runtime_model().get_ops()
        if op.get_rt_info()["layerType"].astype(str) == "Const"
    )
    model = onnx.load(art / spec.file)
    exported = sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    assert held <= 1.2 * exported, f"{held / 1e6:.1f} MB of constants compiled from {exported / 1e6:.1f} MB"


def test_graph_properties_apply_per_graph_and_are_in_the_cache_key(results, art, tmp_path, monkeypatch):
    """BF16 memory attention compiles with snippets off (its attention as separate MatMul / Softmax / MatMul), the
    other graphs and FP32 memory attention with them; a blob compiled without the properties is not reused."""
    segs = results[0]
    assert "Subgraph" not in _layer_types(segs["bf16"].graphs["memory_attention"])
    assert "Subgraph" in _layer_types(segs["bf16"].graphs["mask_decoder"])
    assert "Subgraph" in _layer_types(segs["fp32"].graphs["memory_attention"])

    spec = load_manifest(art, verify_files=False).graphs["memory_attention"]
    cache = tmp_path / "cache"
    monkeypatch.setattr("runtime.ov_backend.GRAPH_PROPERTIES", {})
    assert _load(art, OpenVinoBackend(precision="bf16", cache_dir=cache), spec)[0].cache == "built"
    monkeypatch.undo()
    rebuilt = _load(art, OpenVinoBackend(precision="bf16", cache_dir=cache), spec)[0]
    assert rebuilt.cache == "built" and "Subgraph" not in _layer_types(rebuilt)
    hit = _load(art, OpenVinoBackend(precision="bf16", cache_dir=cache), spec)[0]
    assert hit.cache == "hit" and "Subgraph" not in _layer_types(hit)


@pytest.fixture
def attention(art, tmp_path, monkeypatch):
    """BF16 memory attention with `MAX_SCORES` at 2 supports (256²: 256 query tokens, 256 per support), cached in
    `tmp_path / "cache"`, and k -> random feeds with k supports' memory."""
    monkeypatch.setattr("runtime.ov_backend.MAX_SCORES", 2 * 256 * 256)
    spec = load_manifest(art, verify_files=False).graphs["memory_attention"]
    graph = _load(art, OpenVinoBackend(precision="bf16", cache_dir=tmp_path / "cache"), spec)[0]
    rng = np.random.default_rng(0)
    fixed = {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in spec.inputs if t.name.startswith("image")}

    def with_memory(k):
        return fixed | {n: rng.standard_normal((1, 256 * k, 64)).astype(np.float32) for n in ("memory", "memory_pos")}

    return graph, spec, with_memory


def test_calls_with_more_attention_scores_run_a_plain_compilation(attention, art, tmp_path):
    """Beyond MAX_SCORES (query tokens x memory tokens) memory attention runs compiled without GRAPH_PROPERTIES
    (snippets on: no materialised scores), loaded on the first such call and cached; both compute the same."""
    graph, spec, with_memory = attention
    two, three = with_memory(2), with_memory(3)
    graph.run(two)
    assert graph._plain is None, "a call within MAX_SCORES must not load the plain compilation"
    out = graph.run(three)["conditioned_embed"]
    assert graph._plain is not None and "Subgraph" in _layer_types(graph._plain)
    assert graph._plain.cache == "built" and "Subgraph" not in _layer_types(graph)
    assert pearson(out, graph._tuned.run(three)["conditioned_embed"]) > 0.9999

    again = _load(art, OpenVinoBackend(precision="bf16", cache_dir=tmp_path / "cache"), spec)[0]
    again.run(three)
    assert again._plain.cache == "hit"


def test_a_switch_of_compilation_frees_the_other_ones_buffers(attention, monkeypatch):
    """Calls alternating between the tuned and the plain compilation free the one run before (one working set held,
    not both), calls staying on one free nothing, and results are unchanged by a free."""
    freed = []
    release = OpenVinoGraph.release_memory
    monkeypatch.setattr(OpenVinoGraph, "release_memory", lambda self: (freed.append(self), release(self))[1])
    graph, _, with_memory = attention
    one, three = with_memory(1), with_memory(3)
    first = graph.run(one)["conditioned_embed"]
    graph.run(one)
    assert freed == []
    graph.run(three)
    assert freed == [graph._tuned]
    graph.run(three)
    assert freed == [graph._tuned]
    again = graph.run(one)["conditioned_embed"]
    assert freed == [graph._tuned, graph._plain]
    assert pearson(again, first) > 0.9999


def test_outputs_keep_their_graph_names_when_a_tensor_has_several(tmp_path, art):
    """An FP16 graph's outputs (as exported with FP16 inside, FP32 I/O) also carry the names of the Casts ONNX
    Runtime's constant folding inserts; OpenVINO reports those first when it compiles the graph, the graph's names
    when it imports the blob: both give the manifest's names."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp16, graph = tmp_path / "art", "mask_decoder"
    shutil.copytree(art, fp16, ignore=shutil.ignore_patterns(".*_cache"))
    path = fp16 / f"{graph}.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(path)), keep_io_types=True), str(path))
    rerecord(fp16, graph)
    spec = load_manifest(fp16, verify_files=False).graphs[graph]
    want = [t.name for t in spec.outputs]
    backend = OpenVinoBackend(precision="fp32", cache_dir=tmp_path / "cache")
    built, hit = _load(fp16, backend, spec)[0], _load(fp16, backend, spec)[0]
    assert (built.cache, hit.cache) == ("built", "hit")
    assert [o.get_any_name() for o in built.compiled.outputs] != want, "OpenVINO reports the graph's names: no alias"
    for loaded in (built, hit):
        assert list(loaded.run(_feeds(spec))) == want


_MAPPED_BLOB_SCRIPT = """
import gc, sys
from pathlib import Path
import numpy as np
from runtime import load_manifest
from runtime.ov_backend import OpenVinoBackend
art, cache, graph = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
spec = load_manifest(art, verify_files=False).graphs[graph]
feeds = {t.name: np.random.default_rng(0).standard_normal(t.shape).astype(t.dtype) for t in spec.inputs}
built = OpenVinoBackend(precision="fp32", cache_dir=cache).load(art / spec.file, spec)
hits = [OpenVinoBackend(precision="fp32", cache_dir=cache).load(art / spec.file, spec) for _ in range(2)]
del hits[0]  # one graph released while another still runs from its own map
gc.collect()
junk = [np.full(1 << 20, 7, np.uint8) for _ in range(64)]  # reuse freed memory
assert hits[0].cache == "hit", hits[0].cache
for name, value in built.run(feeds).items():
    np.testing.assert_array_equal(hits[0].run(feeds)[name], value)
print("ok")
"""


def test_a_cache_hit_runs_from_its_mapped_blob_and_exits_cleanly(tmp_path, art):
    """The imported model points into the blob's memory map: the map lives as long as the graph, a released graph
    does not unmap another's, and a process exiting with graphs alive exits cleanly (a subprocess: a map released
    too early is a segfault)."""
    done = subprocess.run(
        [sys.executable, "-c", _MAPPED_BLOB_SCRIPT, str(art), str(tmp_path / "cache"), GRAPH],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr[-2000:]


def test_missing_openvino_is_a_clear_error(monkeypatch, art, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(ProviderUnavailableError, match=r"pip install 'fssam2\[openvino\]'"):
        create_backend("openvino")
    rc = runtime_cli.main(
        ["check", "--artifacts", str(art), "--reference", str(art), "--provider", "openvino", "--episodes", "1"]
    )
    assert rc == 2 and "fssam2[openvino]" in capsys.readouterr().err


def test_without_bf16_the_provider_runs_and_reports_fp32(no_bf16, art):
    """A CPU without AMX / AVX512_BF16 (simulated: OpenVINO reports no BF16 capability) gets FP32, and says so."""
    backend = OpenVinoBackend()
    assert backend.default_precision == "fp32"
    assert _load(art, backend)[0].precision == "fp32"
    with pytest.raises(ProviderUnavailableError, match="does not offer bf16"):
        OpenVinoBackend(precision="bf16")
    with pytest.raises(ProviderUnavailableError, match="not available"):
        OpenVinoBackend(device="NPU-that-is-not-there")
    with pytest.raises(ValueError, match="precisions apply to the openvino provider only"):
        create_backend("cpu", precisions={"*": "bf16"})


def _broken_copy(art, dst):
    """The artifacts with memory attention's first projection weight negated and scaled (manifest updated)."""
    shutil.copytree(art, dst, ignore=shutil.ignore_patterns(".*_cache"))
    path = dst / "memory_attention.onnx"
    model = onnx.load(str(path))
    first = next(n for n in model.graph.node if n.op_type == "MatMul" and "layers.0" in n.name)
    w = next(t for t in model.graph.initializer if t.name in first.input)
    w.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(w) * 8, w.name))
    onnx.save(model, str(path))
    rerecord(dst, "memory_attention")
    return dst


def test_gate_judges_what_openvino_runs(art, artifacts, tmp_path, capsys):
    report = tmp_path / "ok.json"
    args = ["check", "--reference", str(artifacts), "--provider", "openvino", "--episodes", "2", "--shots", "1", "2"]
    assert runtime_cli.main([*args, "--artifacts", str(art), "--json", str(report)]) == 0
    ok = json.loads(report.read_text())
    assert ok["passed"] and ok["thresholds"] == dataclasses.asdict(
        GateThresholds.for_precision("bf16")
    )  # the bf16 gate
    assert ok["thresholds"]["mask_iou"] == 0.98 and ok["thresholds"]["sign_agreement"] == 0.99
    assert set(ok["graph_precisions"].values()) == {"bf16"} and ok["degenerate_episodes"] < 2
    assert "(bf16)" in capsys.readouterr().out

    bad = tmp_path / "bad.json"
    assert (
        runtime_cli.main([*args, "--artifacts", str(_broken_copy(art, tmp_path / "broken")), "--json", str(bad)]) == 1
    )
    failed = json.loads(bad.read_text())
    assert not failed["passed"] and failed["worst"]["graph"] == "memory_attention"


def test_one_openvino_segmenter_from_many_threads(results, episode):
    """Concurrent calls on one OpenVINO segmenter are bit-identical to serial calls. Checked in FP32: in BF16 OpenVINO
    is not bit-reproducible even serially (its kernels for a dynamic shape change over the first calls; logits move by
    ~5e-3), and random-init sets differ too little for a tolerance to see a mix-up."""
    from trt_fakes import assert_threads_match_serial

    seg = results[0]["fp32"]
    one, two = seg.encode_supports(episode.supports[:1]), seg.encode_supports(episode.supports[1:3])
    jobs = [(episode.query, one), (episode.supports[3][0], two), (episode.query, {"a": one, "b": two})]
    assert assert_threads_match_serial(seg, jobs, threads=3, repeats=2) == 6
