"""The `openvino` provider: the graphs compiled by OpenVINO's CPU plugin (or another OpenVINO device).

OpenVINO reads the exported ONNX directly. Each graph is compiled with an inference precision:
`bf16` where the device offers it (OpenVINO's `OPTIMIZATION_CAPABILITIES`; on x86 CPUs with AMX or
AVX512_BF16, where oneDNN runs BF16 matmuls on AMX tiles), `fp32` elsewhere; a per-graph override keeps
a graph in `fp32` (`precisions={"mask_decoder": "fp32"}`). What each compiled graph really runs in is
read back from the compiled model and reported (`graph.precision`). Dynamic axes (the memory length,
which grows with K) stay dynamic: one compiled model serves every K. The device is never swapped: a
missing device or an unsupported precision request raises `ProviderUnavailableError`.

Compile once: the compiled model is exported (`CompiledModel.export_model`) to
`<artifacts>/.openvino_cache/` (else the user cache) under a key of the source graph's sha256, the
OpenVINO version, device, precision and the CPU's feature flags (`runtime.ort_cache`), and imported on
later loads from a memory map of the blob (no copy into Python bytes and a stream: about a third less import
time). openvino is an optional dependency (`pip install 'fssam2[openvino]'`), imported on first use.
"""

from __future__ import annotations

import tempfile
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .errors import BackendError, InputError, ProviderUnavailableError
from .manifest import GRAPH_NAMES, GraphSpec, source_sha256
from .ort_cache import CacheEntry, CacheKey, cache_entry, machine_fingerprint

PRECISIONS = {"bf16": "bf16", "fp32": "f32", "fp16": "f16"}  # our names -> OpenVINO's element types
_FROM_OV = {v: k for k, v in PRECISIONS.items()}


def _openvino():
    try:
        import openvino
    except ImportError as e:
        raise ProviderUnavailableError(
            f"provider 'openvino' needs OpenVINO ({e}); pip install 'fssam2[openvino]'"
        ) from e
    return openvino


def graph_name(path: Path) -> str:
    """The graph a file implements, from its name (the exporter names every file after its graph)."""
    name = Path(path).name
    found = [g for g in GRAPH_NAMES if name.startswith(g)]
    if not found:
        raise InputError(f"{name}: not named after one of the graphs {GRAPH_NAMES}")
    return found[0]


