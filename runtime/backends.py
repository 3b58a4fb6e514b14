"""Inference backends behind one small interface.

A backend turns a graph file + its manifest spec into a `Graph` whose `run(feeds)` maps input names
to arrays and returns output names to arrays; its `provider` names which of the graph's flavours
(manifest schema 2) the segmenter hands it. Providers: `cpu`, `cuda`, `tensorrt` (ONNX Runtime and its
execution providers) and `tensorrt-native` (TensorRT engines, `runtime.trt_backend`); `create_backend`
makes the right one. Any object with the same `load` method (a remote server, a mock) can be injected.

On GPU providers, an output that another loaded graph consumes stays on the device
(`runtime.device.DeviceTensor`) and the memory bank is kept there between queries (IO binding).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Protocol

import numpy as np

from .device import BankTracker, DeviceTensor
from .manifest import GraphSpec, Manifest
from .profiles import DEFAULT_MAX_SHOTS, MEMORY_AXIS, DimRange, InputProfile, check_memory_length, input_profiles, memory_dim_ranges

ORT_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    # TensorRT EP with CUDA for any node TensorRT declines; CPU is deliberately not listed.
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
}
PROVIDERS = (*ORT_PROVIDERS, "tensorrt-native")
DEFAULT_WORKSPACE_BYTES = 4 << 30
ORT_TRT_CACHE_DIR = "ort_trt_cache"  # ORT TensorRT EP engine + timing cache, beside the graphs


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


def tensorrt_ep_options(profiles: Mapping[str, InputProfile], cache_dir: Path, *, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
                        device_id: int = 0) -> dict[str, str]:
    """ORT TensorRT EP options: engine + timing cache in `cache_dir`, explicit profiles for every dynamic
    input (the same values are needed to reuse a cached engine). No `trt_fp16_enable`: precision is the graph's."""
    opts = {
        "device_id": str(device_id),
        "trt_max_workspace_size": str(workspace_bytes),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache_dir),
    }
    for key in ("min", "opt", "max"):
        if profiles:
            opts[f"trt_profile_{key}_shapes"] = ",".join(f"{n}:{'x'.join(map(str, getattr(p, key)))}" for n, p in profiles.items())
    return opts


def cuda_ep_options(device_id: int = 0) -> dict[str, str]:
    """ORT CUDA EP options: copies on the compute stream (IO binding relies on it), full cuDNN conv search."""
    return {"device_id": str(device_id), "do_copy_in_default_stream": "1", "cudnn_conv_algo_search": "EXHAUSTIVE"}


