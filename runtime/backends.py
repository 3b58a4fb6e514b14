"""Inference backends behind one small interface.

A backend turns a graph file + its manifest spec into a `Graph` whose `run(feeds)` maps input names
to arrays and returns output names to arrays; its `provider` names which of the graph's flavours
(manifest schema 2) the segmenter hands it. Providers: `cpu`, `cuda`, `tensorrt` (ONNX Runtime and its
execution providers) and `tensorrt-native` (TensorRT engines, `runtime.trt_backend`); `create_backend`
makes the right one. Any object with the same `load` method (a remote server, a mock) can be injected.

On GPU providers, an output that another loaded graph consumes stays on the device
(`runtime.device.DeviceTensor`) and the memory bank is kept there between queries (IO binding,
`runtime.ort_gpu`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Protocol

import numpy as np

from .manifest import GraphSpec, Manifest
from .ort_gpu import DEFAULT_WORKSPACE_BYTES, ORT_TRT_CACHE_DIR, OrtDeviceGraph, ort_provider_list
from .profiles import DEFAULT_MAX_SHOTS, DimRange, input_profiles, memory_dim_ranges

ORT_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    # TensorRT EP with CUDA for any node TensorRT declines; CPU is deliberately not listed.
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
}
PROVIDERS = (*ORT_PROVIDERS, "tensorrt-native")


class ProviderUnavailableError(RuntimeError):
    """The requested execution provider cannot be used; there is no silent CPU fallback."""


class Graph(Protocol):
    """`run` maps input names to arrays (or this backend's DeviceTensors) and returns output names to arrays.
    Optional: `forget_memory()`, for graphs keeping a device copy of the memory bank; the segmenter calls it
    whenever it drops its supports."""

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Backend(Protocol):
    name: str
    provider: str  # picks each graph's flavour in the manifest (GraphSpec.artifact_for)

    def load(self, path: Path, spec: GraphSpec) -> Graph: ...


def create_backend(provider: str, manifest: Manifest | None = None, *, max_shots: int = DEFAULT_MAX_SHOTS,
                   intra_op_threads: int | None = None, device_id: int = 0) -> Backend:
    """The backend for `provider`. ORT's TensorRT EP gets profiles for K = 1..max_shots from the manifest;
    `tensorrt-native` takes its profiles from the engines themselves."""
    if provider == "tensorrt-native":
        from .trt_backend import TensorRTBackend

        return TensorRTBackend(device_id=device_id)
    dims = memory_dim_ranges(manifest.episode, max_shots) if manifest is not None and provider == "tensorrt" else None
    return OrtBackend(provider, intra_op_threads, dims=dims, device_id=device_id)


class OrtGraph:
    def __init__(self, session, output_names: list[str]):
        self._session = session
        self._outputs = output_names

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self._session.run(self._outputs, dict(feeds))))


class OrtBackend:
    """ONNX Runtime with provider `cpu`, `cuda` or `tensorrt`; refuses to run elsewhere than asked.

    GPU providers run through IO binding (`runtime.ort_gpu.OrtDeviceGraph`). `dims` gives the dynamic axes'
    ranges (`profiles.memory_dim_ranges`); the TensorRT EP needs them for its profiles. Its engine and timing
    caches go to `trt_cache_dir` (default: `ort_trt_cache/` beside the graphs)."""

    def __init__(self, provider: str = "cpu", intra_op_threads: int | None = None, *, dims: Mapping[str, DimRange] | None = None,
                 device_id: int = 0, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES, trt_cache_dir: Path | None = None):
        if provider not in ORT_PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}; choose one of {sorted(ORT_PROVIDERS)}")
        import onnxruntime as ort

        self._ort = ort
        self.name = f"onnxruntime-{provider}"
        self.provider = provider
        self._providers = ORT_PROVIDERS[provider]
        wanted = self._providers[0]
        available = ort.get_available_providers()
        if wanted not in available:
            hint = {"cuda": "pip install 'fssam2[gpu]' (onnxruntime-gpu)", "tensorrt": "onnxruntime-gpu built with TensorRT"}
            raise ProviderUnavailableError(
                f"provider {provider!r} needs {wanted}, but this onnxruntime offers {available}; "
                f"install {hint.get(provider, 'a build that has it')}"
            )
        self._options = ort.SessionOptions()
        if intra_op_threads:
            self._options.intra_op_num_threads = intra_op_threads
        self._dims = dict(dims or {})
        self._device_id, self._workspace, self._trt_cache_dir = device_id, workspace_bytes, trt_cache_dir
        self._consumed: set[str] = set()  # input names of all graphs loaded so far: outputs feeding them stay on the device

    def load(self, path: Path, spec: GraphSpec) -> Graph:
        profiles, cache_dir = {}, self._trt_cache_dir or Path(path).parent / ORT_TRT_CACHE_DIR
        if self.provider == "tensorrt":
            try:
                profiles = input_profiles(spec, self._dims)
            except ValueError as e:
                raise ValueError(f"{path.name}: the TensorRT EP needs a range for every dynamic axis ({e}); "
                                 "make the backend with create_backend('tensorrt', manifest, max_shots=K)") from e
            try:
                cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise RuntimeError(f"cannot create the TensorRT EP cache {cache_dir} ({e}); pass OrtBackend(trt_cache_dir=...)") from e
        providers = ort_provider_list(ORT_PROVIDERS[self.provider], profiles, cache_dir, device_id=self._device_id,
                                      workspace_bytes=self._workspace)
        try:
            session = self._ort.InferenceSession(str(path), sess_options=self._options, providers=providers)
        except Exception as e:  # ORT raises its own exception types for corrupt files / bad graphs
            raise RuntimeError(f"onnxruntime could not load {path}: {e}") from e
        active = session.get_providers()
        if self._providers[0] not in active:
            raise ProviderUnavailableError(
                f"{path.name}: requested {self._providers[0]} but the session runs on {active}"
            )
        self._consumed.update(t.name for t in spec.inputs)
        if self.provider == "cpu":
            return OrtGraph(session, [o.name for o in spec.outputs])
        return OrtDeviceGraph(session, spec, owner=self, device="cuda", device_id=self._device_id, consumed=self._consumed,
                              profiles=profiles, label=Path(path).stem)
