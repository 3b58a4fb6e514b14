"""The ONNX Runtime backend: providers `cpu`, `cuda` and `tensorrt` (ONNX Runtime and its execution providers).

For the "cpu" and "cuda" providers it loads a pre-optimised copy of each graph from a cache
(`runtime.backends.cache`), made on first use. On GPU providers, an output that another loaded graph consumes stays
on the device (`runtime.backends.device.DeviceTensor`) and the memory bank is kept there between queries (IO binding,
`runtime.backends.ort_gpu`). It refuses to run elsewhere than asked: no silent CPU fallback.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..engine.backend import register_backend
from ..engine.errors import BackendError, InputError, ProviderUnavailableError
from ..engine.files import create_temp
from ..engine.manifest import GraphSpec, Manifest, source_sha256
from ..engine.options import RuntimeOptions
from ..engine.profiles import DimRange, input_profiles, memory_dim_ranges
from ..engine.versions import dist_version
from .cache import CacheEntry, CacheKey, cache_entry, machine_fingerprint
from .ort_gpu import DEFAULT_WORKSPACE_BYTES, ORT_TRT_CACHE_DIR, OrtDeviceGraph, ort_provider_list

ORT_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider"],
    # TensorRT EP with CUDA for any node TensorRT declines.
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
}
# GPU providers never hand a node to the CPU EP: ORT refuses to create the session instead (the option also
# forbids listing CPUExecutionProvider, hence not in ORT_PROVIDERS). libfssam2 sets the same entry.
NO_CPU_FALLBACK = ("session.disable_cpu_ep_fallback", "1")
CACHED_PROVIDERS = ("cpu", "cuda")  # the TensorRT EP builds engines instead (its own engine cache)


@register_backend(*ORT_PROVIDERS)
def _from_options(options: RuntimeOptions, manifest: Manifest | None) -> OrtBackend:
    """ORT's TensorRT EP gets profiles for K = 1..options.max_shots from the manifest."""
    if options.precision:
        raise InputError(f"precisions apply to the openvino provider only, not {options.provider!r}")
    dims = (
        memory_dim_ranges(manifest.episode, options.max_shots)
        if manifest is not None and options.provider == "tensorrt"
        else None
    )
    return OrtBackend(
        options.provider,
        options.threads,
        dims=dims,
        device_id=options.device_id,
        cache=options.cache,
        cache_dir=options.cache_dir,
    )


@functools.cache
def _register_shared_cpu_arena() -> None:
    """One CPU arena in ORT's process-wide environment, for sessions that opt in (session.use_env_allocators)."""
    import onnxruntime as ort

    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, None)


class OrtGraph:
    def __init__(self, session, output_names: list[str], cache: str = "off", precision: str = "fp32"):
        self._session = session
        self._outputs = output_names
        self.providers: list[str] = session.get_providers()  # what ORT actually runs it on
        self.cache = cache  # "hit" (pre-optimised model loaded), "built" (saved now) or "off"
        self.precision = precision  # the graph's, as exported (OrtBackend.precision_for)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self._session.run(self._outputs, dict(feeds))))


ORT_DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-openvino",
    "onnxruntime-directml",
    "onnxruntime-qnn",
)


def gpu_install_hint() -> str:
    """How to get ONNX Runtime's GPU providers, given the ONNX Runtime distributions installed: they all install the
    one `onnxruntime` module, so a second one (`pip install onnxruntime-gpu` beside `onnxruntime`) shadows the first."""
    installed = [d for d in ORT_DISTRIBUTIONS if dist_version(d) is not None]
    if "onnxruntime-gpu" not in installed:
        drop = " ".join(installed) or "onnxruntime"
        return f"replace the installed onnxruntime with the GPU build: pip uninstall -y {drop} && pip install onnxruntime-gpu"
    others = [d for d in installed if d != "onnxruntime-gpu"]
    if others:
        return (
            f"{' and '.join(installed)} are installed together and overwrite each other's `onnxruntime` module; "
            f"keep only the GPU build: pip uninstall -y {' '.join(installed)} && pip install onnxruntime-gpu"
        )
    return (
        "onnxruntime-gpu is installed but does not offer it: check that its CUDA / cuDNN (and TensorRT) libraries "
        "are the versions it was built for and on the library path"
    )


