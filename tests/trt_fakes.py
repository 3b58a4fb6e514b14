"""Stand-ins for TensorRT, CUDA and polygraphy's TensorRT parts, for machines without a GPU.

`FakeCuda` is device memory in numpy with byte counters; `FakeRuntime`/`FakeEngine` implement the
small interface `runtime.backends.tensorrt` needs (tensors, set_input_shape, set_address, output_shape,
execute) by running the ONNX graph named in the "engine" bytes with onnxruntime on that memory.
`install_fake_polygraphy` patches the polygraphy calls `fssam2_export.engines` makes so a build
writes such engines; the comparison still runs polygraphy's real Comparator and OnnxrtRunner.
"""

from __future__ import annotations

import json
import sys
import types
from collections import OrderedDict

import numpy as np
import onnxruntime as ort

from runtime.backends.tensorrt import DeviceInfo, TensorInfo
from runtime.engine.profiles import InputProfile

TRT_VERSION = "10.3.0"
DEVICE = DeviceInfo("Fake Orin", "8.7")


class FakeCuda:
    def __init__(self, device: DeviceInfo = DEVICE):
        self._device = device
        self.blocks: dict[int, np.ndarray] = {}
        self._next = 1 << 20
        self.htod_bytes = self.dtoh_bytes = self.mallocs = self.syncs = 0
        self.dtoh_sizes: list[int] = []

    def malloc(self, nbytes: int) -> int:
        base, self._next = self._next, self._next + nbytes + 4096
        self.blocks[base] = np.zeros(nbytes, np.uint8)
        self.mallocs += 1
        return base

    def free(self, ptr: int) -> None:
        del self.blocks[ptr]

    def stream(self) -> object:
        return 7

    def _at(self, ptr: int, nbytes: int) -> np.ndarray:
        for base, buf in self.blocks.items():
            if base <= ptr and ptr + nbytes <= base + buf.size:
                return buf[ptr - base : ptr - base + nbytes]
        raise AssertionError(f"access outside any allocation: {ptr:#x} + {nbytes}")

    def htod(self, dst: int, src: np.ndarray, stream) -> None:
        assert src.flags.c_contiguous
        self._at(dst, src.nbytes)[:] = src.reshape(-1).view(np.uint8)
        self.htod_bytes += src.nbytes

    def dtoh(self, dst: np.ndarray, src: int, stream) -> None:
        dst.reshape(-1).view(np.uint8)[:] = self._at(src, dst.nbytes)
        self.dtoh_bytes += dst.nbytes
        self.dtoh_sizes.append(dst.nbytes)

    def sync(self, stream) -> None:
        self.syncs += 1

    def device(self) -> DeviceInfo:
        return self._device

    def read(self, ptr: int, shape, dtype) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self._at(ptr, n).view(dtype).reshape(shape).copy()

    def write(self, ptr: int, array: np.ndarray) -> None:
        self._at(ptr, array.nbytes)[:] = np.ascontiguousarray(array).reshape(-1).view(np.uint8)


