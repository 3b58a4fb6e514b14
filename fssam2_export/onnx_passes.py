"""Passes over exported graphs: constant folding (onnxscript's optimizer), onnx.checker, shape
inference, and TensorRT 10's operator table."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import onnx
from onnx import TensorProto

# Element types TensorRT 10 can hold in a network (DOUBLE, strings, 16-bit ints etc. are not among them).
TRT_DTYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT32,
              TensorProto.INT64, TensorProto.INT8, TensorProto.UINT8, TensorProto.BOOL}


class GraphCheckError(ValueError):
    """An exported graph is invalid or would not parse in TensorRT 10."""


@lru_cache(maxsize=1)
def trt_op_table() -> dict:
    """TensorRT 10's ONNX operator table (onnx-tensorrt operators.md), bundled as package data."""
    return json.loads(resources.files("fssam2_export").joinpath("data/tensorrt10_onnx_ops.json").read_text())


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                yield from _all_nodes(sub)


def check_tensorrt_compat(model: onnx.ModelProto) -> None:
    """Raise if the graph uses an op, opset or element type that TensorRT 10 cannot parse."""
    table = trt_op_table()
    lo, hi = table["opset_range"]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    problems = []
    if opset is None or not lo <= opset <= hi:
        problems.append(f"opset {opset} outside TensorRT 10's range {lo}-{hi}")
    ops = table["operators"]
    bad_ops = sorted({n.op_type for n in _all_nodes(model.graph) if n.domain not in ("", "ai.onnx") or not ops.get(n.op_type, {}).get("supported")})
    if bad_ops:
        problems.append(f"ops TensorRT 10 does not parse: {', '.join(bad_ops)}")
    infos = list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)
    bad_types = sorted({f"{v.name}:{TensorProto.DataType.Name(v.type.tensor_type.elem_type)}" for v in infos
                        if v.type.tensor_type.elem_type and v.type.tensor_type.elem_type not in TRT_DTYPES})
    bad_types += sorted(f"{t.name}:{TensorProto.DataType.Name(t.data_type)}" for t in model.graph.initializer if t.data_type not in TRT_DTYPES)
    if bad_types:
        problems.append(f"tensors of types TensorRT does not support: {', '.join(bad_types[:10])}")
    if problems:
        raise GraphCheckError("; ".join(problems))


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold the tracer's shape arithmetic (If/Shape chains around static sizes) into constants and
    drop initializers nothing reads any more."""
    from onnxscript import optimizer

    model = optimizer.optimize(model)
    used = {name for node in _all_nodes(model.graph) for name in node.input}
    used |= {o.name for o in model.graph.output}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model


def simplify_and_validate(path) -> onnx.ModelProto:
    """Simplify a graph file in place, re-run shape inference, run the full checker and the
    TensorRT table check; the file is rewritten with the inferred shapes."""
    model = simplify(onnx.load(str(path)))
    del model.graph.value_info[:]  # the tracer's guesses; recompute them
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise GraphCheckError(f"{path}: {e}") from e
    check_tensorrt_compat(model)
    onnx.save(model, str(path))
    return model
