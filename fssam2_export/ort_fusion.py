"""Fused attention for ONNX Runtime: an ORT-flavoured copy of each exported graph.

The exporter writes scaled-dot-product attention as MatMul(Q*s, K^T*s) -> Softmax -> MatMul(., V) on
4-D (batch, heads, tokens, head_dim) tensors, with the scale split as sqrt(scale) on Q and on K^T and
sometimes computed from shapes. ONNX Runtime materialises the full score matrix for that; rewritten into
`com.microsoft.MultiHeadAttention` (3-D inputs, `num_heads`, `scale`) it runs its fused CPU kernel (and
the flash / memory-efficient kernels on CUDA). The rewrite only adds Transpose/Reshape around the fused
node; ORT's own optimiser cancels them against the exporter's.

The standard graph stays untouched (TensorRT-parsable); the fused copy is a manifest flavour for the
"cpu" and "cuda" providers, checked against the standard graph before it is recorded.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from runtime.engine.manifest import Flavour, GraphSpec, file_sha256

FUSION = "MultiHeadAttention"
MS_DOMAIN = "com.microsoft"
FLAVOUR_PROVIDERS = ["cpu", "cuda"]
PARITY_ATOL = {"fp32": 1e-4, "fp16": 1e-2, "int8": 1e-2}  # fused vs standard, by the graph's precision


class FusionError(ValueError):
    """A fused graph does not reproduce its standard graph."""


@dataclass(frozen=True)
class _Attention:
    q: str  # (B, H, Sq, D)
    kt: str  # (B, H, D, Sk)
    v: str  # (B, H, Sk, Dv)
    out: str  # (B, H, Sq, Dv)
    heads: int
    dv: int
    scale_factors: tuple[tuple[str, int], ...]  # (scalar tensor, +1 multiply / -1 divide)
    removed: tuple[int, ...]  # ids of the nodes the fused node replaces


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        g = model.graph
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in g.output}
        self.inits = {t.name: t for t in g.initializer}
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        self.shapes = {
            v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
            if v.type.tensor_type.HasField("shape")
        }
        self.shapes |= {t.name: list(t.dims) for t in g.initializer}

    def only_used_by(self, name: str, node: onnx.NodeProto) -> bool:
        return name not in self.outputs and [id(c) for c in self.consumers.get(name, [])] == [id(node)]

    def is_scalar(self, name: str) -> bool:
        shape = self.shapes.get(name)
        return shape is not None and all(d == 1 for d in shape)

    def split_scalar_mul(
        self, name: str, consumer: onnx.NodeProto
    ) -> tuple[str, list[tuple[str, int]], list[onnx.NodeProto]]:
        """`name` = Mul(x, scalar) used only by `consumer` -> (x, [(scalar, +1)], [mul]); else (name, [], [])."""
        node = self.producer.get(name)
        if node is None or node.op_type != "Mul" or not self.only_used_by(name, consumer):
            return name, [], []
        a, b = node.input
        if self.is_scalar(b):
            return a, [(b, 1)], [node]
        if self.is_scalar(a):
            return b, [(a, 1)], [node]
        return name, [], []

    def match(self, softmax: onnx.NodeProto) -> _Attention | None:
        (scores,) = softmax.input
        rank = len(self.shapes.get(scores, []))
        axis = next((a.i for a in softmax.attribute if a.name == "axis"), -1)
        if rank != 4 or axis not in (-1, 3):
            return None
        users = self.consumers.get(softmax.output[0], [])
        if (
            len(users) != 1
            or users[0].op_type != "MatMul"
            or users[0].input[0] != softmax.output[0]
            or softmax.output[0] in self.outputs
        ):
            return None
        pv = users[0]
        removed, factors = [softmax, pv], []
        user, node = softmax, self.producer.get(scores)  # optional scale between the scores and the softmax
        if node is not None and node.op_type in ("Mul", "Div") and self.only_used_by(scores, softmax):
            x, s = node.input
            if node.op_type == "Mul" and self.is_scalar(x):
                x, s = s, x
            if not self.is_scalar(s):
                return None
            factors.append((s, 1 if node.op_type == "Mul" else -1))
            removed.append(node)
            user, scores, node = node, x, self.producer.get(x)
        if node is None or node.op_type != "MatMul" or not self.only_used_by(scores, user):
            return None
        removed.append(node)
        q, fq, mq = self.split_scalar_mul(node.input[0], node)
        kt, fk, mk = self.split_scalar_mul(node.input[1], node)
        q_shape, v_shape = self.shapes.get(q), self.shapes.get(pv.input[1])
        if q_shape is None or v_shape is None or len(q_shape) != 4 or len(v_shape) != 4:
            return None
        heads, dv = q_shape[1], v_shape[3]
        if heads is None or dv is None or q_shape[3] is None:
            return None
        return _Attention(
            q,
            kt,
            pv.input[1],
            pv.output[0],
            heads,
            dv,
            tuple(factors + fq + fk),
            tuple(id(n) for n in removed + mq + mk),
        )


def _evaluate_scalars(g: _Graph, names: list[str]) -> dict[str, float]:
    """Values of scalar tensors computed from initializers, constants and static parts of shapes.

    The backward slice is evaluated with onnx's reference evaluator, each Shape node replaced by its
    inferred shape; unknown dimensions are set to two different sentinels and a scalar whose value
    depends on them is left out (not fusable)."""
    constant = {n: float(numpy_helper.to_array(g.inits[n]).reshape(-1)[0]) for n in names if n in g.inits}
    names = [n for n in names if n not in g.inits]
    if not names:
        return constant
    nodes, seen = [], set()
    stack = list(names)
    while stack:
        name = stack.pop()
        if name in seen or name in g.inits or not name:
            continue
        seen.add(name)
        node = g.producer.get(name)
        if node is None:
            return constant  # depends on a graph input: not a constant
        nodes.append(node)
        if node.op_type != "Shape":
            stack.extend(node.input)
    order = {id(n): i for i, n in enumerate(g.model.graph.node)}
    nodes = sorted({id(n): n for n in nodes}.values(), key=lambda n: order[id(n)])
    needed = {i for n in nodes if n.op_type != "Shape" for i in n.input}
    results = []
    for sentinel in (7, 11):
        body = []
        for n in nodes:
            if n.op_type == "Shape":
                attrs = {a.name: a.i for a in n.attribute}
                dims = [sentinel if d is None else d for d in g.shapes.get(n.input[0], [])]
                if not dims:
                    return constant
                dims = dims[attrs.get("start", 0) : attrs.get("end", len(dims))]
                body.append(
                    helper.make_node(
                        "Constant", [], list(n.output), value=numpy_helper.from_array(np.array(dims, np.int64))
                    )
                )
            else:
                body.append(n)
        graph = helper.make_graph(
            body,
            "scales",
            [],
            [helper.make_tensor_value_info(x, onnx.TensorProto.UNDEFINED, None) for x in names],
            [g.inits[i] for i in needed if i in g.inits],
        )
        sub = helper.make_model(graph, opset_imports=list(g.model.opset_import), ir_version=g.model.ir_version)
        from onnx.reference import ReferenceEvaluator

        results.append(ReferenceEvaluator(sub).run(None, {}))
    return constant | {
        n: float(np.asarray(a).reshape(-1)[0]) for n, a, b in zip(names, *results) if np.array_equal(a, b)
    }


def fuse_attention(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite every matched attention into com.microsoft.MultiHeadAttention; returns (model, count)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = _Graph(model)
    matches = [m for s in model.graph.node if s.op_type == "Softmax" and (m := g.match(s)) is not None]
    scalars = _evaluate_scalars(g, sorted({name for m in matches for name, _ in m.scale_factors})) if matches else {}
    fused: dict[int, list[onnx.NodeProto]] = {}  # id of the attention's last MatMul -> nodes replacing it
    removed: set[int] = set()
    shared = {"flat": numpy_helper.from_array(np.array([0, 0, -1], np.int64), "fssam2_mha_flat")}
    for i, m in enumerate(matches):
        if any(name not in scalars for name, _ in m.scale_factors):
            continue
        scale = float(np.prod([scalars[n] ** sign for n, sign in m.scale_factors])) if m.scale_factors else 1.0
        p = f"fssam2_mha{i}"
        split = numpy_helper.from_array(np.array([0, 0, m.heads, m.dv], np.int64), f"{p}_split")
        model.graph.initializer.append(split)
        nodes = [
            helper.make_node("Transpose", [m.q], [f"{p}_q4"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", [f"{p}_q4", "fssam2_mha_flat"], [f"{p}_q"]),
            helper.make_node("Transpose", [m.kt], [f"{p}_k4"], perm=[0, 3, 1, 2]),
            helper.make_node("Reshape", [f"{p}_k4", "fssam2_mha_flat"], [f"{p}_k"]),
            helper.make_node("Transpose", [m.v], [f"{p}_v4"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", [f"{p}_v4", "fssam2_mha_flat"], [f"{p}_v"]),
            helper.make_node(
                FUSION,
                [f"{p}_q", f"{p}_k", f"{p}_v"],
                [f"{p}_o"],
                domain=MS_DOMAIN,
                num_heads=m.heads,
                scale=scale,
                name=f"{p}",
            ),
            helper.make_node("Reshape", [f"{p}_o", split.name], [f"{p}_o4"]),
            helper.make_node("Transpose", [f"{p}_o4"], [m.out], perm=[0, 2, 1, 3]),
        ]
        last = next(n for n in model.graph.node if m.out in n.output)
        fused[id(last)] = nodes
        removed.update(m.removed)
    if not fused:
        return model, 0
    model.graph.initializer.append(shared["flat"])
    new_nodes = []
    for n in model.graph.node:
        new_nodes.extend(fused.get(id(n), []))
        if id(n) not in removed:
            new_nodes.append(n)
    del model.graph.node[:]
    model.graph.node.extend(_live(model, new_nodes))
    del model.graph.value_info[:]
    used = {i for n in model.graph.node for i in n.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return model, len(fused)


def _live(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Drop nodes none of whose outputs is used (the scale arithmetic of fused attentions)."""
    wanted = {o.name for o in model.graph.output}
    live = []
    for n in reversed(nodes):
        if any(o in wanted for o in n.output):
            live.append(n)
            wanted.update(n.input)
    return live[::-1]


