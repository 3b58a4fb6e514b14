"""What the `openvino` backend does to a graph before OpenVINO compiles it, and the tables that decide it.

- FP32 islands: a flavour's `fp32_nodes` keep FP32 inside a BF16 graph. OpenVINO has no API to mark them; its IR
  reader restores the runtime attribute `DisablePrecisionConversion`, which the CPU plugin honours under any inference
  precision hint, so a graph with islands goes through IR (`island_model`) before it is compiled (with each marked
  MatMul kept apart from its bias, `_unfusable`).
- Per graph and precision, `TUNING` adds what measurements showed faster: BF16 memory attention compiles without
  OpenVINO's fused attention kernel, its attentions over the memory rewritten into blocks of 512 query tokens
  (`block_attention`), one compiled model for every K.
- An INT8 graph loads with its weights in 7 bits where the CPU's INT8 matmuls would saturate (`int8_saturates`,
  `int8_weights_in_7_bits`).
- An INT8 export's mask decoder compiles in FP32 unless a precision is given (`AUTO_PRECISION`).
- Constant subgraphs are folded by ONNX Runtime first (`fold_constants`); `runtime_precisions` reads back what each
  op of a compiled model runs in.

openvino (and onnxruntime, for folding) are imported inside the functions that use them.
"""

from __future__ import annotations

import platform
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..engine.errors import BackendError, ManifestError
from .cache import cpu_flags

KEEP_FP32_ATTRIBUTE = "DisablePrecisionConversion"
KEEP_FP32 = f'<attribute name="{KEEP_FP32_ATTRIBUTE}" version="0" value="dynamic:f16"/>'
ISLANDS_VERSION = 2  # how `island_model` marks (2: `_unfusable`); in the cache key, so older blobs with islands rebuild


@dataclass(frozen=True)
class Tuning:
    """How one graph compiles in one precision, beyond the precision: OpenVINO compile `properties`,
    `query_block` (attentions over the memory computed over blocks of that many query tokens: `block_attention`), and
    `int8_weights_7bit` (its INT8 weights halved into 7 bits: `int8_weights_in_7_bits`). In the cache key."""

    properties: Mapping[str, str] = field(default_factory=dict)
    query_block: int = 0
    int8_weights_7bit: bool = False

    def key(self) -> str:
        return (
            "".join(f"-{k}={v}" for k, v in sorted(self.properties.items()))
            + (f"-qblock={self.query_block}" if self.query_block else "")
            + ("-int8w7" if self.int8_weights_7bit else "")
        )


NO_TUNING = Tuning()  # a graph compiled with nothing beyond its precision

# Measured at 1024² (docs/performance.md, "OpenVINO per-graph properties" and "Memory attention in query blocks"):
# BF16 memory attention with its attention as separate oneDNN MatMul / Softmax / MatMul ops instead of OpenVINO's
# fused snippet kernel takes 0.80-0.85x the time on AMX (the image encoder and mask decoder 1.1x, FP32 memory
# attention the same). Those ops materialise the scores: whole, +500 MB peak at K = 5; over blocks of 512 query
# tokens, 42 MB per cross-attention at K = 5 and about as fast (K = 5 on AVX512_BF16: 0.60x the fused kernel's time,
# whole 0.58x; peak RSS 412 MB, whole 968 MB, fused 370 MB).
TUNING: dict[tuple[str, str], Tuning] = {("memory_attention", "bf16"): Tuning({"SNIPPETS_MODE": "DISABLE"}, 512)}

# Measured (docs/performance.md, "INT8 on an AVX512_BF16 + VNNI CPU"): an INT8 export's mask decoder with its
# non-quantised ops in BF16 failed the INT8 gate on AVX512_BF16 at 128² and 1024² (logits correlation 0.93-0.94), and
# on AMX against one of two FP32 references; in FP32 it passes (0.999) for 6-16 ms more per query. The other INT8
# graphs pass in BF16 and take 0.55-0.7x their FP32 time there.
AUTO_PRECISION: dict[tuple[str, str], str] = {("mask_decoder", "int8"): "fp32"}


def int8_saturates() -> bool:
    """Whether this CPU's INT8 matmuls saturate: x86 without VNNI or AMX-INT8 multiplies uint8 by int8 with
    VPMADDUBSW, which clamps each pair of products to 16 bits (oneDNN's advice: weights in 7 bits). Measured with
    OpenVINO on an AVX2-only CPU, an INT8 export's image_embed correlation 0.930, 0.998 with 7-bit weights."""
    return platform.machine().lower() in ("x86_64", "amd64") and not cpu_flags() & {
        "avx512_vnni",
        "avx_vnni",
        "amx_int8",
    }


