"""INT8 as QDQ (TensorRT-shaped), and a CPU-only dynamic INT8 flavour for ONNX Runtime.

Standard graph: onnxruntime.quantization's `quantize_static` in QDQ format, QInt8 activations and
weights, symmetric (zero point 0), per-channel weights, no INT32 bias quantisation (TensorRT's
DequantizeLinear takes INT8/FP8/INT4 only). Only the inputs of Conv / ConvTranspose / MatMul / Gemm are
quantised, and nothing else reads an INT8-dequantised tensor (`POLICY_OPTIONS`, `keep_float_consumers`):
LayerNorm (and LayerNorm2d's ReduceMean/Sub), Softmax, bias / residual Adds, GELU's Erf, Relu stay in floating point,
and MatMuls between two activations (attention QK^T and AV, the decoder's hypernetwork x mask product)
are excluded by graph pattern. The rest of the graph is then FP16 (default, as TensorRT users deploy)
or FP32.

CPU flavour: ORT's dynamic weight-only INT8 of MatMul/Gemm with constant weights (MatMulInteger +
DynamicQuantizeLinear) after `quant_pre_process`, weights in 7 bits (`reduce_range`) so that every x86 kernel
computes it exactly (`quantize_dynamic_cpu`). Fast on ORT CPU, not TensorRT-parsable; the manifest offers it to
the "cpu" provider only.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data
from onnxruntime.quantization.shape_inference import quant_pre_process

from fssam2_export.onnx_passes import GraphCheckError, check_tensorrt_compat
from fssam2_export.ort_fusion import fuse_attention

from .fp16 import convert_fp16
from .ranges import calibrate, symmetric

QUANTISED_OPS = ["Conv", "ConvTranspose", "MatMul", "Gemm"]
# Never quantised (not in QUANTISED_OPS), listed with the reason for the manifest and README.
FLOAT_OPS: dict[str, str] = {
    "LayerNormalization": "normalisation statistics need float range (TensorRT #3708)",
    "Softmax": "attention probabilities: INT8 wipes out small weights",
    "Add": "residual stream: quantising residual Adds distorts transformer outputs",
    "Erf": "GELU",
}
METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# ORT's QDQ quantiser also quantises the *outputs* of Conv/MatMul/Gemm (this option stops it), and hands a quantised
# tensor's DequantizeLinear output to every consumer, quantised or not (`keep_float_consumers` undoes that).
POLICY_OPTIONS = {"OpTypesToExcludeOutputQuantization": QUANTISED_OPS}


@dataclass(frozen=True)
class QuantisationResult:
    excluded_nodes: dict[str, str]  # node name -> reason
    quantised_nodes: int  # Conv/MatMul/Gemm nodes that got QDQ inputs


def _constants(model: onnx.ModelProto) -> set[str]:
    consts = {t.name for t in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return consts


def int8_exclusions(model: onnx.ModelProto, quantise_heads: bool = True) -> dict[str, str]:
    """Nodes of a quantisable type kept out of INT8, found by graph pattern (not by name)."""
    consts, out = _constants(model), {}
    for n in model.graph.node:
        if n.op_type == "MatMul" and not consts & set(n.input):
            out[n.name] = "MatMul of two activations (attention scores / attention x values / mask product)"
        elif n.op_type == "Gemm" and not quantise_heads:
            out[n.name] = "MLP head (Gemm) kept in float: --int8-heads off"
    return out


def quantize_qdq(
    src: Path,
    dst: Path,
    reader: CalibrationDataReader,
    method: str = "minmax",
    rest: str = "fp16",
    quantise_heads: bool = True,
    exclusions: bool = True,
    extra_blocked_nodes: list[str] = (),
    minmax_ranges: TensorsData | None = None,
) -> QuantisationResult:
    """Write the QDQ INT8 version of `src` to `dst`; `rest` = precision of what is not quantised (with
    `extra_blocked_nodes` kept FP32 when it is fp16). `exclusions=False` quantises the inputs of every
    node, LayerNorm / Softmax / Adds / attention included: only for demonstrating a failing gate.
    `minmax_ranges` (`ranges.minmax` of the same reader) spares MinMax a second calibration pass."""
    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {sorted(METHODS)}, got {method!r}")
    if rest not in ("fp16", "fp32"):
        raise ValueError(f"non-quantised parts must be fp16 or fp32, got {rest!r}")
    model = onnx.load(str(src))
    excluded = int8_exclusions(model, quantise_heads) if exclusions else {}
    op_types = QUANTISED_OPS if exclusions else sorted({n.op_type for n in model.graph.node})
    with tempfile.TemporaryDirectory() as tmp:
        qdq, cache = Path(tmp) / "qdq.onnx", Path(tmp) / "ranges.json"
        # ranges from the memory-bounded calibrator, handed to quantize_static as its calibration cache
        if method == "minmax" and minmax_ranges is not None:
            ranges = symmetric(minmax_ranges)
        else:
            ranges = calibrate(src, reader, METHODS[method], {"symmetric": True})
        save_tensors_data(ranges, cache)
        quantize_static(
            model,
            qdq,
            None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=sorted(excluded),
            calibrate_method=METHODS[method],
            calibration_cache_path=cache,
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": False,
                "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
                "CalibTensorRangeSymmetric": True,
                **(POLICY_OPTIONS if exclusions else {}),
            },
        )
        if exclusions:
            onnx.save(keep_float_consumers(onnx.load(str(qdq))), str(qdq))
        if rest == "fp16":
            convert_fp16(qdq, dst, list(extra_blocked_nodes), op_block_extra=QDQ_OPS)
        else:
            onnx.save(onnx.load(str(qdq)), str(dst))
    result = onnx.load(str(dst))
    quantised = sum(
        1
        for n in result.graph.node
        if n.op_type in QUANTISED_OPS and any(i.endswith("DequantizeLinear_Output") for i in n.input)
    )
    return QuantisationResult(excluded, quantised)


def keep_float_consumers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Re-point every consumer that is not a quantised op (`QUANTISED_OPS`) from an activation's DequantizeLinear
    output back to the float tensor the pair quantises, and drop the pairs nothing reads any more (in place)."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    source: dict[str, str] = {}  # DequantizeLinear output -> the float tensor its QuantizeLinear reads
    for dq in graph.node:
        q = producer.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            if dq.output[0] in outputs:
                raise GraphCheckError(
                    f"graph output {dq.output[0]} is INT8-dequantised; the policy keeps graph outputs float"
                )
            source[dq.output[0]] = q.input[0]
    for n in graph.node:
        if n.op_type not in QUANTISED_OPS:
            for i, name in enumerate(n.input):
                n.input[i] = source.get(name, name)
    while True:  # a pair is dead when its DequantizeLinear output has no reader left
        read = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if n.op_type in QDQ_OPS and not read & set(n.output)]
        if not dead:
            return model
        for n in dead:
            graph.node.remove(n)


def check_qdq(model: onnx.ModelProto) -> None:
    """Raise GraphCheckError unless the graph is TensorRT-parsable QDQ: table ops only, INT8 Q/DQ with zero points 0."""
    check_tensorrt_compat(model)
    inits = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type in QDQ_OPS:
            if len(n.input) < 3 or n.input[2] not in inits:
                raise GraphCheckError(f"{n.name}: Q/DQ without an explicit INT8 zero point")
            zp = inits[n.input[2]]
            if zp.data_type != onnx.TensorProto.INT8 or np.any(numpy_helper.to_array(zp) != 0):
                raise GraphCheckError(f"{n.name}: zero point must be INT8 0 (symmetric) for TensorRT")


def quantize_dynamic_cpu(src: Path, dst: Path) -> tuple[list[str], int]:
    """ORT CPU flavour: attention fused (`ort_fusion`), pre-processed, dynamic INT8 weights of MatMul/Gemm
    with constant B, in 7 bits ([-64, 63]): on x86 CPUs without VNNI ONNX Runtime multiplies uint8 activations by
    int8 weights with VPMADDUBSW, which saturates pairs of products at 16 bits for 8-bit weights, so the same file
    computed another result there (measured on AVX2: image_embed correlation 0.966 against 0.9996 in 7 bits,
    docs/precision.md). Returns the quantised node names and the number of fused attentions."""
    with tempfile.TemporaryDirectory() as tmp:
        fused, pre = Path(tmp) / "fused.onnx", Path(tmp) / "pre.onnx"
        model, attentions = fuse_attention(onnx.load(str(src)))
        onnx.save(model, str(fused))
        quant_pre_process(str(fused), str(pre), skip_symbolic_shape=True)
        model = onnx.load(str(pre))
        quantize_dynamic(
            model,
            dst,
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=False,
            weight_type=QuantType.QInt8,
            reduce_range=True,
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    out = onnx.load(str(dst))
    return sorted(n.name for n in out.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")), attentions
