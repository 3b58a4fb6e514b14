"""`BoundCpuBackend`: ONNX Runtime's GPU path (IO binding, device-resident outputs and support-set copies) with the
CPU as its device, so the device logic runs on a machine without a GPU."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from runtime.backends.ort_gpu import OrtDeviceGraph
from runtime.engine.manifest import GraphSpec


class BoundCpuBackend:
    """OrtBackend's GPU path (IO binding, device-resident outputs and support sets) with "cpu" as the device."""

    name, provider = "ort-iobinding-cpu", "cpu"

    def __init__(self):
        self.consumed: set[str] = set()
        self.graphs: dict[str, OrtDeviceGraph] = {}

    def precision_for(self, graph: str, spec: GraphSpec) -> str:
        return spec.precision

    def load(self, path: Path, spec: GraphSpec, graph: str):
        self.consumed.update(t.name for t in spec.inputs)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.graphs[graph] = OrtDeviceGraph(session, spec, owner=self, device="cpu", consumed=self.consumed)
        return self.graphs[graph]
