"""FP16 graphs with FP32 islands: the block list, a data-driven range report, the conversion.

Conversion uses onnxruntime's `onnxruntime.transformers.float16.convert_float_to_float16` (the
maintained fork of onnxconverter-common's converter that ships inside onnxruntime, so no extra
dependency): tensor types become float16 and explicit Casts surround every blocked node, which is
what a strongly typed TensorRT network needs. Graph inputs and outputs stay float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization.calibrate import TensorsData
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

FP16_MAX = 65504.0

# Ops kept in FP32 in every FP16 graph (the converter inserts Casts around them). One place, with reasons.
FP32_OPS: dict[str, str] = {
    "LayerNormalization": "variance of 256-wide rows overflows / loses precision in FP16 (efficientvit #142, EfficientTAM #17)",
    "Softmax": "exp of attention scores: overflow and lost small probabilities in FP16",
    "ReduceMean": "mean / variance reductions of the decomposed LayerNorm2d (memory encoder, decoder upscaling)",
    "ReduceSum": "sums over whole masks (stability score) exceed FP16's integer precision at 1024^2",
    "Pow": "squares feeding the LayerNorm2d variance overflow at |x| > 256",
    "Sqrt": "normalisation denominators (LayerNorm2d, attention scale)",
    "Sin": "sine position encodings of pixel coordinates: FP16 loses the phase at large arguments",
    "Cos": "cosine position encodings / RoPE tables: as Sin",
    "Resize": "scale/size inputs must stay FP32 (ONNX); interpolation of FPN features kept exact",
    "Range": "index arithmetic",
    "CumSum": "index arithmetic",
}
# The converter's own DEFAULT_OP_BLOCK_LIST (ML-domain and index ops) is blocked as well.


@dataclass(frozen=True)
class RangeHit:
    """A tensor whose FP32 activations leave the FP16 range on calibration episodes."""

    tensor: str
    node: str
    op_type: str
    min: float
    max: float

    @property
    def overflows(self) -> bool:
        return max(abs(self.min), abs(self.max)) > FP16_MAX


def activation_ranges(data: TensorsData) -> dict[str, tuple[float, float]]:
    """Min/max per tensor of `ranges.minmax` calibration data."""
    return {name: (float(np.min(r.range_value[0])), float(np.max(r.range_value[1]))) for name, r in data.data.items()}


def fp16_range_report(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]]) -> list[RangeHit]:
    """Node outputs whose calibration range exceeds FP16's largest finite value (65504)."""
    hits = []
    for node in model.graph.node:
        for out in node.output:
            if out in ranges:
                hit = RangeHit(out, node.name, node.op_type, *ranges[out])
                if hit.overflows:
                    hits.append(hit)
    return hits


def convert_fp16(
    src: Path, dst: Path, extra_blocked_nodes: list[str] = (), op_block_extra: tuple[str, ...] = ()
) -> onnx.ModelProto:
    """Write the FP16 version of `src` to `dst`: FP32 I/O; `FP32_OPS`, `op_block_extra` (op types) and
    `extra_blocked_nodes` (node names) in FP32."""
    model = convert_float_to_float16(
        onnx.load(str(src)),
        keep_io_types=True,
        op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS) | set(op_block_extra)),
        node_block_list=list(extra_blocked_nodes),
    )
    onnx.save(model, str(dst))
    return model
