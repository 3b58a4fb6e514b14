"""Passes over exported graphs: constant folding (onnxscript's optimizer), onnx.checker, shape
inference, and TensorRT 10's operator table."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib import resources

import onnx
from onnx import TensorProto, numpy_helper

# Element types TensorRT 10 can hold in a network (DOUBLE, strings, 16-bit ints etc. are not among them).
TRT_DTYPES = {
    TensorProto.FLOAT,
    TensorProto.FLOAT16,
    TensorProto.BFLOAT16,
    TensorProto.INT32,
    TensorProto.INT64,
    TensorProto.INT8,
    TensorProto.UINT8,
    TensorProto.BOOL,
}


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
    bad_ops = sorted(
        {
            n.op_type
            for n in _all_nodes(model.graph)
            if n.domain not in ("", "ai.onnx") or not ops.get(n.op_type, {}).get("supported")
        }
    )
    if bad_ops:
        problems.append(f"ops TensorRT 10 does not parse: {', '.join(bad_ops)}")
    infos = list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)
    bad_types = sorted(
        {
            f"{v.name}:{TensorProto.DataType.Name(v.type.tensor_type.elem_type)}"
            for v in infos
            if v.type.tensor_type.elem_type and v.type.tensor_type.elem_type not in TRT_DTYPES
        }
    )
    bad_types += sorted(
        f"{t.name}:{TensorProto.DataType.Name(t.data_type)}"
        for t in model.graph.initializer
        if t.data_type not in TRT_DTYPES
    )
    if bad_types:
        problems.append(f"tensors of types TensorRT does not support: {', '.join(bad_types[:10])}")
    if problems:
        raise GraphCheckError("; ".join(problems))


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold the tracer's shape arithmetic (If/Shape chains around static sizes) into constants, merge
    initializers with identical contents (the tracer copies a buffer per use: RoPE tables would be
    stored 8x) and drop initializers nothing reads any more."""
    from onnxscript import optimizer

    model = optimizer.optimize(model)
    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    for t in model.graph.initializer:
        key = (t.data_type, tuple(t.dims), hashlib.sha256(numpy_helper.to_array(t).tobytes()).digest())
        rename[t.name] = first.setdefault(key, t.name)
    for node in _all_nodes(model.graph):
        node.input[:] = [rename.get(i, i) for i in node.input]
    used = {name for node in _all_nodes(model.graph) for name in node.input} | {o.name for o in model.graph.output}
    kept = [t for t in model.graph.initializer if t.name in used and rename[t.name] == t.name]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model


def set_output_shapes(model: onnx.ModelProto, shapes: dict[str, list[int | str]]) -> None:
    """Declare the graph outputs' shapes (ints static, strings dynamic axis names); the tracer leaves
    some as anonymous symbols. Shape inference then checks the declaration against the graph."""
    for out in model.graph.output:
        dims = out.type.tensor_type.shape.dim
        del dims[:]
        for d in shapes[out.name]:
            dims.add().CopyFrom(
                onnx.TensorShapeProto.Dimension(**({"dim_param": d} if isinstance(d, str) else {"dim_value": d}))
            )


def simplify_and_validate(path, output_shapes: dict[str, list[int | str]]) -> onnx.ModelProto:
    """Simplify a graph file in place, declare its output shapes, re-run shape inference, run the full
    checker and the TensorRT table check; the file is rewritten with the inferred shapes."""
    model = simplify(onnx.load(str(path)))
    set_output_shapes(model, output_shapes)
    del model.graph.value_info[:]  # the tracer's guesses; recompute them
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise GraphCheckError(f"{path}: {e}") from e
    check_tensorrt_compat(model)
    onnx.save(model, str(path))
    return model