class FakeEngine:
    """An "engine" whose bytes are JSON {"onnx": path, "profiles": {input: [min, opt, max]}}."""

    def __init__(self, blob: bytes, cuda: FakeCuda):
        spec = json.loads(blob)
        self._cuda = cuda
        self._session = ort.InferenceSession(spec["onnx"], providers=["CPUExecutionProvider"])
        profiles = {n: InputProfile(*(tuple(s) for s in v)) for n, v in spec["profiles"].items()}
        dtype = lambda t: np.dtype({"tensor(float)": np.float32, "tensor(float16)": np.float16}[t])  # noqa: E731
        self.tensors = [
            TensorInfo(
                i.name,
                True,
                dtype(i.type),
                tuple(d if isinstance(d, int) else -1 for d in i.shape),
                profiles.get(i.name),
            )
            for i in self._session.get_inputs()
        ]
        self.tensors += [
            TensorInfo(o.name, False, dtype(o.type), tuple(o.shape), None) for o in self._session.get_outputs()
        ]
        self._shapes: dict[str, tuple] = {}
        self._addresses: dict[str, int] = {}
        self.executions = 0

    def set_input_shape(self, name, shape):
        t = next(t for t in self.tensors if t.name == name)
        lo, hi = (t.profile.min, t.profile.max) if t.profile else (t.shape, t.shape)
        if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            raise RuntimeError(f"TensorRT refused shape {list(shape)} for input '{name}'")
        self._shapes[name] = tuple(shape)

    def set_address(self, name, ptr):
        self._addresses[name] = int(ptr)

    def output_shape(self, name):
        return next(t.shape for t in self.tensors if t.name == name)

    def execute(self, stream):
        self.executions += 1
        feeds = {
            t.name: self._cuda.read(self._addresses[t.name], self._shapes[t.name], t.dtype)
            for t in self.tensors
            if t.is_input
        }
        outs = [t for t in self.tensors if not t.is_input]
        for t, value in zip(outs, self._session.run([t.name for t in outs], feeds)):
            self._cuda.write(self._addresses[t.name], value.astype(t.dtype))


class FakeRuntime:
    def __init__(self, cuda: FakeCuda, version: str = TRT_VERSION):
        self.version, self._cuda = version, cuda
        self.engines: list[FakeEngine] = []

    def deserialize(self, blob: bytes) -> FakeEngine:
        self.engines.append(FakeEngine(blob, self._cuda))
        return self.engines[-1]


def fake_tensorrt_module(version: str = TRT_VERSION, strongly_typed_flag: bool = True) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(**({"STRONGLY_TYPED": 5} if strongly_typed_flag else {}))
    return trt


class BuildLog:
    def __init__(self):
        self.networks: list[dict] = []
        self.configs: list = []
        self.saved_timing_caches: list[str] = []


def install_fake_polygraphy(monkeypatch, *, perturb=None, version: str = TRT_VERSION) -> BuildLog:
    """Patch tensorrt + polygraphy's TensorRT loaders/runner; engines become FakeEngine JSON. The fake
    TrtRunner runs the ONNX graph with onnxruntime, and returns `perturb(output name, value)` if given."""
    import polygraphy.backend.trt as ptrt
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    log = BuildLog()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt_module(version))

    def network_from_onnx_path(path, strongly_typed=None):
        log.networks.append({"path": path, "strongly_typed": strongly_typed})
        return ("network", path)

    def engine_from_network(network, config, save_timing_cache=None):
        log.configs.append(config)
        log.saved_timing_caches.append(save_timing_cache)
        with open(save_timing_cache, "ab") as f:
            f.write(b"t")
        profiles = {
            n: [list(s.min), list(s.opt), list(s.max)]
            for n, s in (config.profiles[0].items() if config.profiles else [])
        }
        blob = json.dumps({"onnx": network[1], "profiles": profiles}).encode()
        return types.SimpleNamespace(serialize=lambda: blob)

    class FakeTrtRunner(OnnxrtRunner):
        def __init__(self, blob):
            super().__init__(SessionFromOnnx(json.loads(blob)["onnx"], providers=["cpu"]), name="fake-trt")

        def infer_impl(self, feed_dict, *args, **kwargs):
            out = super().infer_impl(feed_dict, *args, **kwargs)
            return OrderedDict((n, perturb(n, v) if perturb else v) for n, v in out.items())

    monkeypatch.setattr(ptrt, "network_from_onnx_path", network_from_onnx_path)
    monkeypatch.setattr(ptrt, "engine_from_network", engine_from_network)
    monkeypatch.setattr(ptrt, "EngineFromBytes", lambda blob: blob)
    monkeypatch.setattr(ptrt, "TrtRunner", FakeTrtRunner)
    return log
