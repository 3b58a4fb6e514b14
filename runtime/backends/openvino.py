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
OpenVINO version, device, precision and the CPU's feature flags (`runtime.backends.cache`), and imported on
later loads from a memory map of the blob (no copy into Python bytes and a stream: about a third less import
time). openvino is an optional dependency (`pip install 'fssam2[openvino]'`), imported on first use.

A graph's `openvino` flavour (made by `fssam2-export --precision bf16`) decides its default precision ("bf16", or
"fp32" for a graph the export kept FP32) and lists `fp32_nodes`: FP32 islands the export's gate found, nodes that
keep FP32 inside a BF16 graph. What is done to a graph before it compiles (the islands, `TUNING`, 7-bit weights,
`AUTO_PRECISION`) is `runtime.backends.openvino_tuning`; `tuning_for` says what applies to a graph.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..engine.backend import register_backend
from ..engine.errors import BackendError, InputError, ProviderUnavailableError
from ..engine.manifest import GRAPH_NAMES, Flavour, GraphSpec, Manifest, source_sha256
from ..engine.options import RuntimeOptions
from . import openvino_tuning
from .cache import CacheEntry, CacheKey, cache_entry, machine_fingerprint
from .openvino_tuning import (
    NO_TUNING,
    Tuning,
    block_attention,
    fold_constants,
    int8_weights_in_7_bits,
    island_model,
    runtime_precisions,
)

PRECISIONS = {"bf16": "bf16", "fp32": "f32", "fp16": "f16"}  # our names -> OpenVINO's element types
_FROM_OV = {v: k for k, v in PRECISIONS.items()}
PROVIDER = "openvino"


def _openvino():
    try:
        import openvino
    except ImportError as e:
        raise ProviderUnavailableError(
            f"provider 'openvino' needs OpenVINO ({e}); pip install 'fssam2[openvino]'"
        ) from e
    return openvino


def openvino_flavour(spec: GraphSpec) -> Flavour | None:
    """The graph's flavour made for OpenVINO (by `fssam2-export --precision bf16`), if any."""
    return next((f for f in spec.flavours if PROVIDER in f.providers), None)


@register_backend(PROVIDER)
def _from_options(options: RuntimeOptions, manifest: Manifest | None) -> OpenVinoBackend:
    """On the CPU; `options.precision` "*" for every graph (default "auto"), a graph's name for its own."""
    every, per_graph = options.precision_by_graph()
    return OpenVinoBackend(
        precision=every or "auto",
        precisions=per_graph,
        threads=options.threads,
        cache=options.cache,
        cache_dir=options.cache_dir,
    )


class OpenVinoGraph:
    """A compiled graph; safe to call from many threads. Calls on one graph run one at a time on one infer request
    (with the LATENCY hint one request already uses every core). FP32 results are bit-identical to serial calls; BF16
    results are not bit-reproducible even serially (OpenVINO's kernels for a dynamic shape change over the first calls,
    moving BF16 logits by ~5e-3)."""

    def __init__(
        self,
        compiled,
        device: str,
        precision: str,
        cache: str,
        mapped: np.memmap | None = None,
        fp32_nodes: Sequence[str] = (),
        outputs: Sequence[str] = (),
    ):
        self.compiled = compiled
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()
        # Each output under its graph name (`outputs`, the manifest's): a tensor can carry several names, e.g. an
        # FP16 graph's output is also its output Cast's, and which one OpenVINO reports first differs between a
        # freshly compiled and an imported model.
        self._outputs = [
            (next((n for n in outputs if n in o.get_names()), o.get_any_name()), o) for o in compiled.outputs
        ]
        self._mapped = (
            mapped  # the imported blob: the compiled model and its requests point into it (its weights are not copied)
        )
        self.providers = [f"OpenVINO-{device}"]
        self.precision = precision  # what OpenVINO compiled it for (read back from the compiled model)
        self.cache = cache  # "hit" (compiled blob imported), "built" (compiled and exported now) or "off"
        self.fp32_nodes = list(fp32_nodes)  # FP32 islands it was compiled with (from its openvino flavour)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            result = self._request.infer(dict(feeds))  # copies the outputs (share_outputs=False)
        return {name: result[port] for name, port in self._outputs}


