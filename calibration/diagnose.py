"""Locate where a converted graph starts to drift from its FP32 original.

Every node output that exists under the same name in both graphs (the FP16 converter and the QDQ
quantiser keep original tensor names) is exposed as an extra graph output, in chunks to bound memory;
both graphs run on the same feeds, and the first node in topological order whose output correlation
falls below the threshold is reported, else the least correlated one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from runtime.fidelity import pearson

CHUNK_ELEMENTS = 1 << 26  # ~256 MB of float32 exposed per session
DYNAMIC_DIM = 4096  # size assumed for a dynamic axis when budgeting


@dataclass(frozen=True)
class NodeDrift:
    node: str
    op_type: str
    tensor: str
    pearson: float
    first_below_threshold: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _run_with_outputs(
    model: onnx.ModelProto, names: list[str], feeds: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    return dict(zip(names, session.run(names, {k: v for k, v in feeds.items() if k in wanted})))


def _elements(model: onnx.ModelProto) -> dict[str, int]:
    sizes = {}
    for v in model.graph.value_info:
        dims = [d.dim_value if d.HasField("dim_value") else DYNAMIC_DIM for d in v.type.tensor_type.shape.dim]
        sizes[v.name] = int(np.prod(dims)) if dims else 1
    return sizes


def _chunks(order: list, sizes: dict[str, int]):
    """Consecutive runs of (node, tensor) whose tensors hold at most CHUNK_ELEMENTS together (at least one each)."""
    chunk, total = [], 0
    for item in order:
        n = sizes.get(item[1], DYNAMIC_DIM)
        if chunk and total + n > CHUNK_ELEMENTS:
            yield chunk
            chunk, total = [], 0
        chunk.append(item)
        total += n
    if chunk:
        yield chunk


def first_diverging_node(
    reference: Path, candidate: Path, feeds: Mapping[str, np.ndarray], threshold: float
) -> NodeDrift | None:
    ref, cand = onnx.load(str(reference)), onnx.load(str(candidate))
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    typed = {v.name for v in ref.graph.value_info if v.type.tensor_type.elem_type in float_types}
    in_cand = {o for n in cand.graph.node for o in n.output}
    order = [(n, o) for n in ref.graph.node for o in n.output if o in typed and o in in_cand]
    worst: NodeDrift | None = None
    for chunk in _chunks(order, _elements(ref)):
        names = [o for _, o in chunk]
        want, have = _run_with_outputs(ref, names, feeds), _run_with_outputs(cand, names, feeds)
        for node, name in chunk:
            a, b = want[name], have[name].astype(np.float32)
            if a.size < 2 or not np.isfinite(a).all() or float(np.std(a)) == 0.0:
                continue
            p = pearson(b, a) if np.isfinite(b).all() else -1.0
            drift = NodeDrift(node.name, node.op_type, name, p, p < threshold)
            if drift.first_below_threshold:
                return drift
            if worst is None or p < worst.pearson:
                worst = drift
    return worst
