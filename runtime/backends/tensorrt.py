"""`tensorrt-native`: run the manifest's TensorRT engines directly (no ONNX Runtime).

Per graph: the engine is deserialised once, after its manifest meta was checked against this
machine (TensorRT version, GPU compute capability); device buffers for every input and output are
allocated once at the profile's largest shapes; all graphs share one CUDA stream. Outputs that
another loaded graph consumes stay on the device (`DeviceTensor`, read in place by the next graph);
each support set's tokens get their own device buffer, uploaded once and freed with the set; only
outputs nobody consumes (the decoder's logits and scores) are copied to the host.

Threads: one lock per backend (reentrant) is held for each graph run, each device-to-host copy and
each support-set upload or free. The graphs share one stream and read each other's output buffers in
place, and an execution context is not thread-safe, so the GPU work is serial anyway; the lock makes
the host side serial too. A thread whose earlier output is about to be overwritten by another thread's
run gets it copied to the host first (`DeviceTensor.spill`, under the same lock), so results are never
mixed. Written for TensorRT, not run on a GPU here (tested with tests/trt_fakes.py).

`tensorrt` and cuda-python (`cuda.bindings.runtime`, as TensorRT's samples use) are imported only
when the backend is made. The backend talks to them through two small adapters (`CudaRuntime`,
`TensorRTRuntime`), so its logic can be tested against fakes implementing the same methods.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..engine.backend import register_backend
from ..engine.errors import (
    BackendError,
    CudaError,
    EngineMismatchError,
    InputError,
    ManifestError,
    ProviderUnavailableError,
)
from ..engine.manifest import GraphSpec, Manifest
from ..engine.options import RuntimeOptions
from ..engine.profiles import MEMORY_AXIS, InputProfile, check_memory_length
from .device import DeviceCopies, DeviceTensor, is_support_array

PROVIDER = "tensorrt-native"
ENGINE_KIND = "tensorrt-engine"
REBUILD_HINT = "rebuild the engines on this machine: python -m fssam2_export.engines --artifacts DIR"


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    compute_capability: str  # "major.minor", e.g. "8.7" (Orin), "9.0" (H100)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]  # -1 = dynamic
    profile: InputProfile | None  # dynamic inputs: the engine's optimisation profile 0


class Cuda(Protocol):
    def malloc(self, nbytes: int) -> int: ...
    def free(self, ptr: int) -> None: ...
    def stream(self) -> object: ...
    def htod(self, dst: int, src: np.ndarray, stream: object) -> None: ...
    def dtoh(self, dst: np.ndarray, src: int, stream: object) -> None: ...
    def sync(self, stream: object) -> None: ...
    def device(self) -> DeviceInfo: ...


class Engine(Protocol):
    tensors: list[TensorInfo]

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> None: ...
    def set_address(self, name: str, ptr: int) -> None: ...
    def output_shape(self, name: str) -> tuple[int, ...]: ...
    def execute(self, stream: object) -> None: ...


class Runtime(Protocol):
    version: str

    def deserialize(self, blob: bytes) -> Engine: ...


def check_engine_compat(file: str, meta: Mapping, tensorrt_version: str, device: DeviceInfo) -> None:
    """Refuse an engine whose manifest meta names another TensorRT version or compute capability."""
    problems = []
    if meta.get("tensorrt") != tensorrt_version:
        problems.append(f"TensorRT {meta.get('tensorrt')} (this machine has TensorRT {tensorrt_version})")
    if meta.get("compute_capability") != device.compute_capability:
        problems.append(
            f"compute capability {meta.get('compute_capability')}, {meta.get('gpu')} "
            f"(this GPU: compute capability {device.compute_capability}, {device.name})"
        )
    if problems:
        raise EngineMismatchError(
            f"{file} was built with {' and '.join(problems)}; an engine runs only on the TensorRT "
            f"version and GPU architecture it was built for: {REBUILD_HINT}"
        )


@register_backend(PROVIDER)
def _from_options(options: RuntimeOptions, manifest: Manifest | None) -> TensorRTBackend:
    """The engines carry their own profiles and precision: only the device is taken from `options`."""
    if options.precision:
        raise InputError(f"precisions apply to the openvino provider only, not {options.provider!r}")
    return TensorRTBackend(device_id=options.device_id)


class TensorRTBackend:
    """TensorRT engines from the manifest's `tensorrt-engine` flavours, on one GPU and one CUDA stream."""

    name = "tensorrt-native"
    provider = PROVIDER

    def __init__(self, device_id: int = 0, *, runtime: Runtime | None = None, cuda: Cuda | None = None):
        if runtime is None or cuda is None:
            try:
                cuda = cuda or CudaRuntime(device_id)
                runtime = runtime or TensorRTRuntime()
            except ImportError as e:
                raise ProviderUnavailableError(
                    f"provider 'tensorrt-native' needs the tensorrt and cuda-python packages ({e}); desktop: "
                    "pip install 'fssam2[trt]' (NVIDIA's wheels), Jetson: JetPack's python3-libnvinfer + pip install cuda-python"
                ) from e
            except CudaError as e:
                raise ProviderUnavailableError(
                    f"provider 'tensorrt-native' found no usable CUDA device {device_id}: {e}"
                ) from e
        self.runtime, self.cuda = runtime, cuda
        self.device = cuda.device()
        self.stream = cuda.stream()
        self.lock = threading.RLock()  # one stream, buffers read across graphs: runs are serialised (module doc)
        self.consumed: set[str] = set()  # input names of every loaded graph: outputs feeding them stay on the device

    def precision_for(self, graph: str, spec: GraphSpec) -> str:
        """The precision the manifest records for the graph's engine (that of the ONNX it was built from)."""
        return spec.artifact_for(PROVIDER).precision

    def load(self, path: Path, spec: GraphSpec, graph: str) -> TrtGraph:
        flavour = spec.artifact_for(PROVIDER)
        if flavour.kind != ENGINE_KIND:
            raise ManifestError(
                f"{spec.file}: the manifest lists no TensorRT engine for provider 'tensorrt-native'; "
                "build them with python -m fssam2_export.engines --artifacts DIR"
            )
        check_engine_compat(flavour.file, flavour.meta, self.runtime.version, self.device)
        engine = self.runtime.deserialize(Path(path).read_bytes())
        self.consumed.update(t.name for t in spec.inputs)
        return TrtGraph(
            self, engine, spec, label=f"{flavour.file} (TensorRT {self.runtime.version})", precision=flavour.precision
        )

    def download(self, ptr: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        with self.lock:
            host = np.empty(shape, dtype)
            self.cuda.dtoh(host, ptr, self.stream)
            self.cuda.sync(self.stream)
            return host

    def upload(self, a: np.ndarray) -> int:
        """A new device buffer holding `a` (a support set's tokens)."""
        with self.lock:
            ptr = self.cuda.malloc(a.nbytes)
            self.cuda.htod(ptr, a, self.stream)
            self.cuda.sync(self.stream)  # `a` may be freed as soon as this returns
            return ptr

    def free(self, ptr: int) -> None:
        with self.lock:
            self.cuda.free(ptr)


class TrtGraph:
    """One engine with its device buffers (allocated once, at the profile's max shapes)."""

    def __init__(self, backend: TensorRTBackend, engine: Engine, spec: GraphSpec, label: str, precision: str):
        self._b, self._engine, self._label = backend, engine, label
        self.providers = ["TensorRT"]  # the engine itself, no ONNX Runtime
        self.precision = precision
        self.cache = "off"  # engines are built ahead (fssam2-engines), not cached at load
        self._inputs = [t for t in engine.tensors if t.is_input]
        self._outputs = [t for t in engine.tensors if not t.is_input]
        self.profiles = {t.name: t.profile for t in self._inputs if t.profile is not None}
        cuda = backend.cuda
        for t in self._inputs:
            engine.set_input_shape(t.name, t.profile.max if t.profile else t.shape)
        sizes = {t.name: (t.profile.max if t.profile else t.shape) for t in self._inputs}
        sizes |= {t.name: engine.output_shape(t.name) for t in self._outputs}
        dtypes = {t.name: t.dtype for t in engine.tensors}
        self.buffers = {n: cuda.malloc(int(np.prod(s)) * dtypes[n].itemsize) for n, s in sizes.items()}
        self._memory_inputs = {t.name for t in spec.inputs if MEMORY_AXIS in t.shape}
        self.support_copies = DeviceCopies(backend.upload, backend.free, backend.lock)
        self._handed: list[weakref.ref] = []  # DeviceTensors pointing into our output buffers
        weakref.finalize(self, _release, backend, list(self.buffers.values()), self._handed, self.support_copies)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_memory_length(
            self._label,
            feeds,
            self.profiles,
            "the profile built into the engine",
            "rebuild the engines with a larger --max-shots",
        )
        with self._b.lock:
            return self._run(feeds)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        b, cuda, stream, engine = self._b, self._b.cuda, self._b.stream, self._engine
        _spill(self._handed)  # our outputs are about to be overwritten: whoever still holds one gets a host copy
        for t in self._inputs:
            value = feeds[t.name]
            ptr = self.buffers[t.name]
            if isinstance(value, DeviceTensor) and value.owner is b and value.handle is not None:
                ptr = value.handle  # another graph's output buffer, read in place
            elif t.name in self._memory_inputs and is_support_array(value) and value.dtype == t.dtype:
                ptr = self.support_copies.get(value)  # the set's own device buffer, uploaded once
            else:
                cuda.htod(ptr, np.ascontiguousarray(value, t.dtype), stream)
            engine.set_input_shape(t.name, tuple(value.shape))
            engine.set_address(t.name, ptr)
        for t in self._outputs:
            engine.set_address(t.name, self.buffers[t.name])
        engine.execute(stream)
        out = {}
        for t in self._outputs:
            shape, ptr = engine.output_shape(t.name), self.buffers[t.name]
            if t.name in b.consumed:
                out[t.name] = DeviceTensor(
                    shape, t.dtype, b, ptr, lambda p=ptr, s=shape, d=t.dtype: b.download(p, s, d), b.lock
                )
                self._handed.append(weakref.ref(out[t.name]))
            else:
                out[t.name] = np.empty(shape, t.dtype)
                cuda.dtoh(out[t.name], ptr, stream)
        cuda.sync(stream)  # one sync per graph: host copies are complete and per-module timings are true
        return out


def _spill(handed: list[weakref.ref]) -> None:
    for ref in handed:
        if (t := ref()) is not None:
            t.spill()
    handed.clear()


def _release(backend: TensorRTBackend, ptrs: list[int], handed: list[weakref.ref], copies: DeviceCopies) -> None:
    """Free a graph's buffers and support-set copies, after copying out any output still held."""
    with backend.lock:
        _spill(handed)
        copies.clear()
        for p in ptrs:
            backend.cuda.free(p)


class CudaRuntime:
    """cuda-python's CUDA runtime API (`cuda.bindings.runtime`; `cuda.cudart` before cuda-python 12.6)."""

    def __init__(self, device_id: int = 0):
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        self._rt, self._device_id = cudart, device_id
        self._call(cudart.cudaSetDevice(device_id))

    def _call(self, result):
        err, rest = result[0], result[1:]  # every call returns (cudaError_t, *values)
        if err != self._rt.cudaError_t.cudaSuccess:
            raise CudaError(f"{err.name}: {self._rt.cudaGetErrorString(err)[1].decode()}")
        return rest[0] if len(rest) == 1 else None

    def malloc(self, nbytes: int) -> int:
        return int(self._call(self._rt.cudaMalloc(max(nbytes, 1))))

    def free(self, ptr: int) -> None:
        self._call(self._rt.cudaFree(ptr))

    def stream(self) -> object:
        return self._call(self._rt.cudaStreamCreate())

    def htod(self, dst: int, src: np.ndarray, stream: object) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(self._rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, stream))

    def dtoh(self, dst: np.ndarray, src: int, stream: object) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(self._rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, stream))

    def sync(self, stream: object) -> None:
        self._call(self._rt.cudaStreamSynchronize(stream))

    def device(self) -> DeviceInfo:
        props = self._call(self._rt.cudaGetDeviceProperties(self._device_id))
        return DeviceInfo(props.name.split(b"\0")[0].decode(), f"{props.major}.{props.minor}")


