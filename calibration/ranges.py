"""onnxruntime's calibrators, with bounded memory.

`create_calibrator` appends a ReduceMin/ReduceMax pair per tensor at the end of the graph; executed in
onnxruntime's default order they keep every activation alive until the whole graph has run (the image
encoder at 1024^2 went past 17 GB and was OOM-killed). `calibrate` moves each reduction right behind the
producer of its tensor and runs the session in node order (peak at 256^2: 1.5 GB -> 0.7 GB). Histogram
methods (entropy, percentile) expose every activation as a graph output by design and stay memory-hungry
at large image sizes; MinMax is the default. `RangeBackend` collects MinMax ranges while the calibration capture
runs the FP32 graphs, so capture and MinMax calibration are one pass.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator
from onnxruntime.quantization.calibrate import CalibraterBase, TensorsData


def interleave_added_nodes(path: Path, original_nodes: int) -> None:
    """Move the nodes a calibrator appended to a graph (ReduceMin/ReduceMax per tensor) right behind the
    producers of their inputs. Appended at the end, they keep every activation alive until the whole graph
    has run: ~17 GB for the image encoder at 1024^2, instead of a few hundred MB."""
    model = onnx.load(str(path))
    nodes = list(model.graph.node)
    base, added = nodes[:original_nodes], nodes[original_nodes:]
    ready = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    ordered, waiting = [], list(added)

    def flush():
        nonlocal waiting
        while True:
            now = [n for n in waiting if all(i in ready for i in n.input)]
            if not now:
                return
            waiting = [n for n in waiting if n not in now]
            for n in now:
                ordered.append(n)
                ready.update(n.output)

    flush()
    for node in base:
        ordered.append(node)
        ready.update(node.output)
        flush()
    del model.graph.node[:]
    model.graph.node.extend(ordered + waiting)
    onnx.save(model, str(path))


def _in_node_order() -> ort.SessionOptions:
    """Session options of onnxruntime's calibrator (no graph optimisation), executing in node order."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    return opts


def _calibrator(model_path: Path, method: CalibrationMethod, extra_options: dict) -> CalibraterBase:
    """onnxruntime's calibrator for `model_path`, its session on the augmented graph with the reductions interleaved."""
    original_nodes = len(onnx.load(str(model_path)).graph.node)
    with tempfile.TemporaryDirectory() as tmp:
        augmented = Path(tmp) / "augmented.onnx"
        cal = create_calibrator(
            model_path, None, augmented_model_path=augmented, calibrate_method=method, extra_options=extra_options
        )
        interleave_added_nodes(augmented, original_nodes)
        cal.infer_session = ort.InferenceSession(
            str(augmented), sess_options=_in_node_order(), providers=cal.execution_providers
        )
    return cal


def calibrate(
    model_path: Path, reader: CalibrationDataReader, method: CalibrationMethod, extra_options: dict
) -> TensorsData:
    """Tensor ranges of every float tensor of `model_path` over the reader's feeds."""
    cal = _calibrator(model_path, method, extra_options)
    cal.collect_data(reader)
    return cal.compute_data()


def minmax(model_path: Path, reader: CalibrationDataReader) -> TensorsData:
    """Min/max of every float tensor over the reader's feeds (one calibration pass)."""
    return calibrate(model_path, reader, CalibrationMethod.MinMax, {"symmetric": False})


def symmetric(data: TensorsData) -> TensorsData:
    """`minmax` ranges made symmetric, +-max(|min|, |max|): what onnxruntime's symmetric MinMax calibrator
    computes from the same feeds, without running them again."""
    pairs = {}
    for name, r in data.data.items():
        bound = np.nanmax([np.abs(r.range_value[0]), np.abs(r.range_value[1])], axis=0)
        pairs[name] = (-bound, bound)
    return TensorsData(CalibrationMethod.MinMax, pairs)


class RangeBackend:
    """A runtime `Backend` for the calibration capture: the first `max_calls` calls of each graph run on onnxruntime's
    MinMax calibrator session (the augmented graph, in node order) and merge every float tensor's min/max into
    `ranges` (graph file name -> `minmax` ranges) as they return the graph's outputs; later calls run the plain
    graph `inner` picks (its provider's flavour). Capture and MinMax calibration are then one FP32 pass instead of
    two. The calibrated calls run each graph's standard file (`provider` is a name no flavour lists): ranges name the
    standard graph's tensors."""

    name = "calibration-ranges"
    provider = "standard"

    def __init__(self, inner, max_calls: int):
        self.inner, self.max_calls = inner, max_calls
        self.ranges: dict[str, TensorsData] = {}

    def precision_for(self, graph: str, spec) -> str:
        return spec.precision

    def load(self, path: Path, spec, graph: str) -> _RangeGraph:
        return _RangeGraph(self, path, spec, graph)


class _RangeGraph:
    providers = ["CPUExecutionProvider"]  # the calibrator's session; later calls run `inner`'s graph
    cache = "off"

    def __init__(self, backend: RangeBackend, path: Path, spec, graph: str):
        self._backend, self._path, self._spec, self._graph = backend, path, spec, graph
        self.precision = spec.precision
        self._outputs = [o.name for o in spec.outputs]
        self._calls, self._plain = 0, None
        self._cal = _calibrator(path, CalibrationMethod.MinMax, {"symmetric": False}) if backend.max_calls else None

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._calls >= self._backend.max_calls:
            if self._plain is None:
                self._cal = None  # the augmented session's memory goes before the plain one is made
                flavour = self._spec.artifact_for(self._backend.inner.provider)  # e.g. the fused-attention copy
                self._plain = self._backend.inner.load(self._path.with_name(flavour.file), self._spec, self._graph)
            return self._plain.run(feeds)
        self._calls += 1
        cal = self._cal
        names = [o.name for o in cal.infer_session.get_outputs()]
        values = cal.infer_session.run(None, dict(feeds))
        # what MinMaxCalibrater.collect_data does with one sample: keep the added outputs, merge them into the ranges
        cal.intermediate_outputs.append([None if n in cal.model_original_outputs else v for n, v in zip(names, values)])
        self._backend.ranges[self._path.name] = cal.compute_data()
        cal.clear_collected_data()
        got = dict(zip(names, values))
        return {n: got[n] for n in self._outputs}