def fold_constants(source: Path, out: Path) -> Path:
    """Write `source` with its constant subgraphs evaluated, by ONNX Runtime's basic (provider-independent,
    standard-ops-only) optimisation level. OpenVINO folds them itself, but with reference kernels: the image
    encoder's interpolated position embedding made its compile take 30 s at 256² and ~290 s at 1024², against
    ~1 s here; the folded graph then compiles in a few seconds."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(source), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT's own exception types for corrupt files / bad graphs
        raise BackendError(f"could not read {source}: {e}") from e
    return out


class OpenVinoGraph:
    """A compiled graph; safe to call from many threads. Calls on one graph run one at a time on one infer request
    (with the LATENCY hint one request already uses every core). FP32 results are bit-identical to serial calls; BF16
    results are not bit-reproducible even serially (OpenVINO's kernels for a dynamic shape change over the first calls,
    moving BF16 logits by ~5e-3)."""

    def __init__(self, compiled, device: str, precision: str, cache: str, mapped: np.memmap | None = None):
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()
        self._outputs = [o.get_any_name() for o in compiled.outputs]
        self._mapped = (
            mapped  # the imported blob: the compiled model and its requests point into it (its weights are not copied)
        )
        self.providers = [f"OpenVINO-{device}"]
        self.precision = precision  # what OpenVINO compiled it for (read back from the compiled model)
        self.cache = cache  # "hit" (compiled blob imported), "built" (compiled and exported now) or "off"

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            result = self._request.infer(dict(feeds))  # copies the outputs (share_outputs=False)
        return {name: result[name] for name in self._outputs}


class OpenVinoBackend:
    """OpenVINO on `device` ("CPU"; "GPU"/"NPU" where OpenVINO lists them).

    `precision`: "auto" (bf16 where the device offers it, else fp32), or "bf16"/"fp16"/"fp32" for every graph;
    `precisions` overrides it per graph name. `threads` sets INFERENCE_NUM_THREADS (default: OpenVINO's).
    `cache` (default on) exports compiled models to `cache_dir` (default `<artifacts>/.openvino_cache`, else the
    user cache) and imports them on later loads."""

    provider = "openvino"

    def __init__(
        self,
        device: str = "CPU",
        precision: str = "auto",
        precisions: Mapping[str, str] | None = None,
        *,
        threads: int | None = None,
        cache: bool = True,
        cache_dir: str | Path | None = None,
    ):
        ov = _openvino()
        self._ov, self._core, self.version = ov, ov.Core(), ov.__version__
        self.device, self.name = device, f"openvino-{device}"
        if device not in self._core.available_devices:
            raise ProviderUnavailableError(
                f"OpenVINO device {device!r} is not available here (devices: {self._core.available_devices})"
            )
        capabilities = self._core.get_property(device, "OPTIMIZATION_CAPABILITIES")
        self.offered = [p for p, cap in (("bf16", "BF16"), ("fp16", "FP16"), ("fp32", "FP32")) if cap in capabilities]
        bad = [g for g in (precisions or {}) if g not in GRAPH_NAMES]
        if bad:
            raise InputError(f"unknown graph(s) {bad} in precisions; graphs are {GRAPH_NAMES}")
        self.default_precision = ("bf16" if "bf16" in self.offered else "fp32") if precision == "auto" else precision
        self._precisions = dict(precisions or {})
        for p in {self.default_precision, *self._precisions.values()}:
            if p not in PRECISIONS:
                raise InputError(f"unknown precision {p!r}; choose auto or one of {sorted(PRECISIONS)}")
            if p not in self.offered:
                raise ProviderUnavailableError(
                    f"OpenVINO {device} does not offer {p} here (offers {self.offered}); use precision fp32"
                )
        self._threads, self._cache, self._cache_dir = threads, cache, Path(cache_dir) if cache_dir is not None else None

    def precision_for(self, graph: str) -> str:
        return self._precisions.get(graph, self.default_precision)

    def _config(self, precision: str) -> dict:
        config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if self._threads:
            config["INFERENCE_NUM_THREADS"] = self._threads
        return config

    def _entry(self, path: Path, spec: GraphSpec, precision: str) -> CacheEntry | None:
        key = CacheKey(
            source_sha256(path, spec),
            f"openvino-{self.device}-{precision}",
            f"openvino {self.version}",
            machine_fingerprint(),
        )
        return cache_entry(path, key, self._cache_dir, kind="openvino", suffix=".blob")

    def _compile(self, path: Path, config: dict):
        """Compile `path` after folding its constant subgraphs with ONNX Runtime (see `fold_constants`)."""
        with tempfile.TemporaryDirectory(prefix="fssam2-ov-") as tmp:
            folded = fold_constants(path, Path(tmp) / path.name)
            try:
                return self._core.compile_model(str(folded), self.device, config)
            except Exception as e:  # OpenVINO raises RuntimeError subclasses with its own messages
                raise BackendError(f"OpenVINO could not compile {path} for {self.device}: {e}") from e

    def _import(self, blob: Path, config: dict) -> tuple[object, np.memmap]:
        """(compiled model, its memory map) from an exported blob. The map is copy-on-write (the file is never
        written) and must outlive the compiled model, which keeps pointers into it. Cache entries are replaced by
        renaming, never rewritten in place, so a running process keeps the blob it mapped."""
        mapped = np.memmap(blob, dtype=np.uint8, mode="c")
        return self._core.import_model(self._ov.Tensor(mapped, shared_memory=True), self.device, config), mapped

    def _cached(self, path: Path, entry: CacheEntry, config: dict):
        """(compiled model, memory map, "hit") from a valid entry, else (compiled, None, "built") after exporting it."""
        if entry.valid():
            try:
                return *self._import(entry.model, config), "hit"
            except Exception as e:  # complete but unreadable: rebuild it
                warnings.warn(f"rebuilding unreadable OpenVINO cache entry {entry.model}: {e}", stacklevel=3)
        compiled = self._compile(path, config)
        try:
            entry.write(compiled.export_model().getvalue())
        except OSError as e:  # a read-only directory that held a valid (now unreadable) entry
            warnings.warn(f"cannot rewrite OpenVINO cache entry {entry.model} ({e}); not cached", stacklevel=3)
            return compiled, None, "off"
        return compiled, None, "built"

    def load(self, path: Path, spec: GraphSpec) -> OpenVinoGraph:
        precision = self.precision_for(graph_name(path))
        config = self._config(precision)
        entry = self._entry(path, spec, precision) if self._cache else None
        compiled, mapped, status = (
            self._cached(path, entry, config) if entry is not None else (self._compile(path, config), None, "off")
        )
        ran = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        return OpenVinoGraph(compiled, self.device, _FROM_OV.get(ran, ran), status, mapped)