def _random_feeds(spec: GraphSpec, dynamic: dict[str, int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        t.name: rng.standard_normal([dynamic[d] if isinstance(d, str) else d for d in t.shape]).astype(t.dtype)
        for t in spec.inputs
    }


def check_parity(
    standard: Path, fused: Path, spec: GraphSpec, dynamic: dict[str, int], atol: float | None = None
) -> float:
    """Run both files in ONNX Runtime (CPU) on the same random inputs; max-abs difference, raises above
    `atol` (default by the graph's precision)."""
    import onnxruntime as ort

    atol = PARITY_ATOL.get(spec.precision, PARITY_ATOL["fp32"]) if atol is None else atol
    feeds = _random_feeds(spec, dynamic)
    a, b = (
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds) for p in (standard, fused)
    )
    err = max(float(np.abs(x.astype(np.float64) - y).max()) for x, y in zip(a, b))
    if not err <= atol:
        raise FusionError(f"{fused.name}: fused graph differs from {standard.name} by {err:.2e} (> {atol:.0e})")
    return err


def add_ort_flavours(
    out_dir: Path, specs: dict[str, GraphSpec], dynamic: dict[str, int], progress: bool = False
) -> dict[str, GraphSpec]:
    """Write `<graph>.mha.onnx` beside each standard graph in which attention was fused, check it against
    the standard graph (values for dynamic axes from `dynamic`) and return the specs with the flavour added."""
    import onnxruntime as ort
    from tqdm import tqdm

    out = {}
    for name, spec in tqdm(specs.items(), desc="ort flavours", unit="graph", disable=not progress):
        model, count = fuse_attention(onnx.load(str(out_dir / spec.file)))
        if not count:
            out[name] = spec
            continue
        path = out_dir / f"{name}.mha.onnx"
        onnx.save(model, str(path))
        try:
            err = check_parity(out_dir / spec.file, path, spec, dynamic)
        except FusionError:
            raise
        except Exception as e:  # ORT has no CPU kernel for this variant (e.g. an element type): keep the standard graph
            warnings.warn(f"{name}: no fused-attention flavour, ONNX Runtime cannot run it: {e}", stacklevel=2)
            path.unlink()
            out[name] = spec
            continue
        flavour = Flavour(
            kind="onnx",
            file=path.name,
            sha256=file_sha256(path),
            providers=list(FLAVOUR_PROVIDERS),
            precision=spec.precision,
            source_sha256=spec.sha256,
            meta={"fusion": FUSION, "fused_attentions": count, "onnxruntime": ort.__version__, "parity_max_abs": err},
        )
        out[name] = replace(spec, flavours=[*spec.flavours, flavour])
    return out
