"""FP32 artifacts -> reduced-precision artifacts, gated on fidelity. Called by fssam2_export.

1. capture calibration feeds from K-shot episodes (or load them from `calib_file`);
2. per graph: activation ranges -> FP16 range report (nodes overflowing FP16 join the FP32 block
   list); convert to FP16, or quantise to INT8 QDQ (+ the ORT-CPU dynamic INT8 flavour), or copy FP32;
   check every result against TensorRT 10's table (and QDQ rules);
3. add ONNX Runtime's fused-attention flavours (`ort_fusion`), so the gate judges them too;
4. write the manifest, run the fidelity gate on held-out episodes (another seed stream) against the
   FP32 artifacts — once per distinct set of files a provider (cpu, cuda, tensorrt) will run, all judged on
   one FP32 run per episode — and write `fidelity.json` / `fidelity.txt`. A failing gate raises `GateError`
   (the export exits 1) naming the worst graph and the first node whose output drifts; too few judgeable
   reference masks raise `GateRefused` (exit 2); unless the gate is off (recorded in the manifest).

`bf16` (OpenVINO, `convert_bf16`) converts nothing: the standard graphs stay FP32 for every ONNX Runtime /
TensorRT provider, and each gets an `openvino` flavour (the same file) that OpenVINO compiles in BF16 (or FP32
for a graph kept FP32). The gate runs those flavours through `OpenVinoBackend` on this machine; when a BF16
graph fails, its first drifting node becomes an FP32 island (the flavour's `fp32_nodes`) and the gate judges
again, for at most ISLAND_ROUNDS islands.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from fssam2_export.onnx_passes import check_tensorrt_compat
from fssam2_export.ort_fusion import add_ort_flavours
from runtime.backends.openvino import PROVIDER as OPENVINO
from runtime.backends.openvino import OpenVinoBackend
from runtime.backends.ort import OrtBackend
from runtime.engine.errors import ProviderUnavailableError
from runtime.engine.manifest import GRAPH_NAMES, MANIFEST_NAME, Flavour, GraphSpec, Manifest, file_sha256, load_manifest
from runtime.engine.progress import progress as progress_bar
from runtime.tools.fidelity import (
    FidelityReport,
    GateThresholds,
    ProviderFiles,
    compare_candidates,
    recording_segmenter,
    run_episode,
)
from runtime.tools.synthetic import CHECK_STREAM

from .capture import CalibrationData, EpisodeSource, capture
from .diagnose import first_diverging_node, first_diverging_node_openvino
from .fp16 import FP32_OPS, activation_ranges, convert_fp16, fp16_range_report
from .int8 import FLOAT_OPS, METHODS, QUANTISED_OPS, check_qdq, quantize_dynamic_cpu, quantize_qdq
from .ranges import minmax

GRAPH_PRECISIONS = ("fp32", "fp16", "int8")
BF16_GRAPH_PRECISIONS = ("bf16", "fp32")  # --precision bf16: per graph, what OpenVINO compiles it in
ISLAND_ROUNDS = 3  # FP32 islands the BF16 gate may add before it fails
OPENVINO_DEVICE = "CPU"
REPORT_JSON, REPORT_TEXT = "fidelity.json", "fidelity.txt"
# the gate's per-graph table (isolated runs on the reference's feeds: a diagnosis) covers this many episodes; the verdict
# is end to end over all of them
ISOLATED_EPISODES = 4
CPU_INT8_PRECISION = "int8-dynamic"


class GateError(ValueError):
    """The converted artifacts are not faithful enough to the FP32 ones; nothing was written."""


class GateRefused(ValueError):
    """Too few gate episodes have a judgeable (non-degenerate) FP32 mask to judge the conversion; nothing was written."""


@dataclass(frozen=True)
class PrecisionOptions:
    precision: str  # fp16 | int8 | mixed | bf16 (OpenVINO flavours of the FP32 graphs)
    module_precision: dict[str, str] = field(default_factory=dict)  # per-graph override
    calib_episodes: int = 32
    calib_seed: int = 0
    calib_shots: tuple[int, int] = (1, 4)
    calib_method: str = "minmax"  # minmax | entropy | percentile
    calib_max_samples: int = 32  # stored, MinMax-calibrated calls per graph (>= 32 each from 32 episodes)
    calib_file: Path | None = None  # load calibration feeds from here if it exists, else save them here
    calib_source: EpisodeSource = EpisodeSource()  # synthetic, or a real benchmark's training episodes
    int8_rest: str = "fp16"  # precision of what INT8 does not quantise
    int8_heads: bool = True  # quantise the mask decoder's MLP heads (Gemm)
    int8_exclusions: bool = True  # False quantises every node: only for demonstrating a failing gate
    cpu_int8_flavour: bool = True  # add the ORT-CPU dynamic INT8 flavour to INT8 graphs
    ort_flavours: bool = True  # add ORT fused-attention flavours (before the gate, which judges them)
    gate: bool = True
    gate_episodes: int = 16
    thresholds: GateThresholds | None = None  # default: GateThresholds.for_precision

    def __post_init__(self):
        lo, hi = self.calib_shots
        problems = [
            msg
            for bad, msg in [
                (
                    self.precision not in ("fp16", "int8", "mixed", "bf16"),
                    f"precision {self.precision!r} is not fp16 / int8 / mixed / bf16",
                ),
                (
                    self.calib_episodes < 1 or self.gate_episodes < 1,
                    "calibration and gate need at least one episode each",
                ),
                (not 1 <= lo <= hi, f"shots range must satisfy 1 <= MIN <= MAX, got {lo} {hi}"),
                (self.calib_method not in METHODS, f"calibration method must be one of {sorted(METHODS)}"),
                (self.int8_rest not in ("fp16", "fp32"), "--int8-rest must be fp16 or fp32"),
            ]
            if bad
        ]
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class ConversionResult:
    manifest: Manifest
    reports: dict[str, FidelityReport]  # per distinct file set: "standard", else the providers running it ("cpu+cuda")
    seconds: dict[str, float]


def converter(opts: PrecisionOptions) -> Callable[[Path, Path, bool], ConversionResult]:
    """`opts` bound into a converter for `fssam2_export.export.export_artifacts(convert=...)`."""
    return lambda fp32_dir, out_dir, progress: convert_artifacts(fp32_dir, out_dir, opts, progress)


def graph_precisions(precision: str, module_precision: dict[str, str]) -> dict[str, str]:
    """Per-graph precision: `precision` for all graphs (fp32 for `mixed`), then the overrides. With `bf16` (OpenVINO
    flavours of FP32 graphs) a graph can only be kept fp32."""
    allowed = BF16_GRAPH_PRECISIONS if precision == "bf16" else GRAPH_PRECISIONS
    bad = {g: p for g, p in module_precision.items() if g not in GRAPH_NAMES or p not in allowed}
    if bad:
        raise ValueError(
            f"--module-precision: unknown graph or precision in {bad}; graphs {GRAPH_NAMES}, precisions {allowed}"
            + ("" if precision == "bf16" else " (bf16 goes with --precision bf16 only)")
        )
    if precision == "mixed" and not module_precision:
        raise ValueError("--precision mixed needs --module-precision graph=precision[,...]")
    base = "fp32" if precision == "mixed" else precision
    return {g: module_precision.get(g, base) for g in GRAPH_NAMES}


def overall_precision(per_graph: dict[str, str]) -> str:
    kinds = set(per_graph.values())
    return kinds.pop() if len(kinds) == 1 else "mixed"


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization logs a pre-processing hint through the root logger on every call."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _calibration(fp32_dir: Path, opts: PrecisionOptions, progress: bool) -> tuple[CalibrationData, str]:
    """Load `calib_file` if it exists, else capture (and save to `calib_file`, or only hash a temp copy)."""
    if opts.calib_file and Path(opts.calib_file).is_file():
        data = CalibrationData.load(opts.calib_file)
        size = load_manifest(fp32_dir, verify_files=False).preprocess.image_size
        if data.info.image_size != size:
            raise ValueError(
                f"calibration file {opts.calib_file} was captured at {data.info.image_size}px, the model runs at {size}px"
            )
        return data, file_sha256(Path(opts.calib_file))
    data = capture(
        fp32_dir,
        opts.calib_episodes,
        opts.calib_seed,
        opts.calib_shots,
        opts.calib_max_samples,
        progress,
        opts.calib_source,
    )
    if opts.calib_file:
        return data, data.save(opts.calib_file)
    with tempfile.TemporaryDirectory() as tmp:
        return data, data.save(Path(tmp) / "calibration.npz")


def convert_artifacts(fp32_dir: Path, out_dir: Path, opts: PrecisionOptions, progress: bool = True) -> ConversionResult:
    """Write reduced-precision graphs + manifest (+ fidelity report) into `out_dir` from the FP32 artifacts in `fp32_dir`."""
    if opts.precision == "bf16":
        return convert_bf16(fp32_dir, out_dir, opts, progress)
    plan = graph_precisions(opts.precision, opts.module_precision)
    base = load_manifest(fp32_dir)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    calib, calib_sha = _calibration(fp32_dir, opts, progress)
    seconds["calibration"] = time.perf_counter() - t0

    specs: dict[str, GraphSpec] = {}
    fp16_info: dict[str, dict] = {}
    int8_info: dict[str, dict] = {}
    bar = progress_bar(GRAPH_NAMES, desc="convert", unit="graph", enabled=progress)
    for name in bar:
        bar.set_postfix(graph=name)
        t0 = time.perf_counter()
        src, spec, prec = fp32_dir / base.graphs[name].file, base.graphs[name], plan[name]
        dst = out_dir / spec.file
        flavours: list[Flavour] = []
        if prec == "fp32":
            shutil.copyfile(src, dst)
        else:
            blocked: list[str] = []
            ranges = calib.ranges.get(name)  # MinMax ranges from the capture (None for a loaded calibration file)
            if prec == "fp16" or opts.int8_rest == "fp16":  # FP16 range report: overflowing nodes stay FP32
                with _quiet_root_logger():
                    ranges = ranges if ranges is not None else minmax(src, calib.reader(name))
                    hits = fp16_range_report(onnx.load(str(src)), activation_ranges(ranges))
                blocked = sorted({h.node for h in hits})
                fp16_info[name] = {"blocked_nodes": blocked, "range_hits": [dataclasses.asdict(h) for h in hits]}
            if prec == "fp16":
                convert_fp16(src, dst, blocked)
                check_tensorrt_compat(onnx.load(str(dst)))
            else:
                with _quiet_root_logger():
                    q = quantize_qdq(
                        src,
                        dst,
                        calib.reader(name),
                        opts.calib_method,
                        opts.int8_rest,
                        opts.int8_heads,
                        opts.int8_exclusions,
                        extra_blocked_nodes=blocked,
                        minmax_ranges=ranges,
                    )
                check_qdq(onnx.load(str(dst)))
                int8_info[name] = {"excluded_nodes": q.excluded_nodes, "quantised_nodes": q.quantised_nodes}
        sha = file_sha256(dst)
        if prec == "int8" and opts.cpu_int8_flavour:
            cpu_file = f"{name}.cpu-int8.onnx"
            with _quiet_root_logger():
                quantised, attentions = quantize_dynamic_cpu(src, out_dir / cpu_file)
            flavours.append(
                Flavour(
                    "onnx",
                    cpu_file,
                    file_sha256(out_dir / cpu_file),
                    ["cpu"],
                    CPU_INT8_PRECISION,
                    sha,
                    {
                        "quantizer": "onnxruntime.quantization.quantize_dynamic",
                        "ops": ["MatMul", "Gemm"],
                        "weights": "int8 per-tensor symmetric, 7-bit range",
                        "activations": "dynamic uint8 per call",
                        "quantised_nodes": len(quantised),
                        "made_from": "fp32",
                        "fused_attentions": attentions,
                        "fusion": "com.microsoft.MultiHeadAttention",
                    },
                )
            )
        specs[name] = dataclasses.replace(spec, sha256=sha, precision=prec, flavours=flavours)
        seconds[f"convert {name}"] = time.perf_counter() - t0
    if opts.ort_flavours:
        t0 = time.perf_counter()
        specs = add_ort_flavours(out_dir, specs, {"num_memory_tokens": base.episode.tokens_per_support}, progress)
        seconds["ort_flavours"] = time.perf_counter() - t0

    info = calib.info
    calibration = {
        "dataset": info.dataset,
        "episodes": info.episodes,
        "seed": info.seed,
        "shots": list(info.shots),
        "method": opts.calib_method,
        "samples": info.samples,
        "memory_tokens": sorted(set(info.memory_tokens)),
        "sha256": calib_sha,
        "file": str(opts.calib_file) if opts.calib_file else None,
        "graph_precision": plan,
        "fp16": {
            "converter": "onnxruntime.transformers.float16",
            "io": "float32",
            "blocked_ops": FP32_OPS,
            "graphs": fp16_info,
        },
        "int8": {
            "quantizer": "onnxruntime.quantization.quantize_static",
            "format": "QDQ",
            "symmetric": True,
            "per_channel_weights": True,
            "quantised_ops": QUANTISED_OPS,
            "float_ops": FLOAT_OPS,
            "rest": opts.int8_rest,
            "heads_quantised": opts.int8_heads,
            "graphs": int8_info,
        },
    }
    notes = list(base.notes)
    if fp16_info:
        notes.append(
            "FP16 parts: native on CUDA / TensorRT; ONNX Runtime CPU has few FP16 kernels and inserts Casts, "
            "so on CPU they are partly emulated in FP32"
        )
    if int8_info:
        notes.append(
            "INT8 standard graphs are QDQ for TensorRT / CUDA; provider 'cpu' runs the int8-dynamic flavours "
            "(ORT's QDQ kernels on CPU are not faster than FP32)"
        )
    manifest = dataclasses.replace(
        base, precision=overall_precision(plan), graphs=specs, calibration=calibration, notes=notes
    )
    (out_dir / MANIFEST_NAME).write_text(manifest.to_json())

    reports = _gate(fp32_dir, out_dir, manifest, opts, progress, seconds)
    manifest = dataclasses.replace(
        manifest,
        fidelity={"gate": "on" if opts.gate else "off (--no-gate)"} | {k: r.summary() for k, r in reports.items()},
    )
    (out_dir / MANIFEST_NAME).write_text(manifest.to_json())
    return ConversionResult(manifest, reports, seconds)


def _gate(
    fp32_dir: Path, out_dir: Path, manifest: Manifest, opts: PrecisionOptions, progress: bool, seconds: dict[str, float]
) -> dict[str, FidelityReport]:
    """Judge the standard graphs (and the CPU flavours) on held-out episodes; the FP32 reference runs once per episode."""
    thresholds = opts.thresholds or GateThresholds.for_precisions(g.precision for g in manifest.graphs.values())
    episodes = opts.calib_source.episodes(
        opts.gate_episodes, opts.calib_seed, opts.calib_shots, manifest.preprocess.image_size, CHECK_STREAM
    )
    candidates = {key: (out_dir, backend) for key, backend in provider_file_sets(manifest, OrtBackend("cpu")).items()}
    reports = _judge(candidates, fp32_dir, episodes, thresholds, opts, progress, seconds)
    t0 = time.perf_counter()
    for report in reports.values():
        report.candidate, report.reference = "converted", "fp32"
        if report.verdict().status == "fail":
            report.diagnosis = _diagnose(fp32_dir, out_dir, manifest, report, episodes[0], thresholds)
    if any(r.diagnosis for r in reports.values()):
        seconds["gate diagnosis"] = time.perf_counter() - t0
    _write_reports(out_dir, reports, opts.gate)
    return reports


def _write_reports(out_dir: Path, reports: dict[str, FidelityReport], gate: bool) -> None:
    """fidelity.json / fidelity.txt; with the gate on, GateError on a failure, GateRefused on a refusal."""
    (out_dir / REPORT_JSON).write_text(json.dumps({k: r.to_dict() for k, r in reports.items()}, indent=2) + "\n")
    text = "\n\n".join(f"[{k}]\n{r.table()}" for k, r in reports.items())
    (out_dir / REPORT_TEXT).write_text(text + "\n")
    verdicts = {k: r.verdict().status for k, r in reports.items()}
    if gate and "fail" in verdicts.values():
        raise GateError(
            f"fidelity gate failed ({', '.join(k for k, v in verdicts.items() if v == 'fail')}); nothing written:\n{text}"
        )
    if gate and "refused" in verdicts.values():
        raise GateRefused(
            f"fidelity gate refused to judge; nothing written (--no-gate keeps the export unjudged):\n{text}"
        )


def _judge(
    candidates: dict,
    fp32_dir: Path,
    episodes,
    thresholds: GateThresholds,
    opts: PrecisionOptions,
    progress: bool,
    seconds,
) -> dict[str, FidelityReport]:
    """`compare_candidates` as the export's gate runs it (early stop with the gate on, the per-graph table on its first
    ISOLATED_EPISODES episodes), its times added to `seconds` as "gate <key>"."""
    clock: dict[str, float] = {}
    reports = compare_candidates(
        candidates,
        fp32_dir,
        episodes,
        thresholds=thresholds,
        progress=progress,
        stop_early=opts.gate,
        seconds=clock,
        isolated_episodes=ISOLATED_EPISODES,
    )
    for k, v in clock.items():
        seconds[f"gate {k}"] = seconds.get(f"gate {k}", 0.0) + v
    return reports


def provider_file_sets(manifest: Manifest, cpu: OrtBackend) -> dict:
    """One backend per distinct set of files the ONNX providers run, keyed "standard" (the standard graphs, what
    TensorRT runs) or by the providers sharing it ("cpu+cuda")."""
    standard = {n: g.file for n, g in manifest.graphs.items()}
    sets: dict[tuple, list[str]] = {tuple(standard.values()): []}
    for provider in ("cpu", "cuda", "tensorrt"):
        sets.setdefault(tuple(g.artifact_for(provider).file for g in manifest.graphs.values()), []).append(provider)
    backends = {}
    for files, providers in sets.items():
        if files == tuple(standard.values()):
            backends["standard"] = ProviderFiles(cpu)
        else:
            backends["+".join(providers)] = ProviderFiles(cpu, providers[0])
    return backends


def _diagnose(
    fp32_dir: Path, out_dir: Path, manifest: Manifest, report: FidelityReport, episode, thresholds: GateThresholds
) -> dict:
    graph, _, _ = report.worst_graph
    candidate = out_dir / report.graph_files[graph]
    feeds = _reference_calls(fp32_dir, episode)[graph][-1]
    drift = first_diverging_node(fp32_dir / manifest.graphs[graph].file, candidate, feeds, thresholds.logits_pearson)
    return drift.to_dict() if drift else {}


def _reference_calls(fp32_dir: Path, episode) -> dict[str, list[dict]]:
    """Each graph's feeds in one FP32 run of `episode`: what the drift diagnosis compares a graph on."""
    seg, rec = recording_segmenter(fp32_dir)
    run_episode(seg, episode)
    return rec.calls