class OrtBackend:
    """ONNX Runtime with provider `cpu`, `cuda` or `tensorrt`; refuses to run elsewhere than asked.

    `cache` (default on) keeps ORT-optimised copies of the graphs for `cpu`/`cuda` (see `runtime.backends.cache`);
    `cache_dir` overrides where (default `<artifacts>/.ort_cache`, else the user cache).
    With `shared_arena` (default) every session draws host memory from one CPU arena registered in ORT's
    environment, so the process peaks at the largest graph's working set instead of the sum of one arena
    per graph. GPU providers run through IO binding (`runtime.backends.ort_gpu.OrtDeviceGraph`). `dims` gives the dynamic axes'
    ranges (`profiles.memory_dim_ranges`); the TensorRT EP needs them for its profiles. Its engine and timing
    caches go to `trt_cache_dir` (default: `ort_trt_cache/` beside the graphs)."""

    def __init__(
        self,
        provider: str = "cpu",
        intra_op_threads: int | None = None,
        *,
        cache: bool = True,
        cache_dir: str | Path | None = None,
        dims: Mapping[str, DimRange] | None = None,
        device_id: int = 0,
        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
        trt_cache_dir: Path | None = None,
        shared_arena: bool = True,
    ):
        if provider not in ORT_PROVIDERS:
            raise InputError(f"unknown provider {provider!r}; choose one of {sorted(ORT_PROVIDERS)}")
        import onnxruntime as ort

        self._ort = ort
        self.name = f"onnxruntime-{provider}"
        self.provider = provider
        self._providers = ORT_PROVIDERS[provider]
        wanted = self._providers[0]
        available = ort.get_available_providers()
        if wanted not in available:
            raise ProviderUnavailableError(
                f"provider {provider!r} needs {wanted}, but this onnxruntime offers {available}; {gpu_install_hint()}"
            )
        self._threads = intra_op_threads
        self._shared_arena = shared_arena
        if shared_arena:
            _register_shared_cpu_arena()
        self._cache = cache and provider in CACHED_PROVIDERS
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._dims = dict(dims or {})
        self._device_id, self._workspace, self._trt_cache_dir = device_id, workspace_bytes, trt_cache_dir
        self._consumed: set[str] = (
            set()
        )  # input names of all graphs loaded so far: outputs feeding them stay on the device

    def _options(self, optimized_model: Path | None = None, optimize: bool = True):
        options = self._ort.SessionOptions()
        if self._threads:
            options.intra_op_num_threads = self._threads
        if self._shared_arena:
            options.add_session_config_entry("session.use_env_allocators", "1")
        if self.provider != "cpu":
            options.add_session_config_entry(*NO_CPU_FALLBACK)
        if optimized_model is not None:
            options.optimized_model_filepath = str(optimized_model)
            options.log_severity_level = 3  # ORT warns that the copy is hardware-specific: the cache key says so
        if not optimize:
            options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return options

    def _session(self, path: Path, options, providers: list):
        try:
            return self._ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as e:  # ORT raises its own exception types for corrupt files / bad graphs
            if "fallback to CPU EP has been explicitly disabled" in str(e):
                raise ProviderUnavailableError(
                    f"{path.name}: provider {self.provider!r} cannot run every node of the graph "
                    f"and CPU fallback is disabled ({e})"
                ) from e
            raise BackendError(f"onnxruntime could not load {path}: {e}") from e

    def _entry(self, path: Path, spec: GraphSpec) -> CacheEntry | None:
        key = CacheKey(
            source_sha256(path, spec), self.provider, f"onnxruntime {self._ort.__version__}", machine_fingerprint()
        )
        return cache_entry(path, key, self._cache_dir)

    def _cached_session(self, path: Path, entry: CacheEntry, providers: list):
        """(session, "hit") from a valid entry, else (session, "built") after saving a fresh one."""
        if entry.valid():
            try:
                return self._session(entry.model, self._options(optimize=False), providers), "hit"
            except BackendError as e:  # complete but unreadable (disk corruption): rebuild it
                warnings.warn(f"rebuilding unreadable ORT cache entry {entry.model}: {e}", stacklevel=3)
        try:
            fd, tmp = create_temp(entry.model.parent, f".{entry.model.name}.", ".onnx")  # umask's mode, shareable
        except OSError as e:  # a read-only directory that held a valid entry
            warnings.warn(f"cannot rewrite ORT cache entry {entry.model} ({e}); optimising in memory", stacklevel=3)
            return self._session(path, self._options(), providers), "off"
        os.close(fd)
        try:
            session = self._session(path, self._options(optimized_model=Path(tmp)), providers)
            entry.commit(Path(tmp))
        finally:
            Path(tmp).unlink(missing_ok=True)
        return session, "built"

    def _provider_list(self, path: Path, spec: GraphSpec) -> tuple[list, dict]:
        """ORT's providers with their options, and the TensorRT EP's input profiles (empty otherwise)."""
        profiles, cache_dir = {}, self._trt_cache_dir or Path(path).parent / ORT_TRT_CACHE_DIR
        if self.provider == "tensorrt":
            try:
                profiles = input_profiles(spec, self._dims)
            except ValueError as e:
                raise InputError(
                    f"{path.name}: the TensorRT EP needs a range for every dynamic axis ({e}); "
                    "make the backend with create_backend(RuntimeOptions('tensorrt', max_shots=K), manifest)"
                ) from e
            try:
                cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise BackendError(
                    f"cannot create the TensorRT EP cache {cache_dir} ({e}); pass OrtBackend(trt_cache_dir=...)"
                ) from e
        providers = ort_provider_list(
            self._providers, profiles, cache_dir, device_id=self._device_id, workspace_bytes=self._workspace
        )
        return providers, profiles

    def precision_for(self, graph: str, spec: GraphSpec) -> str:
        """The graph's exported precision (a flavour ORT runs instead, e.g. the CPU's dynamic INT8, is reported as the
        standard graph's)."""
        return spec.precision

    def load(self, path: Path, spec: GraphSpec, graph: str) -> OrtGraph | OrtDeviceGraph:
        providers, profiles = self._provider_list(path, spec)
        entry = self._entry(path, spec) if self._cache else None
        if entry is not None:
            session, status = self._cached_session(path, entry, providers)
        else:
            session, status = self._session(path, self._options(), providers), "off"
        active = session.get_providers()
        missing = [ep for ep in self._providers if ep not in active]
        if missing:
            raise ProviderUnavailableError(
                f"{path.name}: requested {self._providers} but the session runs on {active} (missing {missing})"
            )
        self._consumed.update(t.name for t in spec.inputs)
        if self.provider == "cpu":
            return OrtGraph(session, [o.name for o in spec.outputs], status, self.precision_for(graph, spec))
        return OrtDeviceGraph(
            session,
            spec,
            owner=self,
            device="cuda",
            device_id=self._device_id,
            consumed=self._consumed,
            profiles=profiles,
            label=Path(path).stem,
            cache=status,
            precision=self.precision_for(graph, spec),
        )
