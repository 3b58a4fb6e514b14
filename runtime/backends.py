"""Inference backends behind one small interface.

A backend turns a graph file + its manifest spec into a `Graph` whose `run(feeds)` maps input names
to arrays and returns output names to arrays; its `provider` names which of the graph's flavours
(manifest schema 2) the segmenter hands it. The ONNX Runtime backend is the default; any object with
the same `load` method (TensorRT engines, a remote server, a mock) can be injected instead.

For the "cpu" and "cuda" providers the ONNX Runtime backend loads a pre-optimised copy of each graph
from a cache (`runtime.ort_cache`), made on first use.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Mapping, Protocol

import numpy as np

from .manifest import GraphSpec, file_sha256
from .ort_cache import CacheEntry, CacheKey, cache_entry, machine_fingerprint

ORT_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    # TensorRT EP with CUDA for any node TensorRT declines; CPU is deliberately not listed.
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
}
CACHED_PROVIDERS = ("cpu", "cuda")  # the TensorRT EP builds engines instead (its own engine cache)


class ProviderUnavailableError(RuntimeError):
    """The requested execution provider cannot be used; there is no silent CPU fallback."""


class Graph(Protocol):
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Backend(Protocol):
    name: str
    provider: str  # picks each graph's flavour in the manifest (GraphSpec.artifact_for)

    def load(self, path: Path, spec: GraphSpec) -> Graph: ...


class OrtGraph:
    def __init__(self, session, output_names: list[str], cache: str = "off"):
        self._session = session
        self._outputs = output_names
        self.providers: list[str] = session.get_providers()  # what ORT actually runs it on
        self.cache = cache  # "hit" (pre-optimised model loaded), "built" (saved now) or "off"

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self._session.run(self._outputs, dict(feeds))))


class OrtBackend:
    """ONNX Runtime with provider `cpu`, `cuda` or `tensorrt`; refuses to run elsewhere than asked.

    `cache` (default on) keeps ORT-optimised copies of the graphs for `cpu`/`cuda` (see `runtime.ort_cache`);
    `cache_dir` overrides where (default `<artifacts>/.ort_cache`, else the user cache)."""

    def __init__(self, provider: str = "cpu", intra_op_threads: int | None = None, *, cache: bool = True, cache_dir: str | Path | None = None):
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
        self._threads = intra_op_threads
        self._cache = cache and provider in CACHED_PROVIDERS
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None

    def _options(self, optimized_model: Path | None = None, optimize: bool = True):
        options = self._ort.SessionOptions()
        if self._threads:
            options.intra_op_num_threads = self._threads
        if optimized_model is not None:
            options.optimized_model_filepath = str(optimized_model)
            options.log_severity_level = 3  # ORT warns that the copy is hardware-specific: the cache key says so
        if not optimize:
            options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return options

    def _session(self, path: Path, options):
        try:
            return self._ort.InferenceSession(str(path), sess_options=options, providers=self._providers)
        except Exception as e:  # ORT raises its own exception types for corrupt files / bad graphs
            raise RuntimeError(f"onnxruntime could not load {path}: {e}") from e

    def _entry(self, path: Path, spec: GraphSpec) -> CacheEntry | None:
        sha = next((f.sha256 for f in [spec.standard, *spec.flavours] if f.file == path.name), None) or file_sha256(path)
        key = CacheKey(sha, self.provider, self._ort.__version__, machine_fingerprint())
        return cache_entry(path, key, self._cache_dir)

    def _cached_session(self, path: Path, entry: CacheEntry):
        """(session, "hit") from a valid entry, else (session, "built") after saving a fresh one."""
        if entry.valid():
            try:
                return self._session(entry.model, self._options(optimize=False)), "hit"
            except RuntimeError as e:  # complete but unreadable (disk corruption): rebuild it
                warnings.warn(f"rebuilding unreadable ORT cache entry {entry.model}: {e}", stacklevel=3)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{entry.model.name}.", suffix=".onnx", dir=entry.model.parent)
        except OSError as e:  # a read-only directory that held a valid entry
            warnings.warn(f"cannot rewrite ORT cache entry {entry.model} ({e}); optimising in memory", stacklevel=3)
            return self._session(path, self._options()), "off"
        os.close(fd)
        try:
            session = self._session(path, self._options(optimized_model=Path(tmp)))
            entry.commit(Path(tmp))
        finally:
            Path(tmp).unlink(missing_ok=True)
        return session, "built"

    def load(self, path: Path, spec: GraphSpec) -> Graph:
        entry = self._entry(path, spec) if self._cache else None
        if entry is not None:
            session, status = self._cached_session(path, entry)
        else:
            session, status = self._session(path, self._options()), "off"
        active = session.get_providers()
        if self._providers[0] not in active:
            raise ProviderUnavailableError(
                f"{path.name}: requested {self._providers[0]} but the session runs on {active}"
            )
        return OrtGraph(session, [o.name for o in spec.outputs], status)