class OpenVinoBackend:
    """OpenVINO on `device` ("CPU"; "GPU"/"NPU" where OpenVINO lists them).

    `precision`: "auto" (each graph's openvino flavour's precision, bf16 for a graph without one; fp32 where the
    device does not offer it), or "bf16"/"fp16"/"fp32" for every graph; `precisions` overrides it per graph name. A
    flavour's FP32 islands apply whenever a graph compiles in a reduced precision. `threads` sets INFERENCE_NUM_THREADS (default: OpenVINO's).
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
        self._auto = precision == "auto"
        self._precisions = dict(precisions or {})
        for p in {self.default_precision, *self._precisions.values()}:
            if p not in PRECISIONS:
                raise InputError(f"unknown precision {p!r}; choose auto or one of {sorted(PRECISIONS)}")
            if p not in self.offered:
                raise ProviderUnavailableError(
                    f"OpenVINO {device} does not offer {p} here (offers {self.offered}); use precision fp32"
                )
        self._threads, self._cache, self._cache_dir = threads, cache, Path(cache_dir) if cache_dir is not None else None
        self._int8_saturates = device == "CPU" and openvino_tuning.int8_saturates()

    def precision_for(self, graph: str, spec: GraphSpec) -> str:
        """The precision `graph` compiles in: the explicit one, else its openvino flavour's where offered, else
        `AUTO_PRECISION`'s for the graph's exported precision, else the default."""
        if graph in self._precisions or not self._auto:
            return self._precisions.get(graph, self.default_precision)
        flavour = openvino_flavour(spec)
        if flavour is not None:
            wanted = flavour.precision
        else:
            wanted = openvino_tuning.AUTO_PRECISION.get((graph, spec.precision), self.default_precision)
        return wanted if wanted in self.offered else "fp32"

    def fp32_nodes_for(self, spec: GraphSpec, precision: str) -> list[str]:
        """The FP32 islands a graph compiled in `precision` gets: its flavour's, unless it compiles in FP32."""
        flavour = openvino_flavour(spec)
        return list(flavour.meta.get("fp32_nodes", [])) if flavour is not None and precision != "fp32" else []

    def _config(self, precision: str, tuning: Tuning = NO_TUNING) -> dict:
        """Compile properties: precision, latency hint, threads, and the graph's tuning's."""
        config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if self._threads:
            config["INFERENCE_NUM_THREADS"] = self._threads
        return config | dict(tuning.properties)

    def _entry(self, path: Path, spec: GraphSpec, precision: str, fp32_nodes: Sequence[str], tuning: Tuning):
        marking = "\n".join([f"islands v{openvino_tuning.ISLANDS_VERSION}", *sorted(fp32_nodes)])
        islands = hashlib.sha256(marking.encode()).hexdigest()[:8] if fp32_nodes else ""
        key = CacheKey(
            source_sha256(path, spec),
            f"openvino-{self.device}-{precision}"
            + (f"-fp32x{len(fp32_nodes)}-{islands}" if fp32_nodes else "")
            + tuning.key(),
            f"openvino {self.version}",
            machine_fingerprint(),
        )
        return cache_entry(path, key, self._cache_dir, kind="openvino", suffix=".blob")

    def tuning_for(self, graph: str, precision: str, spec: GraphSpec) -> Tuning:
        """`TUNING`'s entry, with 7-bit weights for an INT8 graph where this CPU's INT8 matmuls saturate."""
        tuning = openvino_tuning.TUNING.get((graph, precision), Tuning())
        if spec.precision == "int8" and self._int8_saturates:
            tuning = replace(tuning, int8_weights_7bit=True)
        return tuning

    def read_model(self, path: Path, fp32_nodes: Sequence[str], workdir: Path, tuning: Tuning = NO_TUNING):
        """`path` as OpenVINO reads it before the rest of `tuning`: constant subgraphs folded by ONNX Runtime (see
        `fold_constants`), INT8 weights in 7 bits if `tuning` says so, the FP32 islands marked (`island_model`).
        Files in `workdir` must outlive the model."""
        folded = fold_constants(path, workdir / path.name)
        try:
            model = self._core.read_model(str(folded))
        except Exception as e:  # OpenVINO raises RuntimeError subclasses with its own messages
            raise BackendError(f"OpenVINO could not read {path}: {e}") from e
        if tuning.int8_weights_7bit:
            int8_weights_in_7_bits(model)
        return island_model(self._core, model, fp32_nodes, workdir, str(path)) if fp32_nodes else model

    def compile_model(self, model, precision: str, name: str = "the model", tuning: Tuning = NO_TUNING):
        """`model` compiled in `precision` with `tuning` (its attentions blocked in place, its properties added)."""
        if tuning.query_block:
            block_attention(model, tuning.query_block)
        try:
            return self._core.compile_model(model, self.device, self._config(precision, tuning))
        except Exception as e:  # OpenVINO raises RuntimeError subclasses with its own messages
            raise BackendError(f"OpenVINO could not compile {name} for {self.device}: {e}") from e

    def run_with_outputs(
        self, model, tensors: Sequence[str], feeds: Mapping[str, np.ndarray], precision: str, graph: str | None = None
    ) -> dict[str, np.ndarray]:
        """The named (intermediate) tensors of `model` compiled in `precision` (with `graph`'s tuning when named, as
        `load` would run them; a requested tensor inside a blocked attention comes from the whole attention), run once
        on `feeds`."""
        extended = model.clone()
        extended.add_outputs(list(tensors))
        tuning = openvino_tuning.TUNING.get((graph, precision), Tuning())
        result = self.compile_model(extended, precision, tuning=tuning).create_infer_request().infer(dict(feeds))
        return {t: result[t] for t in tensors}

    def _compile(self, path: Path, precision: str, fp32_nodes: Sequence[str], tuning: Tuning):
        with tempfile.TemporaryDirectory(prefix="fssam2-ov-") as tmp:
            model = self.read_model(path, fp32_nodes, Path(tmp), tuning)
            return self.compile_model(model, precision, str(path), tuning)

    def _import(self, blob: Path, config: dict) -> tuple[object, np.memmap]:
        """(compiled model, its memory map) from an exported blob. The map is copy-on-write (the file is never
        written) and must outlive the compiled model, which keeps pointers into it. Cache entries are replaced by
        renaming, never rewritten in place, so a running process keeps the blob it mapped."""
        mapped = np.memmap(blob, dtype=np.uint8, mode="c")
        return self._core.import_model(self._ov.Tensor(mapped, shared_memory=True), self.device, config), mapped

    def _cached(self, path: Path, entry: CacheEntry, precision: str, fp32_nodes: Sequence[str], tuning: Tuning):
        """(compiled model, memory map, "hit") from a valid entry, else (compiled, None, "built") after exporting it."""
        if entry.valid():
            try:
                return *self._import(entry.model, self._config(precision, tuning)), "hit"
            except Exception as e:  # complete but unreadable: rebuild it
                warnings.warn(f"rebuilding unreadable OpenVINO cache entry {entry.model}: {e}", stacklevel=3)
        compiled = self._compile(path, precision, fp32_nodes, tuning)
        try:
            entry.write(compiled.export_model().getvalue())
        except OSError as e:  # a read-only directory that held a valid (now unreadable) entry
            warnings.warn(f"cannot rewrite OpenVINO cache entry {entry.model} ({e}); not cached", stacklevel=3)
            return compiled, None, "off"
        return compiled, None, "built"

    def load(self, path: Path, spec: GraphSpec, graph: str) -> OpenVinoGraph:
        precision = self.precision_for(graph, spec)
        fp32_nodes = self.fp32_nodes_for(spec, precision)
        tuning = self.tuning_for(graph, precision, spec)
        entry = self._entry(path, spec, precision, fp32_nodes, tuning) if self._cache else None
        compiled, mapped, status = (
            self._cached(path, entry, precision, fp32_nodes, tuning)
            if entry is not None
            else (self._compile(path, precision, fp32_nodes, tuning), None, "off")
        )
        hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        ran = _FROM_OV.get(hint, hint)
        if "i8" in runtime_precisions(compiled).values():
            ran = f"int8+{ran}"  # the quantised layers in INT8, the rest in the hint's precision
        outputs = [t.name for t in spec.outputs]
        return OpenVinoGraph(compiled, self.device, ran, status, mapped, fp32_nodes, outputs)