def _constant_below(output):
    """The Constant an output comes from through shape-only / element-type-only ops, else None."""
    node = output.get_node()
    while node.get_type_name() in ("Convert", "Reshape", "Unsqueeze", "Squeeze"):
        node = node.input_value(0).get_node()
    return node if node.get_type_name() == "Constant" else None


def _only_consumer(node):
    targets = list(node.output(0).get_target_inputs())
    return targets[0] if len(targets) == 1 else None


def int8_weights_in_7_bits(model) -> int:
    """Rewrite `model` (OpenVINO's, as read from ONNX) in place: each constant INT8 weight of a dequantization
    (Constant i8 -> Convert [-> Subtract a zero point of 0] -> Multiply by its scale) halved into [-64, 63], its scale
    doubled: the same values to within half a step. Returns how many."""
    import openvino.opset13 as ops

    count = 0
    for const in [op for op in model.get_ordered_ops() if op.get_type_name() == "Constant"]:
        if const.get_output_element_type(0).get_type_name() != "i8":
            continue
        to_convert = _only_consumer(const)
        if to_convert is None or to_convert.get_node().get_type_name() != "Convert":
            continue
        step = _only_consumer(to_convert.get_node())
        if step is not None and step.get_node().get_type_name() == "Subtract" and step.get_index() == 0:
            zero = _constant_below(step.get_node().input_value(1))
            if zero is None or zero.get_data().any():
                continue
            step = _only_consumer(step.get_node())
        if step is None or step.get_node().get_type_name() != "Multiply":
            continue
        scale_port = step.get_node().input(1 - step.get_index())
        scale = scale_port.get_source_output()
        if _constant_below(scale) is None:
            continue
        halved = np.clip(np.round(const.get_data() / 2), -64, 63).astype(np.int8)
        to_convert.replace_source_output(ops.constant(halved).output(0))
        two = ops.constant(np.array(2, dtype=scale.get_element_type().to_dtype()))
        scale_port.replace_source_output(ops.multiply(scale, two).output(0))
        count += 1
    model.validate_nodes_and_infer_types()
    return count


