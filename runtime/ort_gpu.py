"""ONNX Runtime on GPU providers: CUDA / TensorRT EP options and IO binding that keeps data on the device.

The option builders are pure functions (unit-tested without a GPU). `OrtDeviceGraph` binds this
backend's device outputs (`DeviceTensor` wrapping an OrtValue) in place, keeps a device copy of each
memory-bank input (re-uploaded only when the bank changed: ORT cannot write part of an OrtValue), and
leaves on the device every output another loaded graph consumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from .device import BankTracker, DeviceTensor
from .manifest import GraphSpec
from .profiles import MEMORY_AXIS, InputProfile, check_memory_length

DEFAULT_WORKSPACE_BYTES = 4 << 30
ORT_TRT_CACHE_DIR = "ort_trt_cache"  # ORT TensorRT EP engine + timing cache, beside the graphs


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


def ort_provider_list(eps: list[str], profiles: Mapping[str, InputProfile], cache_dir: Path, *, device_id: int = 0,
                      workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> list:
    """The `providers=` argument of an InferenceSession for these execution providers, with options."""
    options = {
        "TensorrtExecutionProvider": lambda: tensorrt_ep_options(profiles, cache_dir, workspace_bytes=workspace_bytes, device_id=device_id),
        "CUDAExecutionProvider": lambda: cuda_ep_options(device_id),
    }
    return [(ep, options[ep]()) if ep in options else ep for ep in eps]


class OrtDeviceGraph:
    """One ONNX Runtime session on a GPU provider, run through IO binding: feeds that are this backend's
    DeviceTensors are bound in place, memory-bank inputs are uploaded only when they changed, and outputs
    another loaded graph consumes stay on the device. (`device="cpu"` runs the same path on the CPU EP.)"""

    def __init__(self, session, spec: GraphSpec, *, owner=None, device: str = "cuda", device_id: int = 0,
                 consumed: set[str] | None = None, profiles: Mapping[str, InputProfile] | None = None, label: str = "",
                 cache: str = "off"):
        self._session = session
        self.providers: list[str] = session.get_providers()  # what ORT actually runs it on
        self.cache = cache  # ORT cache status, as OrtGraph.cache
        self._outputs = [o.name for o in spec.outputs]
        self._dtypes = {o.name: o.dtype for o in spec.outputs}
        self._device, self._device_id = device, device_id
        self._owner = owner
        self._consumed = consumed if consumed is not None else set()
        self._profiles = dict(profiles or {})
        self._label = label
        self._banks = {t.name: BankTracker() for t in spec.inputs if MEMORY_AXIS in t.shape}
        self._bank_values: dict[str, object] = {}
        self._binding = session.io_binding()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_memory_length(self._label, feeds, self._profiles, "the TensorRT EP profile",
                            "create the backend with a larger max_shots (fssam2 segment sizes it to the supports given)")
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

    def forget_memory(self) -> None:
        for tracker in self._banks.values():
            tracker.forget()
        self._bank_values.clear()

    def _bank_value(self, name: str, feed: np.ndarray):
        """The bank's device copy; ORT cannot write into part of an OrtValue, so a grown bank is uploaded
        whole, once per change (never per query)."""
        if self._banks[name].start(feed) < feed.shape[1] or name not in self._bank_values:
            import onnxruntime as ort

            # a copy: on device "cpu" the OrtValue would alias the bank's buffer, which is refilled after a reset
            self._bank_values[name] = ort.OrtValue.ortvalue_from_numpy(np.array(feed, copy=True), self._device, self._device_id)
        return self._bank_values[name]
