"""The TensorRT 10 compatibility check rejects what TensorRT cannot parse."""

import onnx
import pytest
from onnx import TensorProto, helper

from fssam2_export.onnx_passes import GraphCheckError, check_tensorrt_compat, trt_op_table


def _model(op: str, dtype=TensorProto.FLOAT, opset: int = 17) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", dtype, [4])
    y = helper.make_tensor_value_info("y", dtype, [4])
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_supported_graph_passes():
    check_tensorrt_compat(_model("Relu"))


@pytest.mark.parametrize("op", ["Unique", "DynamicQuantizeLinear", "SequenceEmpty"])
def test_unsupported_op_is_rejected(op):
    assert not trt_op_table()["operators"][op]["supported"]
    with pytest.raises(GraphCheckError, match=op):
        check_tensorrt_compat(_model(op))


def test_double_tensors_and_bad_opset_are_rejected():
    with pytest.raises(GraphCheckError, match="DOUBLE"):
        check_tensorrt_compat(_model("Relu", TensorProto.DOUBLE))
    with pytest.raises(GraphCheckError, match="opset 21"):
        check_tensorrt_compat(_model("Relu", opset=21))


def test_exported_graphs_pass(artifacts):
    from runtime.manifest import load_manifest

    for path in (artifacts / g.file for g in load_manifest(artifacts).graphs.values()):  # the standard graphs, not ORT flavours
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        check_tensorrt_compat(model)
        assert not any(n.op_type == "If" for n in model.graph.node), f"{path.name}: unfolded shape logic"