class TensorRTRuntime:
    """TensorRT's Python API (10.x or 11.x): deserialises engines into `TrtEngine` adapters."""

    def __init__(self):
        import tensorrt as trt

        self._trt = trt
        self.version = trt.__version__
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))

    def deserialize(self, blob: bytes) -> TrtEngine:
        engine = self._runtime.deserialize_cuda_engine(blob)
        if engine is None:
            raise BackendError("TensorRT could not deserialise the engine (see its log above)")
        return TrtEngine(self._trt, engine)


class TrtEngine:
    """An ICudaEngine and its execution context, through the name-based tensor API of TensorRT >= 10."""

    def __init__(self, trt, engine):
        self._engine, self._context = engine, engine.create_execution_context()
        self.tensors = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            shape = tuple(engine.get_tensor_shape(name))
            profile = None
            if is_input and -1 in shape:
                profile = InputProfile(*(tuple(s) for s in engine.get_tensor_profile_shape(name, 0)))
            self.tensors.append(
                TensorInfo(name, is_input, np.dtype(trt.nptype(engine.get_tensor_dtype(name))), shape, profile)
            )

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if not self._context.set_input_shape(name, tuple(shape)):
            raise BackendError(f"TensorRT refused shape {list(shape)} for input '{name}'")

    def set_address(self, name: str, ptr: int) -> None:
        if not self._context.set_tensor_address(name, int(ptr)):
            raise BackendError(f"TensorRT refused the device address of '{name}'")

    def output_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._context.get_tensor_shape(name))

    def execute(self, stream: object) -> None:
        if not self._context.execute_async_v3(int(stream)):
            raise BackendError("TensorRT execution failed (see its log above)")