def bf16_judge(cache_dir: Path | None = None) -> OpenVinoBackend:
    """The OpenVINO backend that judges BF16 flavours on this machine; ValueError saying why it cannot and what to do."""
    try:
        backend = OpenVinoBackend(OPENVINO_DEVICE, cache_dir=cache_dir)
        reason = "" if "bf16" in backend.offered else f"OpenVINO's {OPENVINO_DEVICE} here offers {backend.offered}"
    except ProviderUnavailableError as e:
        reason = str(e)
    if reason:
        raise ValueError(
            f"--precision bf16 is gated on OpenVINO running BF16 on this machine, which it cannot ({reason}). Export "
            "on a CPU with AMX or AVX512_BF16, or pass --no-gate to write the OpenVINO BF16 flavours unjudged "
            "(recorded in the manifest)"
        )
    return backend


def _openvino_version() -> str | None:
    try:
        import openvino
    except ImportError:
        return None
    return openvino.__version__


def _with_openvino_flavours(
    specs: dict[str, GraphSpec], plan: dict[str, str], islands: dict[str, list[str]], meta: dict
) -> dict[str, GraphSpec]:
    """`specs` with each graph's openvino flavour (its standard file, compiled in `plan[graph]` with `islands`)."""
    return {
        n: dataclasses.replace(
            s,
            flavours=[f for f in s.flavours if OPENVINO not in f.providers]
            + [Flavour("onnx", s.file, s.sha256, [OPENVINO], plan[n], s.sha256, meta | {"fp32_nodes": islands[n]})],
        )
        for n, s in specs.items()
    }


