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
from conftest import bf16_offered, require_openvino

require_openvino()
pytestmark = pytest.mark.usefixtures("openvino_bf16")  # BF16 where OpenVINO runs it, listed or converted; else FP32

from graph_edits import rerecord  # noqa: E402

from runtime import FewShotSegmenter, ProviderUnavailableError, RuntimeOptions, create_backend, load_manifest  # noqa: E402
from runtime import cli as runtime_cli  # noqa: E402
from runtime.backends import openvino_tuning  # noqa: E402
from runtime.backends.openvino import OpenVinoBackend  # noqa: E402
from runtime.tools.fidelity import GateThresholds, iou, pearson, run_episode  # noqa: E402
from runtime.tools.synthetic import synthetic_episodes  # noqa: E402

GRAPH = "memory_encoder"  # small and quick to compile


@pytest.fixture(scope="module")
def art(artifacts, tmp_path_factory):
    """A private copy of the artifacts: the compiled-blob cache lives inside the directory."""
    out = tmp_path_factory.mktemp("ov") / "art"
    shutil.copytree(artifacts, out, ignore=shutil.ignore_patterns(".*_cache"))
    return out


@pytest.fixture(scope="module")
def results(art, openvino_bf16):
    """Three episodes through ORT CPU and OpenVINO in FP32 and, where OpenVINO runs it, BF16 (one segmenter each)."""
    episodes = synthetic_episodes(3, 0, (1, 3), 256)
    precisions = ("fp32", "bf16") if bf16_offered() else ("fp32",)
    segs = {
        "ort": FewShotSegmenter(art),
        **{p: FewShotSegmenter(art, backend=OpenVinoBackend(precision=p)) for p in precisions},
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


def test_bf16_is_within_the_bf16_gate(needs_bf16, results):
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
    """`backend.load` of `spec` (default GRAPH's) in `art`, told the graph's name as the segmenter would."""
    graphs = load_manifest(art, verify_files=False).graphs
    spec = spec or graphs[GRAPH]
    graph = next(name for name, g in graphs.items() if g.file == spec.file)
    return backend.load(art / spec.file, spec, graph), spec


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
    with monkeypatch.context() as patch:
        patch.setitem(openvino_tuning.TUNING, (GRAPH, "fp32"), openvino_tuning.Tuning({"SNIPPETS_MODE": "DISABLE"}))
        assert _load(art, OpenVinoBackend(precision="fp32", cache_dir=cache))[0].cache == "built"  # another tuning
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
def test_compiled_memory_attention_holds_its_constants_once(art, precision, request):
    """The RoPE tables are shared by all of memory attention's products (export: `rope.rotate`); OpenVINO folds a
    copy per product for a table whose rank or sign differs from what the product takes (11x the weights at 1024²,
    2x at 256²). The compiled model's constants stay within 1.2x the ONNX initializers'."""
    if precision == "bf16":
        request.getfixturevalue("needs_bf16")
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


def test_tuning_applies_per_graph_and_is_in_the_cache_key(needs_bf16, results, art, tmp_path, monkeypatch):
    """BF16 memory attention compiles with snippets off (its attention as separate MatMul / Softmax / MatMul), the
    other graphs and FP32 memory attention with them; a blob compiled without the tuning is not reused."""
    segs = results[0]
    assert "Subgraph" not in _layer_types(segs["bf16"].graphs["memory_attention"])
    assert "Subgraph" in _layer_types(segs["bf16"].graphs["mask_decoder"])
    assert "Subgraph" in _layer_types(segs["fp32"].graphs["memory_attention"])

    spec = load_manifest(art, verify_files=False).graphs["memory_attention"]
    cache = tmp_path / "cache"
    assert _load(art, OpenVinoBackend(precision="fp32", cache_dir=cache), spec)[0].cache == "built"
    monkeypatch.setattr(
        "runtime.backends.openvino_tuning.TUNING", {}
    )  # below: another precision, then another tuning, rebuild
    assert _load(art, OpenVinoBackend(precision="bf16", cache_dir=cache), spec)[0].cache == "built"
    monkeypatch.undo()
    rebuilt = _load(art, OpenVinoBackend(precision="bf16", cache_dir=cache), spec)[0]
    assert rebuilt.cache == "built" and "Subgraph" not in _layer_types(rebuilt)
    hit = _load(art, OpenVinoBackend(precision="bf16", cache_dir=cache), spec)[0]
    assert hit.cache == "hit" and "Subgraph" not in _layer_types(hit)
    tuning = openvino_tuning.TUNING[("memory_attention", "bf16")]
    monkeypatch.setitem(
        openvino_tuning.TUNING, ("memory_attention", "bf16"), dataclasses.replace(tuning, query_block=64)
    )
    assert _load(art, OpenVinoBackend(precision="bf16", cache_dir=cache), spec)[0].cache == "built"  # another block


@pytest.fixture(scope="module")
def attention(art):
    """Memory attention as OpenVINO reads it (256²: 256 query tokens, 256 memory tokens per support), its spec, and
    k -> random feeds with k supports' memory."""
    spec = load_manifest(art, verify_files=False).graphs["memory_attention"]
    backend = OpenVinoBackend(precision="fp32", cache=False)
    rng = np.random.default_rng(0)
    fixed = {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in spec.inputs if t.name.startswith("image")}

    def with_memory(k):
        return fixed | {n: rng.standard_normal((1, 256 * k, 64)).astype(np.float32) for n in ("memory", "memory_pos")}

    return backend, spec, with_memory


def _blocked_against_whole(attention, art, tmp_path, block: int) -> tuple[int, float]:
    """(attentions blocked, largest |blocked - whole| of FP32 memory attention's output over K = 1 and 3, one compiled
    model each)."""
    backend, spec, with_memory = attention
    model = backend.read_model(art / spec.file, [], tmp_path)
    whole = backend.compile_model(model.clone(), "fp32").create_infer_request()
    blocked_model = model.clone()
    blocked = openvino_tuning.block_attention(blocked_model, block)
    request = backend.compile_model(blocked_model, "fp32").create_infer_request()
    diffs = []
    for k in (1, 3):
        feeds = with_memory(k)
        want, got = whole.infer(feeds)["conditioned_embed"], request.infer(feeds)["conditioned_embed"]
        assert got.shape == want.shape and np.isfinite(got).all()
        diffs.append(float(np.abs(got - want).max()))
    return blocked, max(diffs)


def test_block_attention_splits_the_attentions_over_the_memory(attention, art, tmp_path):
    """The 4 cross-attentions (keys: the memory, a dynamic axis) split into blocks of 96 query tokens (96, 96, 64):
    the same FP32 output at every K (measured: identical), the self-attentions (static keys) untouched. Blocks
    joined in the wrong order are caught."""
    blocked, diff = _blocked_against_whole(attention, art, tmp_path, 96)
    assert blocked == 4 and diff <= 1e-5, (blocked, diff)


def test_block_attention_joined_in_the_wrong_order_is_caught(attention, art, tmp_path, monkeypatch):
    import openvino.opset13 as ops

    concat = ops.concat
    monkeypatch.setattr(ops, "concat", lambda parts, axis: concat(parts[::-1], axis))
    blocked, diff = _blocked_against_whole(attention, art, tmp_path, 96)
    assert blocked == 4 and diff > 1e-2, diff


def test_block_attention_leaves_islands_and_short_queries_whole(attention, art, tmp_path):
    """An attention with a node kept FP32 (an island: its mark lives on the op, the blocks' new ops would lose it)
    stays whole, as does every attention when a block holds all 256 query tokens."""
    backend, spec, _ = attention
    model = backend.read_model(art / spec.file, [], tmp_path)
    assert openvino_tuning.block_attention(model.clone(), 256) == 0
    softmax = next(
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() == "Softmax" and "cross_attn" in op.get_friendly_name()
    )
    island = backend.read_model(art / spec.file, [softmax], tmp_path)
    assert openvino_tuning.block_attention(island, 96) == 3


def test_loaded_memory_attention_runs_its_blocks_at_every_k(needs_bf16, attention, art, monkeypatch):
    """BF16 memory attention loaded with a query block of 64 runs the blocked ops (named `.../block<i>` in the
    runtime model) on one compiled model for K = 1 and 3, close to FP32 (BF16 drift only)."""
    backend, spec, with_memory = attention
    tuning = openvino_tuning.TUNING[("memory_attention", "bf16")]
    monkeypatch.setitem(
        openvino_tuning.TUNING, ("memory_attention", "bf16"), dataclasses.replace(tuning, query_block=64)
    )
    graph = _load(art, OpenVinoBackend(precision="bf16", cache=False), spec)[0]
    ran = openvino_tuning.runtime_precisions(graph.compiled)
    assert sum(name.endswith("/block3") for name in ran) == 4 and "bf16" in ran.values()
    fp32 = _load(art, backend, spec)[0]
    for k in (1, 3):
        feeds = with_memory(k)
        got, want = graph.run(feeds)["conditioned_embed"], fp32.run(feeds)["conditioned_embed"]
        assert pearson(got, want) > 0.999 and not np.array_equal(got, want)


def _qdq_matmul(path) -> np.ndarray:
    """An INT8 QDQ graph: x (quantised, scale 1/127) times int8 weights `w` (scale 0.01, zero point 0; returned),
    plus an int8 bias with zero point 3 (not a symmetric weight: left alone). Weights and inputs near the top of the
    range, so that 8-bit products saturate where pairs of them are clamped to 16 bits."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).integers(100, 128, (256, 64)).astype(np.int8)
    consts = {"w": w, "sw": np.float32(0.01), "zero": np.int8(0), "sx": np.float32(1 / 127)}
    consts |= {"b": np.full(64, 5, np.int8), "sb": np.float32(0.5), "zb": np.int8(3)}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zero"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "sw", "zero"], ["wd"]),
        helper.make_node("MatMul", ["xd", "wd"], ["xw"]),
        helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["bd"]),
        helper.make_node("Add", ["xw", "bd"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 64])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return w


def test_int8_weights_in_7_bits_halve_symmetric_weights_only(tmp_path):
    """OpenVINO's model of the QDQ graph: the symmetric weight is halved into [-64, 63] (using it); the bias with a
    zero point, and the zero points, are left alone. (Its scale doubled: exact results, next test.)"""
    path = tmp_path / "qdq.onnx"
    w = _qdq_matmul(path)
    model = OpenVinoBackend(precision="fp32", cache=False).read_model(path, [], tmp_path)
    assert openvino_tuning.int8_weights_in_7_bits(model) == 1
    int8 = [
        op.get_data()
        for op in model.get_ordered_ops()
        if op.get_type_name() == "Constant" and op.get_data().dtype == np.int8
    ]
    weights = [c for c in int8 if c.size == w.size]
    assert len(weights) == 1 and np.array_equal(weights[0], np.clip(np.round(w / 2), -64, 63))
    assert weights[0].max() == 63 and any(c.size == 64 and (c == 5).all() for c in int8)


def test_int8_on_a_saturating_cpu_runs_7_bit_weights(tmp_path):
    """OpenVINO runs the QDQ MatMul in INT8 (positive control: an i8 op) and, with 7-bit weights, computes it exactly
    on any CPU. With 8-bit weights it is exact where INT8 does not saturate (VNNI, AMX) and off by far more than a
    rounding step where it does (measured on AVX2: 87 %): the case `tuning_for` rewrites."""
    path = tmp_path / "qdq.onnx"
    w = _qdq_matmul(path)
    x = np.random.default_rng(1).uniform(0.8, 1.0, (1, 16, 256)).astype(np.float32)
    xq = np.round(x * 127) / 127
    backend = OpenVinoBackend(precision="fp32", cache=False)
    errors = {}
    for seven in (False, True):
        workdir = tmp_path / str(seven)
        workdir.mkdir()
        model = backend.read_model(path, [], workdir, openvino_tuning.Tuning(int8_weights_7bit=seven))  # as `load` does
        compiled = backend.compile_model(model, "fp32")
        assert "i8" in openvino_tuning.runtime_precisions(compiled).values(), "OpenVINO did not run INT8"
        weights = np.clip(np.round(w / 2), -64, 63) * np.float32(0.02) if seven else w * np.float32(0.01)
        exact = xq @ weights + 0.5 * (5 - 3)
        got = compiled.create_infer_request().infer({"x": x})["y"]
        errors[seven] = float(np.abs(got - exact).max() / np.abs(exact).max())
    assert errors[True] < 1e-5, errors
    assert (errors[False] > 0.1) if openvino_tuning.int8_saturates() else (errors[False] < 1e-5), errors


def test_a_loaded_int8_graph_says_int8_and_its_float_precision(tmp_path):
    """`graph.precision` of an INT8 (QDQ) graph is "int8+fp32", read back from what ran (its i8 ops), whatever the
    manifest declares; an FP32 graph's is "fp32" (test_fp32_matches_the_cpu_runtime)."""
    from runtime.engine.manifest import GraphSpec, TensorSpec

    path = tmp_path / "mask_decoder.onnx"
    _qdq_matmul(path)
    io = [TensorSpec("x", [1, 16, 256], "float32")], [TensorSpec("y", [1, 16, 64], "float32")]
    spec = GraphSpec(path.name, "0" * 64, *io, precision="int8")
    backend = OpenVinoBackend(precision="fp32", cache=False)
    assert backend.load(path, spec, "mask_decoder").precision == "int8+fp32"
    assert backend.load(path, dataclasses.replace(spec, precision="fp32"), "mask_decoder").precision == "int8+fp32"


def test_int8_graphs_get_7_bit_weights_only_where_int8_saturates(art, monkeypatch):
    spec = load_manifest(art, verify_files=False).graphs["mask_decoder"]
    int8 = dataclasses.replace(spec, precision="int8")
    for saturates in (True, False):
        monkeypatch.setattr(openvino_tuning, "int8_saturates", lambda saturates=saturates: saturates)
        backend = OpenVinoBackend(precision="fp32", cache=False)
        assert backend.tuning_for("mask_decoder", "fp32", int8).int8_weights_7bit == saturates
        assert not backend.tuning_for("mask_decoder", "fp32", spec).int8_weights_7bit
    assert openvino_tuning.Tuning(int8_weights_7bit=True).key() != openvino_tuning.Tuning().key()  # blobs do not mix


def test_an_int8_exports_mask_decoder_compiles_fp32_unless_a_precision_is_given(art):
    """`AUTO_PRECISION`: by default the mask decoder of an INT8 export compiles in FP32, every other graph (and an
    FP32 export's mask decoder) in the default precision; an explicit precision wins. The gate on what this runs:
    test_precision.py."""
    specs = load_manifest(art, verify_files=False).graphs
    int8 = {n: dataclasses.replace(s, precision="int8") for n, s in specs.items()}
    auto = OpenVinoBackend(cache=False)
    assert auto.precision_for("mask_decoder", int8["mask_decoder"]) == "fp32"
    assert auto.precision_for("image_encoder", int8["image_encoder"]) == auto.default_precision
    assert auto.precision_for("mask_decoder", specs["mask_decoder"]) == auto.default_precision
    for told in ({"precision": auto.default_precision}, {"precisions": {"mask_decoder": auto.default_precision}}):
        backend = OpenVinoBackend(cache=False, **told)
        assert backend.precision_for("mask_decoder", int8["mask_decoder"]) == auto.default_precision


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
from runtime.backends.openvino import OpenVinoBackend
art, cache, graph = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
spec = load_manifest(art, verify_files=False).graphs[graph]
feeds = {t.name: np.random.default_rng(0).standard_normal(t.shape).astype(t.dtype) for t in spec.inputs}
built = OpenVinoBackend(precision="fp32", cache_dir=cache).load(art / spec.file, spec, graph)
hits = [OpenVinoBackend(precision="fp32", cache_dir=cache).load(art / spec.file, spec, graph) for _ in range(2)]
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
        create_backend(RuntimeOptions("openvino"))
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
        create_backend(RuntimeOptions("cpu", precision={"*": "bf16"}))


def test_bench_says_which_precision_each_graph_ran_in(no_bf16, art, tmp_path, capsys):
    """Where the CPU offers no BF16 (AVX2 only), `fssam2 bench --providers openvino` runs every graph in FP32 and says
    so per graph: what OpenVINO compiled for, also for a graph exported in FP16 (the manifest's precision would be
    wrong there), which ONNX Runtime runs as exported."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp16 = tmp_path / "art"
    shutil.copytree(art, fp16, ignore=shutil.ignore_patterns(".*_cache"))
    path = fp16 / "mask_decoder.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(path)), keep_io_types=True), str(path))
    rerecord(fp16, "mask_decoder", precision="fp16")
    out = tmp_path / "bench.json"
    quick = ["--shots", "1", "--queries", "1", "--warmup", "0", "--supports", "1", "--input-size", "96x64", "--ways"]
    args = ["bench", "--artifacts", str(fp16), "--providers", "cpu", "openvino", *quick, "--quiet", "--out", str(out)]
    assert runtime_cli.main(args) == 0
    runs = {r["provider"]: r for r in json.loads(out.read_text())["runs"]}
    assert runs["openvino"]["error"] is None, runs["openvino"]["error"]
    assert runs["openvino"]["graph_precisions"] == dict.fromkeys(runs["openvino"]["files"], "fp32")
    assert runs["cpu"]["graph_precisions"]["mask_decoder"] == "fp16"
    assert "mask_decoder fp32" in capsys.readouterr().out


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
    ran = "bf16" if bf16_offered() else "fp32"  # the provider's default: BF16 where the CPU offers it
    assert ok["passed"] and ok["thresholds"] == dataclasses.asdict(GateThresholds.for_precision(ran))
    assert set(ok["graph_precisions"].values()) == {ran} and ok["degenerate_episodes"] < 2
    assert f"({ran})" in capsys.readouterr().out

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
    from thread_checks import assert_threads_match_serial

    seg = results[0]["fp32"]
    one, two = seg.encode_supports(episode.supports[:1]), seg.encode_supports(episode.supports[1:3])
    jobs = [(episode.query, one), (episode.supports[3][0], two), (episode.query, {"a": one, "b": two})]
    assert assert_threads_match_serial(seg, jobs, threads=3, repeats=2) == 6
