"""Fused attention (com.microsoft.MultiHeadAttention) flavours: the rewrite and its parity."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fssam2_export.onnx_passes import check_tensorrt_compat
from fssam2_export.ort_fusion import FusionError, check_parity, fuse_attention
from runtime.engine.manifest import load_manifest

H, D, DV, SQ = 2, 8, 4, 6


def _attention_model(shared_softmax: bool = False) -> onnx.ModelProto:
    """Exporter-style attention: sqrt-scale from the head dim's shape on Q, K^T as (0,2,3,1) of
    (B, Sk, H, D), an extra Div after the scores, dynamic key length."""
    c = lambda name, v: numpy_helper.from_array(np.array(v), name)  # noqa: E731
    nodes = [
        helper.make_node("Reshape", ["x", "q_shape"], ["q_bshd"]),
        helper.make_node("Transpose", ["q_bshd"], ["q4"], perm=[0, 2, 1, 3]),
        helper.make_node("Shape", ["q4"], ["q_dims"], start=-1),
        helper.make_node("Cast", ["q_dims"], ["d_f"], to=TensorProto.FLOAT),
        helper.make_node("Sqrt", ["d_f"], ["sqrt_d"]),
        helper.make_node("Reciprocal", ["sqrt_d"], ["s"]),
        helper.make_node("Mul", ["q4", "s"], ["q_scaled"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["q_scaled", "kt"], ["scores"]),
        helper.make_node("Div", ["scores", "two"], ["scores2"]),
        helper.make_node("Softmax", ["scores2"], ["probs"], axis=-1),
        helper.make_node("Transpose", ["v"], ["v4"], perm=[0, 2, 1, 3]),
        helper.make_node("MatMul", ["probs", "v4"], ["o4"]),
        helper.make_node("Transpose", ["o4"], ["o"], perm=[0, 2, 1, 3]),
    ]
    outputs = [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1, SQ, H, DV])]
    if shared_softmax:
        outputs.append(helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, H, SQ, "sk"]))
    graph = helper.make_graph(
        nodes,
        "attn",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, SQ, H * D]),
            helper.make_tensor_value_info("k", TensorProto.FLOAT, [1, "sk", H, D]),
            helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, "sk", H, DV]),
        ],
        outputs,
        [
            c("q_shape", np.array([1, SQ, H, D], np.int64)),
            c("two", np.array([2.0], np.float32)),
            c("unused", np.zeros(3, np.float32)),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("sk", [5, 11])
def test_rewrite_matches_the_pattern_exactly(sk):
    model = _attention_model()
    fused, count = fuse_attention(model)
    assert count == 1
    ops = [n.op_type for n in fused.graph.node]
    assert "MultiHeadAttention" in ops and "Softmax" not in ops and "Sqrt" not in ops  # dead scale arithmetic removed
    mha = next(n for n in fused.graph.node if n.op_type == "MultiHeadAttention")
    attrs = {a.name: helper.get_attribute_value(a) for a in mha.attribute}
    assert attrs["num_heads"] == H and attrs["scale"] == pytest.approx(1 / (2 * np.sqrt(D)))
    rng = np.random.default_rng(0)
    feeds = {
        "x": rng.standard_normal((1, SQ, H * D), np.float32),
        "k": rng.standard_normal((1, sk, H, D), np.float32),
        "v": rng.standard_normal((1, sk, H, DV), np.float32),
    }
    np.testing.assert_allclose(_run(fused, feeds)[0], _run(model, feeds)[0], atol=1e-5)


def test_attention_whose_scores_are_used_elsewhere_is_left_alone():
    _, count = fuse_attention(_attention_model(shared_softmax=True))
    assert count == 0


def test_exported_graphs_carry_checked_fused_flavours(artifacts):
    m = load_manifest(artifacts)
    fused = {name: g.flavours[0] for name, g in m.graphs.items() if g.flavours}
    assert set(fused) == {"image_encoder", "memory_attention", "mask_decoder"}  # the memory encoder has no attention
    for name, f in fused.items():
        g = m.graphs[name]
        assert f.kind == "onnx" and f.providers == ["cpu", "cuda"] and f.source_sha256 == g.sha256
        assert f.meta["fusion"] == "MultiHeadAttention" and f.meta["parity_max_abs"] <= 1e-4
        assert f.meta["onnxruntime"] == ort.__version__
        assert g.artifact_for("cpu") == f and g.artifact_for("tensorrt") == g.standard
        check_tensorrt_compat(onnx.load(str(artifacts / g.file)))  # the standard graph stays TensorRT-parsable
    assert fused["memory_attention"].meta["fused_attentions"] == 8  # 4 layers x (self + cross)


@pytest.mark.parametrize("k", [1, 5])
def test_fused_memory_attention_matches_standard(artifacts, record_metric, k):
    m = load_manifest(artifacts)
    spec = m.graphs["memory_attention"]
    err = check_parity(
        artifacts / spec.file,
        artifacts / spec.flavours[0].file,
        spec,
        {"num_memory_tokens": k * m.episode.tokens_per_support},
    )
    record_metric(f"memory_attention fused vs standard max-abs K={k}", err)
    assert err <= 1e-4


def test_parity_check_catches_a_wrong_fusion(artifacts, tmp_path):
    m = load_manifest(artifacts)
    spec = m.graphs["mask_decoder"]
    broken = onnx.load(str(artifacts / spec.flavours[0].file))
    mha = next(n for n in broken.graph.node if n.op_type == "MultiHeadAttention")
    scale = next(a for a in mha.attribute if a.name == "scale")
    scale.f *= 1.5
    onnx.save(broken, str(tmp_path / "broken.onnx"))
    with pytest.raises(FusionError, match="differs"):
        check_parity(artifacts / spec.file, tmp_path / "broken.onnx", spec, {})
