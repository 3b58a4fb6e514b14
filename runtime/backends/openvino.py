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
keep FP32 inside a BF16 graph. OpenVINO has no API to mark them; its IR reader restores the runtime attribute
`DisablePrecisionConversion`, which the CPU plugin honours under any inference precision hint, so a graph with
islands goes through IR (`island_model`) before it is compiled (with each marked MatMul kept apart from its bias,
`_unfusable`).

Per graph and precision, `TUNING` adds what measurements showed faster: BF16 memory attention compiles without
OpenVINO's fused attention kernel, its attentions over the memory rewritten into blocks of 512 query tokens
(`block_attention`), one compiled model for every K. An INT8 graph loads with its weights in 7 bits where the CPU's
INT8 matmuls would saturate (`int8_saturates`, `int8_weights_in_7_bits`). `tuning_for` says what applies. An INT8
export's mask decoder compiles in FP32 unless a precision is given (`AUTO_PRECISION`).
"""

from __future__ import annotations

import hashlib
import platform
import tempfile
import threading
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..engine.errors import BackendError, InputError, ManifestError, ProviderUnavailableError
from ..engine.manifest import GRAPH_NAMES, Flavour, GraphSpec, source_sha256
from .cache import CacheEntry, CacheKey, cache_entry, cpu_flags, machine_fingerprint

PRECISIONS = {"bf16": "bf16", "fp32": "f32", "fp16": "f16"}  # our names -> OpenVINO's element types
_FROM_OV = {v: k for k, v in PRECISIONS.items()}
PROVIDER = "openvino"
KEEP_FP32_ATTRIBUTE = "DisablePrecisionConversion"
KEEP_FP32 = f'<attribute name="{KEEP_FP32_ATTRIBUTE}" version="0" value="dynamic:f16"/>'
ISLANDS_VERSION = 2  # how `island_model` marks (2: `_unfusable`); in the cache key, so older blobs with islands rebuild


@dataclass(frozen=True)
class Tuning:
    """How one graph compiles in one precision, beyond the precision: OpenVINO compile `properties`,
    `query_block` (attentions over the memory computed over blocks of that many query tokens: `block_attention`), and
    `int8_weights_7bit` (its INT8 weights halved into 7 bits: `int8_weights_in_7_bits`). In the cache key."""

    properties: Mapping[str, str] = field(default_factory=dict)
    query_block: int = 0
    int8_weights_7bit: bool = False

    def key(self) -> str:
        return (
            "".join(f"-{k}={v}" for k, v in sorted(self.properties.items()))
            + (f"-qblock={self.query_block}" if self.query_block else "")
            + ("-int8w7" if self.int8_weights_7bit else "")
        )


# Measured at 1024² (docs/performance.md, "OpenVINO per-graph properties" and "Memory attention in query blocks"):
# BF16 memory attention with its attention as separate oneDNN MatMul / Softmax / MatMul ops instead of OpenVINO's
# fused snippet kernel takes 0.80-0.85x the time on AMX (the image encoder and mask decoder 1.1x, FP32 memory
# attention the same). Those ops materialise the scores: whole, +500 MB peak at K = 5; over blocks of 512 query
# tokens, 42 MB per cross-attention at K = 5 and about as fast (K = 5 on AVX512_BF16: 0.60x the fused kernel's time,
# whole 0.58x; peak RSS 412 MB, whole 968 MB, fused 370 MB).
TUNING: dict[tuple[str, str], Tuning] = {("memory_attention", "bf16"): Tuning({"SNIPPETS_MODE": "DISABLE"}, 512)}

# Measured (docs/performance.md, "INT8 on an AVX512_BF16 + VNNI CPU"): an INT8 export's mask decoder with its
# non-quantised ops in BF16 failed the INT8 gate on AVX512_BF16 at 128² and 1024² (logits correlation 0.93-0.94), and
# on AMX against one of two FP32 references; in FP32 it passes (0.999) for 6-16 ms more per query. The other INT8
# graphs pass in BF16 and take 0.55-0.7x their FP32 time there.
AUTO_PRECISION: dict[tuple[str, str], str] = {("mask_decoder", "int8"): "fp32"}


def int8_saturates() -> bool:
    """Whether this CPU's INT8 matmuls saturate: x86 without VNNI or AMX-INT8 multiplies uint8 by int8 with
    VPMADDUBSW, which clamps each pair of products to 16 bits (oneDNN's advice: weights in 7 bits). Measured with
    OpenVINO on an AVX2-only CPU, an INT8 export's image_embed correlation 0.930, 0.998 with 7-bit weights."""
    return platform.machine().lower() in ("x86_64", "amd64") and not cpu_flags() & {
        "avx512_vnni",
        "avx_vnni",
        "amx_int8",
    }


def _constant_below(output):
    """The Constant an output comes from through shape-only / element-type-only ops, else None."""
    node = output.get_node()
    while node.get_type_name() in ("Convert", "Reshape", "Unsqueeze", "Squeeze"):
        node = node.input_value(0).get_node()
    return node if node.get_type_name() == "Constant" else None


def _only_consumer(node):
    targets = list(node.output(0).get_target_inputs())
    return targets[0] if len(targets) == 1 else None


def int8_weights_in_7_bits(model) -> int:
    """Rewrite `model` (OpenVINO's, as read from ONNX) in place: each constant INT8 weight of a dequantization
    (Constant i8 -> Convert [-> Subtract a zero point of 0] -> Multiply by its scale) halved into [-64, 63], its scale
    doubled: the same values to within half a step. Returns how many."""
    import openvino.opset13 as ops

    count = 0
    for const in [op for op in model.get_ordered_ops() if op.get_type_name() == "Constant"]:
        if const.get_output_element_type(0).get_type_name() != "i8":
            continue
        to_convert = _only_consumer(const)
        if to_convert is None or to_convert.get_node().get_type_name() != "Convert":
            continue
        step = _only_consumer(to_convert.get_node())
        if step is not None and step.get_node().get_type_name() == "Subtract" and step.get_index() == 0:
            zero = _constant_below(step.get_node().input_value(1))
            if zero is None or zero.get_data().any():
                continue
            step = _only_consumer(step.get_node())
        if step is None or step.get_node().get_type_name() != "Multiply":
            continue
        scale_port = step.get_node().input(1 - step.get_index())
        scale = scale_port.get_source_output()
        if _constant_below(scale) is None:
            continue
        halved = np.clip(np.round(const.get_data() / 2), -64, 63).astype(np.int8)
        to_convert.replace_source_output(ops.constant(halved).output(0))
        two = ops.constant(np.array(2, dtype=scale.get_element_type().to_dtype()))
        scale_port.replace_source_output(ops.multiply(scale, two).output(0))
        count += 1
    model.validate_nodes_and_infer_types()
    return count


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


def openvino_flavour(spec: GraphSpec) -> Flavour | None:
    """The graph's flavour made for OpenVINO (by `fssam2-export --precision bf16`), if any."""
    return next((f for f in spec.flavours if PROVIDER in f.providers), None)


def _decomposition(model, names: Sequence[str], source: str) -> set[str]:
    """The ops implementing the ONNX nodes `names`: the op named after each node and its producers back to the
    previous named tensors (OpenVINO's ONNX reader splits e.g. LayerNormalization into MVN, Multiply, Add and names
    only the last one). Unknown names raise ManifestError."""
    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    unknown = sorted(set(names) - ops.keys())
    if unknown:
        raise ManifestError(f"{source}: the openvino flavour's fp32_nodes {unknown} are not nodes of this graph")
    found: set[str] = set()
    stack = [ops[n] for n in names]
    while stack:
        op = stack.pop()
        if op.get_friendly_name() in found:
            continue
        found.add(op.get_friendly_name())
        for value in (i.get_source_output() for i in op.inputs()):
            if not value.get_names() and value.get_node().get_type_name() not in ("Constant", "Parameter"):
                stack.append(value.get_node())
    return found


def _unfusable(model, marked: set[str]) -> set[str]:
    """Give each marked MatMul with constant weights an identity consumer, `Maximum(x, x)`, ahead of its consumers;
    the names of the ops added. The CPU plugin turns such a MatMul into a FullyConnected and fuses a following bias
    Add into a new FullyConnected (`FullyConnectedBiasFusion`: it needs the FullyConnected's only consumer to be the
    Add), which drops the non-copyable `DisablePrecisionConversion`; with two consumer ports the fusion does not
    apply, the mark stays on the FullyConnected and the Add runs as an eltwise (fused with the Maximum)."""
    import openvino.opset13 as ops

    added: set[str] = set()
    for op in model.get_ordered_ops():
        weighted = op.get_type_name() == "MatMul" and op.input_value(1).get_node().get_type_name() == "Constant"
        if not weighted or op.get_friendly_name() not in marked:
            continue
        out = op.output(0)
        consumers, names = list(out.get_target_inputs()), out.get_names()
        same = ops.maximum(out, out)
        same.set_friendly_name(f"{op.get_friendly_name()}/unfused")
        for consumer in consumers:
            consumer.replace_source_output(same.output(0))
        out.get_tensor().set_names(set())  # the tensor's names (model outputs, compared tensors) move to the copy
        same.output(0).get_tensor().set_names(names)
        added.add(same.get_friendly_name())
    return added


def island_model(core, model, fp32_nodes: Sequence[str], workdir: Path, source: str = "graph"):
    """A copy of `model` with the nodes `fp32_nodes` marked to keep FP32 under a BF16 / FP16 inference precision:
    saved as IR, `DisablePrecisionConversion` added to each node's layer (and its decomposition's, and `_unfusable`'s
    additions), read back. The IR files in `workdir` must outlive the returned model (its weights are mapped from
    them)."""
    import openvino

    marked = _decomposition(model, fp32_nodes, source)
    model = model.clone()
    marked |= _unfusable(model, marked)
    xml = workdir / "islands.xml"
    openvino.save_model(model, str(xml), compress_to_fp16=False)
    tree = ET.parse(xml)
    for layer in tree.getroot().iter("layer"):
        if layer.get("name") in marked:
            info = layer.find("rt_info")
            if info is None:
                info = ET.Element("rt_info")
                children = list(layer)
                at = next((i for i, c in enumerate(children) if c.tag == "input"), len(children))
                layer.insert(at, info)
            info.append(ET.fromstring(KEEP_FP32))
    tree.write(xml)
    return core.read_model(str(xml))


def runtime_precisions(compiled) -> dict[str, str]:
    """What each op of the source model runs in, read from the compiled model: name -> "f32", "bf16", ..."""
    ran: dict[str, str] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        precision = info["runtimePrecision"].astype(str)
        for name in filter(None, info["originalLayersNames"].astype(str).split(",")):
            ran[name] = precision
    return ran


def _keeps_fp32(op) -> bool:
    """Whether `op` is marked to keep FP32 (read from IR, the attribute's key carries its version)."""
    return any(key.startswith(KEEP_FP32_ATTRIBUTE) for key in op.get_rt_info().keys())


def block_attention(model, block: int) -> int:
    """Rewrite `model` in place: each attention over a dynamic number of keys (memory attention's cross-attentions;
    the memory grows with K), MatMul-Softmax-MatMul with the softmax over the keys, computed for blocks of `block`
    query tokens and concatenated. Same products; run as separate ops, only a block's scores (`block` x keys) are held
    at once. Attentions with a node kept FP32 (an FP32 island) stay whole. Returns how many were blocked."""
    import openvino.opset13 as ops

    blocked = 0
    for softmax in [op for op in model.get_ordered_ops() if op.get_type_name() == "Softmax"]:
        scores, consumers = softmax.input_value(0).get_node(), list(softmax.output(0).get_target_inputs())
        if scores.get_type_name() != "MatMul" or len(consumers) != 1 or consumers[0].get_index() != 0:
            continue
        mix = consumers[0].get_node()
        shape, rank = softmax.get_output_partial_shape(0), softmax.get_output_partial_shape(0).rank.get_length()
        tokens = shape[rank - 2]
        if (
            mix.get_type_name() != "MatMul"
            or softmax.get_attributes()["axis"] not in (-1, rank - 1)  # normalised over the keys, not the queries
            or scores.get_attributes()["transpose_a"]
            or mix.get_attributes()["transpose_a"]
            or shape[rank - 1].is_static  # self-attention: as many keys at every K
            or tokens.is_dynamic
            or tokens.get_length() <= block
            or any(_keeps_fp32(op) for op in (scores, softmax, mix))
        ):
            continue
        n = tokens.get_length()
        sizes = [block] * (n // block) + ([n % block] if n % block else [])
        queries = ops.variadic_split(scores.input_value(0), np.int64(-2), np.array(sizes, np.int64))
        parts = []
        for i, query in enumerate(queries.outputs()):
            part = ops.matmul(query, scores.input_value(1), False, scores.get_attributes()["transpose_b"])
            part = ops.softmax(part, -1)
            part = ops.matmul(part, mix.input_value(1), False, mix.get_attributes()["transpose_b"])
            part.set_friendly_name(f"{mix.get_friendly_name()}/block{i}")
            parts.append(part.output(0))
        joined = ops.concat(parts, -2)
        joined.set_friendly_name(f"{mix.get_friendly_name()}/blocks")
        out = mix.output(0)
        for consumer in list(out.get_target_inputs()):
            consumer.replace_source_output(joined.output(0))
        names = out.get_names()
        out.get_tensor().set_names(set())
        joined.output(0).get_tensor().set_names(names)
        blocked += 1
    model.validate_nodes_and_infer_types()
    return blocked


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
        self._int8_saturates = device == "CPU" and int8_saturates()

    def precision_for(self, graph: str, spec: GraphSpec | None = None) -> str:
        """The precision `graph` compiles in: the explicit one, else its openvino flavour's where offered, else
        `AUTO_PRECISION`'s for the graph's exported precision, else the default."""
        if graph in self._precisions or not self._auto:
            return self._precisions.get(graph, self.default_precision)
        flavour = openvino_flavour(spec) if spec is not None else None
        if flavour is not None:
            wanted = flavour.precision
        else:
            wanted = AUTO_PRECISION.get((graph, spec.precision if spec is not None else ""), self.default_precision)
        return wanted if wanted in self.offered else "fp32"

    def fp32_nodes_for(self, spec: GraphSpec, precision: str) -> list[str]:
        """The FP32 islands a graph compiled in `precision` gets: its flavour's, unless it compiles in FP32."""
        flavour = openvino_flavour(spec)
        return list(flavour.meta.get("fp32_nodes", [])) if flavour is not None and precision != "fp32" else []

    def _config(self, precision: str, tuning: Tuning = Tuning()) -> dict:
        """Compile properties: precision, latency hint, threads, and the graph's tuning's."""
        config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if self._threads:
            config["INFERENCE_NUM_THREADS"] = self._threads
        return config | dict(tuning.properties)

    def _entry(self, path: Path, spec: GraphSpec, precision: str, fp32_nodes: Sequence[str], tuning: Tuning):
        marking = "\n".join([f"islands v{ISLANDS_VERSION}", *sorted(fp32_nodes)])
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
        tuning = TUNING.get((graph, precision), Tuning())
        if spec.precision == "int8" and self._int8_saturates:
            tuning = replace(tuning, int8_weights_7bit=True)
        return tuning

    def read_model(self, path: Path, fp32_nodes: Sequence[str], workdir: Path, tuning: Tuning = Tuning()):
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

    def compile_model(self, model, precision: str, name: str = "the model", tuning: Tuning = Tuning()):
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
        tuning = TUNING.get((graph, precision), Tuning())
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

    def load(self, path: Path, spec: GraphSpec) -> OpenVinoGraph:
        graph = graph_name(path)
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
