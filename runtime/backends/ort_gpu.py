"""ONNX Runtime on GPU providers: CUDA / TensorRT EP options and IO binding that keeps data on the device.

The option builders are pure functions (unit-tested without a GPU). `OrtDeviceGraph` binds this
backend's device outputs (`DeviceTensor` wrapping an OrtValue) in place, keeps one device copy of each
support set's tokens (`DeviceCopies`: uploaded on first use, dropped with the set), and leaves on the
device every output another loaded graph consumes.

Threads: every `run` makes its own IO binding, and ORT allocates each run's bound outputs afresh, so
calls from many threads run in parallel without sharing buffers (ORT's `Run` is thread-safe); the
support-set copies are shared under a lock. Written for CUDA, not run on a GPU here (tested on device "cpu").
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..engine.manifest import GraphSpec
from ..engine.profiles import MEMORY_AXIS, InputProfile, check_memory_length
from .device import DeviceCopies, DeviceTensor, is_support_array

DEFAULT_WORKSPACE_BYTES = 4 << 30
ORT_TRT_CACHE_DIR = "ort_trt_cache"  # ORT TensorRT EP engine + timing cache, beside the graphs


def tensorrt_ep_options(
    profiles: Mapping[str, InputProfile],
    cache_dir: Path,
    *,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    device_id: int = 0,
) -> dict[str, str]:
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
            opts[f"trt_profile_{key}_shapes"] = ",".join(
                f"{n}:{'x'.join(map(str, getattr(p, key)))}" for n, p in profiles.items()
            )
    return opts


def cuda_ep_options(device_id: int = 0) -> dict[str, str]:
    """ORT CUDA EP options: copies on the compute stream (IO binding relies on it), full cuDNN conv search."""
    return {"device_id": str(device_id), "do_copy_in_default_stream": "1", "cudnn_conv_algo_search": "EXHAUSTIVE"}


def ort_provider_list(
    eps: list[str],
    profiles: Mapping[str, InputProfile],
    cache_dir: Path,
    *,
    device_id: int = 0,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> list:
    """The `providers=` argument of an InferenceSession for these execution providers, with options."""
    options = {
        "TensorrtExecutionProvider": lambda: tensorrt_ep_options(
            profiles, cache_dir, workspace_bytes=workspace_bytes, device_id=device_id
        ),
        "CUDAExecutionProvider": lambda: cuda_ep_options(device_id),
    }
    return [(ep, options[ep]()) if ep in options else ep for ep in eps]


class OrtDeviceGraph:
    """One ONNX Runtime session on a GPU provider, run through IO binding: feeds that are this backend's
    DeviceTensors are bound in place, a support set's tokens are uploaded once per set, and outputs
    another loaded graph consumes stay on the device. (`device="cpu"` runs the same path on the CPU EP.)"""

    def __init__(
        self,
        session,
        spec: GraphSpec,
        *,
        owner=None,
        device: str = "cuda",
        device_id: int = 0,
        consumed: set[str] | None = None,
        profiles: Mapping[str, InputProfile] | None = None,
        label: str = "",
        cache: str = "off",
        precision: str | None = None,
    ):
        self._session = session
        self.providers: list[str] = session.get_providers()  # what ORT actually runs it on
        self.cache = cache  # ORT cache status, as OrtGraph.cache
        self.precision = precision or spec.precision  # as OrtGraph.precision
        self._outputs = [o.name for o in spec.outputs]
        self._dtypes = {o.name: o.dtype for o in spec.outputs}
        self._device, self._device_id = device, device_id
        self._owner = owner
        self._consumed = consumed if consumed is not None else set()
        self._profiles = dict(profiles or {})
        self._label = label
        self._memory_inputs = {t.name for t in spec.inputs if MEMORY_AXIS in t.shape}
        self.support_copies = DeviceCopies(self._upload)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_memory_length(
            self._label,
            feeds,
            self._profiles,
            "the TensorRT EP profile",
            "create the backend with a larger max_shots (fssam2 segment sizes it to the supports given)",
        )
        b = self._session.io_binding()  # per call: concurrent runs share no binding
        keep = []  # host arrays bound by reference must outlive the run
        for name, value in feeds.items():
            if isinstance(value, DeviceTensor) and value.owner is self._owner and value.handle is not None:
                b.bind_ortvalue_input(name, value.handle)
            elif name in self._memory_inputs and is_support_array(value):
                b.bind_ortvalue_input(name, self.support_copies.get(value))
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

    def _upload(self, a: np.ndarray):
        import onnxruntime as ort

        # on device "cpu" the OrtValue would alias `a` and keep it alive (so the copy could never be dropped): copy it
        return ort.OrtValue.ortvalue_from_numpy(
            np.array(a) if self._device == "cpu" else a, self._device, self._device_id
        )