def convert_bf16(fp32_dir: Path, out_dir: Path, opts: PrecisionOptions, progress: bool = True) -> ConversionResult:
    """The FP32 graphs (+ ORT flavours) with an `openvino` flavour each, gated through OpenVINO in BF16 on this machine
    (FP32 islands added where a graph fails); with the gate off and no BF16 here, written unjudged."""
    plan = graph_precisions("bf16", opts.module_precision)
    base = load_manifest(fp32_dir)
    unjudged = None
    try:
        bf16_judge()  # before any work: the gate needs OpenVINO BF16 here
    except ValueError as e:
        if opts.gate:
            raise
        unjudged = str(e)
    seconds: dict[str, float] = {}
    for spec in base.graphs.values():
        shutil.copyfile(fp32_dir / spec.file, out_dir / spec.file)
    specs = {n: dataclasses.replace(g, flavours=[]) for n, g in base.graphs.items()}  # flavours are made here
    if opts.ort_flavours:
        t0 = time.perf_counter()
        specs = add_ort_flavours(out_dir, specs, {"num_memory_tokens": base.episode.tokens_per_support}, progress)
        seconds["ort_flavours"] = time.perf_counter() - t0
    manifest = dataclasses.replace(
        base,
        graphs=specs,
        notes=[
            *base.notes,
            "provider 'openvino' runs the openvino flavours: the standard FP32 graphs compiled by OpenVINO in their "
            "flavour's precision (BF16 where the device offers it), keeping the flavour's fp32_nodes in FP32; every "
            "other provider runs the FP32 graphs",
        ],
    )
    meta = {"openvino": _openvino_version(), "device": OPENVINO_DEVICE}
    islands = {n: [] for n in GRAPH_NAMES}
    if unjudged is not None:
        manifest = dataclasses.replace(
            manifest,
            graphs=_with_openvino_flavours(specs, plan, islands, meta | {"gate": "unjudged (--no-gate)"}),
            fidelity={"gate": "off (--no-gate)", OPENVINO: f"unjudged: {unjudged}"},
        )
        (out_dir / MANIFEST_NAME).write_text(manifest.to_json())
        return ConversionResult(manifest, {}, seconds)
    report = _gate_openvino(fp32_dir, out_dir, manifest, plan, islands, meta, opts, progress, seconds)
    verdict = report.verdict().status
    gate = {"pass": "passed"}.get(verdict, f"{verdict} (--no-gate)") + f" on {OPENVINO_DEVICE}"
    manifest = dataclasses.replace(
        manifest,
        graphs=_with_openvino_flavours(
            specs, plan, islands, meta | {"gate": gate, "island_rounds": report.islands["rounds"]}
        ),
        fidelity={"gate": "on" if opts.gate else "off (--no-gate)", OPENVINO: report.summary()},
    )
    (out_dir / MANIFEST_NAME).write_text(manifest.to_json())
    return ConversionResult(manifest, {OPENVINO: report}, seconds)


