"""Locate where a converted graph starts to drift from its FP32 original.

Every node output that exists under the same name in both graphs (the FP16 converter and the QDQ
quantiser keep original tensor names; OpenVINO's ONNX reader keeps them too) is exposed as an extra graph
output, in chunks to bound memory; both graphs run on the same feeds (the reference in ONNX Runtime FP32,
the candidate in ONNX Runtime or, `first_diverging_node_openvino`, compiled by OpenVINO in BF16 with its
FP32 islands), and the first node in topological order whose output correlation falls below the threshold
is reported, else the least correlated one.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from runtime.tools.fidelity import pearson

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


def _first_drift(
    ref: onnx.ModelProto,
    available: set[str],
    run_candidate: Callable[[list[str]], Mapping[str, np.ndarray]],
    feeds: Mapping[str, np.ndarray],
    threshold: float,
) -> NodeDrift | None:
    """The first node of `ref` whose float output (among the tensors `available` in the candidate) correlates below
    `threshold` with the candidate's, else the least correlated one."""
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    typed = {v.name for v in ref.graph.value_info if v.type.tensor_type.elem_type in float_types}
    order = [(n, o) for n in ref.graph.node for o in n.output if o in typed and o in available]
    worst: NodeDrift | None = None
    for chunk in _chunks(order, _elements(ref)):
        names = [o for _, o in chunk]
        want, have = _run_with_outputs(ref, names, feeds), run_candidate(names)
        for node, name in chunk:
            a, b = want[name], np.asarray(have[name]).astype(np.float32)
            if a.size < 2 or not np.isfinite(a).all() or float(np.std(a)) == 0.0:
                continue
            p = pearson(b, a) if np.isfinite(b).all() else -1.0
            drift = NodeDrift(node.name, node.op_type, name, p, p < threshold)
            if drift.first_below_threshold:
                return drift
            if worst is None or p < worst.pearson:
                worst = drift
    return worst


def first_diverging_node(
    reference: Path, candidate: Path, feeds: Mapping[str, np.ndarray], threshold: float
) -> NodeDrift | None:
    """Where the ONNX graph `candidate` (run by ONNX Runtime) drifts from `reference` on `feeds`."""
    ref, cand = onnx.load(str(reference)), onnx.load(str(candidate))
    available = {o for n in cand.graph.node for o in n.output}
    return _first_drift(ref, available, lambda names: _run_with_outputs(cand, names, feeds), feeds, threshold)


def first_diverging_node_openvino(
    reference: Path,
    graph: str,
    backend,
    feeds: Mapping[str, np.ndarray],
    threshold: float,
    fp32_nodes: Sequence[str] = (),
) -> tuple[NodeDrift | None, list[str]]:
    """Where `reference` (graph `graph`) compiled by `backend` (a `runtime.backends.openvino.OpenVinoBackend`) in BF16 with the FP32 islands
    `fp32_nodes` drifts from itself in ONNX Runtime FP32 on `feeds`, and the ops that made the drifting tensor since
    the compared tensors before it (what an FP32 island lists: OpenVINO's names, which are the nodes of the graph as
    OpenVINO reads it, after `fold_constants`). The drift's node is the op producing the tensor."""
    ref = onnx.load(str(reference))
    with tempfile.TemporaryDirectory(prefix="fssam2-ov-drift-") as tmp:
        model = backend.read_model(reference, fp32_nodes, Path(tmp))
        produced = {t: o for op in model.get_ordered_ops() for o in op.outputs() for t in o.get_names()}
        drift = _first_drift(
            ref,
            set(produced),
            lambda names: backend.run_with_outputs(model, names, feeds, "bf16", graph),
            feeds,
            threshold,
        )
        if drift is None:
            return None, []
        compared = {o for n in ref.graph.node for o in n.output} & set(produced)
        region, seen, stack = [], set(), [produced[drift.tensor].get_node()]
        while stack:
            op = stack.pop()
            if op.get_friendly_name() in seen or op.get_type_name() in ("Constant", "Parameter"):
                continue
            seen.add(op.get_friendly_name())
            if any(o.get_names() for o in op.outputs()):  # an ONNX node (stable name); the rest is its decomposition
                region.append(op.get_friendly_name())
            stack += [
                i.get_source_output().get_node()
                for i in op.inputs()
                if not i.get_source_output().get_names() & compared
            ]
    return replace(drift, node=region[0]), region