def fold_constants(source: Path, out: Path) -> Path:
    """Write `source` with its constant subgraphs evaluated, by ONNX Runtime's basic (provider-independent,
    standard-ops-only) optimisation level. OpenVINO folds them itself, but with reference kernels: the image
    encoder's interpolated position embedding made its compile take 30 s at 256² and ~290 s at 1024², against
    ~1 s here; the folded graph then compiles in a few seconds."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(source), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT's own exception types for corrupt files / bad graphs
        raise BackendError(f"could not read {source}: {e}") from e
    return out


def _decomposition(model, names: Sequence[str], source: str) -> set[str]:
    """The ops implementing the ONNX nodes `names`: the op named after each node and its producers back to the
    previous named tensors (OpenVINO's ONNX reader splits e.g. LayerNormalization into MVN, Multiply, Add and names
    only the last one). Unknown names raise ManifestError."""
    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    unknown = sorted(set(names) - ops.keys())
    if unknown:
        raise ManifestError(f"{source}: the openvino flavour's fp32_nodes {unknown} are not nodes of this graph")
    found: set[str] = set()
    stack = [ops[n] for n in names]
    while stack:
        op = stack.pop()
        if op.get_friendly_name() in found:
            continue
        found.add(op.get_friendly_name())
        for value in (i.get_source_output() for i in op.inputs()):
            if not value.get_names() and value.get_node().get_type_name() not in ("Constant", "Parameter"):
                stack.append(value.get_node())
    return found


def _unfusable(model, marked: set[str]) -> set[str]:
    """Give each marked MatMul with constant weights an identity consumer, `Maximum(x, x)`, ahead of its consumers;
    the names of the ops added. The CPU plugin turns such a MatMul into a FullyConnected and fuses a following bias
    Add into a new FullyConnected (`FullyConnectedBiasFusion`: it needs the FullyConnected's only consumer to be the
    Add), which drops the non-copyable `DisablePrecisionConversion`; with two consumer ports the fusion does not
    apply, the mark stays on the FullyConnected and the Add runs as an eltwise (fused with the Maximum)."""
    import openvino.opset13 as ops

    added: set[str] = set()
    for op in model.get_ordered_ops():
        weighted = op.get_type_name() == "MatMul" and op.input_value(1).get_node().get_type_name() == "Constant"
        if not weighted or op.get_friendly_name() not in marked:
            continue
        out = op.output(0)
        consumers, names = list(out.get_target_inputs()), out.get_names()
        same = ops.maximum(out, out)
        same.set_friendly_name(f"{op.get_friendly_name()}/unfused")
        for consumer in consumers:
            consumer.replace_source_output(same.output(0))
        out.get_tensor().set_names(set())  # the tensor's names (model outputs, compared tensors) move to the copy
        same.output(0).get_tensor().set_names(names)
        added.add(same.get_friendly_name())
    return added


def island_model(core, model, fp32_nodes: Sequence[str], workdir: Path, source: str = "graph"):
    """A copy of `model` with the nodes `fp32_nodes` marked to keep FP32 under a BF16 / FP16 inference precision:
    saved as IR, `DisablePrecisionConversion` added to each node's layer (and its decomposition's, and `_unfusable`'s
    additions), read back. The IR files in `workdir` must outlive the returned model (its weights are mapped from
    them)."""
    import openvino

    marked = _decomposition(model, fp32_nodes, source)
    model = model.clone()
    marked |= _unfusable(model, marked)
    xml = workdir / "islands.xml"
    openvino.save_model(model, str(xml), compress_to_fp16=False)
    tree = ET.parse(xml)
    for layer in tree.getroot().iter("layer"):
        if layer.get("name") in marked:
            info = layer.find("rt_info")
            if info is None:
                info = ET.Element("rt_info")
                children = list(layer)
                at = next((i for i, c in enumerate(children) if c.tag == "input"), len(children))
                layer.insert(at, info)
            info.append(ET.fromstring(KEEP_FP32))
    tree.write(xml)
    return core.read_model(str(xml))


def runtime_precisions(compiled) -> dict[str, str]:
    """What each op of the source model runs in, read from the compiled model: name -> "f32", "bf16", ..."""
    ran: dict[str, str] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        precision = info["runtimePrecision"].astype(str)
        for name in filter(None, info["originalLayersNames"].astype(str).split(",")):
            ran[name] = precision
    return ran


def _keeps_fp32(op) -> bool:
    """Whether `op` is marked to keep FP32 (read from IR, the attribute's key carries its version)."""
    return any(key.startswith(KEEP_FP32_ATTRIBUTE) for key in op.get_rt_info().keys())


def block_attention(model, block: int) -> int:
    """Rewrite `model` in place: each attention over a dynamic number of keys (memory attention's cross-attentions;
    the memory grows with K), MatMul-Softmax-MatMul with the softmax over the keys, computed for blocks of `block`
    query tokens and concatenated. Same products; run as separate ops, only a block's scores (`block` x keys) are held
    at once. Attentions with a node kept FP32 (an FP32 island) stay whole. Returns how many were blocked."""
    import openvino.opset13 as ops

    blocked = 0
    for softmax in [op for op in model.get_ordered_ops() if op.get_type_name() == "Softmax"]:
        scores, consumers = softmax.input_value(0).get_node(), list(softmax.output(0).get_target_inputs())
        if scores.get_type_name() != "MatMul" or len(consumers) != 1 or consumers[0].get_index() != 0:
            continue
        mix = consumers[0].get_node()
        shape, rank = softmax.get_output_partial_shape(0), softmax.get_output_partial_shape(0).rank.get_length()
        tokens = shape[rank - 2]
        if (
            mix.get_type_name() != "MatMul"
            or softmax.get_attributes()["axis"] not in (-1, rank - 1)  # normalised over the keys, not the queries
            or scores.get_attributes()["transpose_a"]
            or mix.get_attributes()["transpose_a"]
            or shape[rank - 1].is_static  # self-attention: as many keys at every K
            or tokens.is_dynamic
            or tokens.get_length() <= block
            or any(_keeps_fp32(op) for op in (scores, softmax, mix))
        ):
            continue
        n = tokens.get_length()
        sizes = [block] * (n // block) + ([n % block] if n % block else [])
        queries = ops.variadic_split(scores.input_value(0), np.int64(-2), np.array(sizes, np.int64))
        parts = []
        for i, query in enumerate(queries.outputs()):
            part = ops.matmul(query, scores.input_value(1), False, scores.get_attributes()["transpose_b"])
            part = ops.softmax(part, -1)
            part = ops.matmul(part, mix.input_value(1), False, mix.get_attributes()["transpose_b"])
            part.set_friendly_name(f"{mix.get_friendly_name()}/block{i}")
            parts.append(part.output(0))
        joined = ops.concat(parts, -2)
        joined.set_friendly_name(f"{mix.get_friendly_name()}/blocks")
        out = mix.output(0)
        for consumer in list(out.get_target_inputs()):
            consumer.replace_source_output(joined.output(0))
        names = out.get_names()
        out.get_tensor().set_names(set())
        joined.output(0).get_tensor().set_names(names)
        blocked += 1
    model.validate_nodes_and_infer_types()
    return blocked