def _gate_openvino(
    fp32_dir: Path,
    out_dir: Path,
    manifest: Manifest,
    plan: dict[str, str],
    islands: dict[str, list[str]],
    meta: dict,
    opts: PrecisionOptions,
    progress: bool,
    seconds: dict[str, float],
) -> FidelityReport:
    """Judge the openvino flavours (compiled by OpenVINO here) against the FP32 artifacts; while the gate fails and
    the worst graph is BF16, its first drifting node joins `islands` (updated in place) and the gate judges again,
    up to ISLAND_ROUNDS times. Writes the reports; GateError / GateRefused as `_gate`."""
    thresholds = opts.thresholds or GateThresholds.for_precisions(plan.values())
    episodes = opts.calib_source.episodes(
        opts.gate_episodes, opts.calib_seed, opts.calib_shots, manifest.preprocess.image_size, CHECK_STREAM
    )
    found: list[dict] = []
    calls = None  # the FP32 feeds the diagnosis compares on, recorded at the first failure
    with tempfile.TemporaryDirectory(prefix="fssam2-ov-gate-") as cache:  # graphs without new islands compile once
        backend = bf16_judge(Path(cache))
        for rounds in range(ISLAND_ROUNDS + 1):
            judged = dataclasses.replace(manifest, graphs=_with_openvino_flavours(manifest.graphs, plan, islands, meta))
            (out_dir / MANIFEST_NAME).write_text(judged.to_json())
            report = _judge({OPENVINO: (out_dir, backend)}, fp32_dir, episodes, thresholds, opts, progress, seconds)[
                OPENVINO
            ]
            report.candidate, report.reference = "converted", "fp32"
            if report.verdict().status != "fail" or not opts.gate:
                break
            t0 = time.perf_counter()
            graph = report.worst_graph[0]
            if calls is None:
                calls = _reference_calls(fp32_dir, episodes[0])
            drift, region = first_diverging_node_openvino(
                fp32_dir / manifest.graphs[graph].file,
                graph,
                backend,
                calls[graph][-1],
                thresholds.logits_pearson,
                islands[graph],
            )
            seconds["gate diagnosis"] = seconds.get("gate diagnosis", 0.0) + time.perf_counter() - t0
            report.diagnosis = drift.to_dict() if drift else {}
            if (
                rounds == ISLAND_ROUNDS
                or plan[graph] != "bf16"
                or drift is None
                or not drift.first_below_threshold
                or drift.node in islands[graph]  # its island did not help
            ):
                break
            islands[graph] += region
            found.append({"graph": graph, **drift.to_dict(), "fp32_nodes": region})
    report.islands = {"rounds": rounds, "fp32_nodes": {g: v for g, v in islands.items() if v}, "found": found}
    _write_reports(out_dir, {OPENVINO: report}, opts.gate)
    return report