def ort_provider_list(provider: str, profiles: Mapping[str, InputProfile], cache_dir: Path, *, device_id: int = 0,
                      workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> list:
    """The `providers=` argument of an InferenceSession for `provider`, with options."""
    options = {
        "TensorrtExecutionProvider": lambda: tensorrt_ep_options(profiles, cache_dir, workspace_bytes=workspace_bytes, device_id=device_id),
        "CUDAExecutionProvider": lambda: cuda_ep_options(device_id),
    }
    return [(ep, options[ep]()) if ep in options else ep for ep in ORT_PROVIDERS[provider]]


class OrtGraph:
    """One ONNX Runtime session. With `device` set (GPU providers) it runs through IO binding: feeds that
    are this backend's DeviceTensors are bound in place, memory-bank inputs are uploaded only when they
    changed, and outputs another loaded graph consumes stay on the device."""

    def __init__(self, session, spec: GraphSpec, *, owner=None, device: str | None = None, device_id: int = 0,
                 consumed: set[str] | None = None, profiles: Mapping[str, InputProfile] | None = None, label: str = ""):
        self._session = session
        self._outputs = [o.name for o in spec.outputs]
        self._dtypes = {o.name: o.dtype for o in spec.outputs}
        self._device, self._device_id = device, device_id
        self._owner = owner
        self._consumed = consumed if consumed is not None else set()
        self._profiles = dict(profiles or {})
        self._label = label
        self._banks = {t.name: BankTracker() for t in spec.inputs if MEMORY_AXIS in t.shape}
        self._bank_values: dict[str, object] = {}
        self._binding = session.io_binding() if device else None

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_memory_length(self._label, feeds, self._profiles, "the TensorRT EP profile",
                            "create the backend with a larger max_shots (fssam2 segment sizes it to the supports given)")
        if self._binding is None:
            return dict(zip(self._outputs, self._session.run(self._outputs, {k: np.asarray(v) for k, v in feeds.items()})))
        return self._run_bound(feeds)

    def forget_memory(self) -> None:
        for tracker in self._banks.values():
            tracker.forget()
        self._bank_values.clear()

    def _run_bound(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        b = self._binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        keep = []  # host arrays bound by reference must outlive the run
        for name, value in feeds.items():
            if isinstance(value, DeviceTensor) and value.owner is self._owner and value.handle is not None:
                b.bind_ortvalue_input(name, value.handle)
            elif name in self._banks:
                b.bind_ortvalue_input(name, self._bank_value(name, np.asarray(value)))
            else:
                keep.append(np.ascontiguousarray(np.asarray(value)))
                b.bind_cpu_input(name, keep[-1])
        for name in self._outputs:
            b.bind_output(name, *((self._device, self._device_id) if name in self._consumed else ("cpu",)))
        self._session.run_with_iobinding(b)
        out = {}
        for name, value in zip(self._outputs, b.get_outputs()):
            if name in self._consumed:
                out[name] = DeviceTensor(value.shape(), self._dtypes[name], self._owner, value, value.numpy)
            else:
                out[name] = value.numpy()
        return out

    def _bank_value(self, name: str, feed: np.ndarray):
        """The bank's device copy; ORT cannot write into part of an OrtValue, so a grown bank is uploaded
        whole, once per change (never per query)."""
        if self._banks[name].start(feed) < feed.shape[1] or name not in self._bank_values:
            import onnxruntime as ort

            # a copy: on device "cpu" the OrtValue would alias the bank's buffer, which is refilled after a reset
            self._bank_values[name] = ort.OrtValue.ortvalue_from_numpy(np.array(feed, copy=True), self._device, self._device_id)
        return self._bank_values[name]


class OrtBackend:
    """ONNX Runtime with provider `cpu`, `cuda` or `tensorrt`; refuses to run elsewhere than asked.

    `dims` gives the dynamic axes' ranges (`profiles.memory_dim_ranges`); the TensorRT EP needs them for
    its profiles. Its engine and timing caches go to `cache_dir` (default: `ort_trt_cache/` beside the graphs)."""

    def __init__(self, provider: str = "cpu", intra_op_threads: int | None = None, *, dims: Mapping[str, DimRange] | None = None,
                 device_id: int = 0, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES, cache_dir: Path | None = None):
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
        self._device_id, self._workspace, self._cache_dir = device_id, workspace_bytes, cache_dir
        self._consumed: set[str] = set()  # input names of all graphs loaded so far: outputs feeding them stay on the device

    def load(self, path: Path, spec: GraphSpec) -> Graph:
        profiles = {}
        if self.provider == "tensorrt":
            try:
                profiles = input_profiles(spec, self._dims)
            except ValueError as e:
                raise ValueError(f"{path.name}: the TensorRT EP needs a range for every dynamic axis ({e}); "
                                 "make the backend with create_backend('tensorrt', manifest, max_shots=K)") from e
        cache_dir = self._cache_dir or Path(path).parent / ORT_TRT_CACHE_DIR
        if self.provider == "tensorrt":
            cache_dir.mkdir(parents=True, exist_ok=True)
        providers = ort_provider_list(self.provider, profiles, cache_dir, device_id=self._device_id, workspace_bytes=self._workspace)
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
        return OrtGraph(session, spec, owner=self, device=None if self.provider == "cpu" else "cuda", device_id=self._device_id,
                        consumed=self._consumed, profiles=profiles, label=Path(path).stem)
