"""`fssam2 bench`: latency of the runtime's own support and query paths, per module.

Measurements come from the segmenter's timing hook (`on_timing`): every graph run, pre/post-processing,
session load and the whole `encode_support` / `segment` calls. Glue = a phase's wall time minus the modules
measured inside it (feed checks, dict handling, the memory bank). Inputs are synthetic (noise image,
elliptic mask): latency does not depend on image content. N-way: one `segment(query, {N sets})` call
against N one-way `segment(query, set)` calls (the work N separate segmenters would do), timed alternately
in the same run. torch-free like the rest of the runtime;
tqdm (progress) and matplotlib (`--plot`) are optional (`pip install 'fssam2[bench]'`).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..backends.cache import cpu_flags
from ..engine.files import write_atomic
from ..engine.manifest import GRAPH_NAMES, load_manifest
from ..engine.options import RuntimeOptions
from ..engine.progress import progress as progress_bar
from ..engine.segmenter import FewShotSegmenter

SCHEMA = "fssam2-bench/1"
SUPPORT_MODULES = ("preprocess", "image_encoder", "memory_encoder")
QUERY_MODULES = ("preprocess", "image_encoder", "memory_attention", "mask_decoder", "postprocess")
PHASES = {"support": SUPPORT_MODULES, "query": QUERY_MODULES}
# sam2's memory attention (all model sizes): 4 layers of self-attention, cross-attention to the memory
# (keys/values projected from the memory's channels) and an MLP; model width = image_embed channels.
MEMORY_ATTENTION_LAYERS, MEMORY_ATTENTION_MLP = 4, 2048


@dataclass(frozen=True)
class Stats:
    n: int
    p50: float
    p90: float
    p99: float
    mean: float
    min: float

    @classmethod
    def of(cls, samples: Iterable[float]) -> Stats:
        a = np.asarray(list(samples), dtype=np.float64)
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return cls(len(a), float(p50), float(p90), float(p99), float(a.mean()), float(a.min()))


class PhaseRecorder:
    """Timing listener: keeps per-module samples of the phase being measured; computes glue per call."""

    def __init__(self):
        self.phase: str | None = None  # None while warming up: nothing is kept
        self.samples: dict[str, dict[str, list[float]]] = {}
        self._inside = 0.0

    def __call__(self, name: str, ms: float) -> None:
        if name.startswith(("load:", "verify:")):
            kind, graph = name.split(":", 1)
            self.samples.setdefault(kind, {}).setdefault(graph, []).append(ms)
            return
        if name in PHASES:
            glue, self._inside = ms - self._inside, 0.0
            if self.phase == name:
                phase = self.samples.setdefault(name, {})
                phase.setdefault("total", []).append(ms)
                phase.setdefault("glue", []).append(glue)
            return
        self._inside += ms
        if self.phase is not None:
            self.samples.setdefault(self.phase, {}).setdefault(name, []).append(ms)

    def take(self, phase: str) -> dict[str, list[float]]:
        return self.samples.pop(phase, {})


def synthetic_input(width: int, height: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 noise image and an elliptic object mask covering about a fifth of it."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    y, x = np.ogrid[:height, :width]
    cy, cx = rng.uniform(0.35, 0.65) * height, rng.uniform(0.35, 0.65) * width
    mask = ((y - cy) / (0.3 * height)) ** 2 + ((x - cx) / (0.25 * width)) ** 2 <= 1.0
    return image, mask


def memory_attention_gflop(embed_size: int, width: int, memory_channels: int, memory_tokens: int) -> float:
    """FLOPs (multiply-add = 2) of one memory attention run: projections, attention matmuls, MLP. The
    cross-attention attends over the c-channel memory values and projects afterwards (`fssam2_export.rope`)."""
    n, d, c, m = embed_size * embed_size, width, memory_channels, memory_tokens
    self_attn = 4 * 2 * n * d * d + 2 * 2 * n * n * d
    cross_attn = 2 * 2 * n * d * d + 2 * m * c * d + 2 * n * c * d + 2 * n * m * (d + c)
    mlp = 2 * 2 * n * d * MEMORY_ATTENTION_MLP
    return MEMORY_ATTENTION_LAYERS * (self_attn + cross_attn + mlp) / 1e9


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (it only grows: runs are measured in sequence)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024


def _command(*args: str) -> str | None:
    if shutil.which(args[0]) is None:
        return None
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment() -> dict:
    """Machine, software and power settings the numbers depend on."""
    import onnxruntime as ort

    cpu: dict = {"machine": platform.machine(), "logical_cores": os.cpu_count()}
    if hasattr(os, "sched_getaffinity"):
        cpu["usable_cores"] = len(os.sched_getaffinity(0))
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        fields = {line.split(":")[0].strip(): line.split(":", 1)[1].strip() for line in info if ":" in line}
        cpu["model"] = fields.get("model name") or fields.get("Model") or platform.processor()
        flags = cpu_flags()
        cpu["simd_flags"] = sorted(
            f for f in flags if f.startswith(("avx", "fma", "amx", "sse4", "asimd", "sve", "neon", "f16c", "vnni"))
        )
        cpu["physical_cores"] = len({(line.split(":")[1]) for line in info if line.startswith("core id")}) or None
        cpu["matrix_units"] = {
            "amx_bf16": "amx_bf16" in flags,
            "amx_int8": "amx_int8" in flags,
            "avx512_bf16": "avx512_bf16" in flags,
            "vnni": bool({"avx512_vnni", "avx_vnni"} & flags),
        }
    except OSError:
        cpu["model"] = platform.processor()
    env = {
        "cpu": cpu,
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    gpu = _command("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")
    if gpu:
        env["gpu"] = gpu.splitlines()
    try:
        import openvino  # optional: the openvino provider

        env["openvino"] = {
            "version": openvino.__version__,
            "devices": openvino.Core().available_devices,
            "cpu_capabilities": openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"),
        }
    except ImportError:
        pass
    try:
        import tensorrt  # noqa: F401  (optional, GPU machines only)

        env["tensorrt"] = tensorrt.__version__
    except ImportError:
        pass
    if Path("/etc/nv_tegra_release").exists():
        env["jetson"] = {
            "l4t": Path("/etc/nv_tegra_release").read_text().strip().splitlines()[0],
            "nvpmodel": _command("nvpmodel", "-q"),
            "jetson_clocks": _command("jetson_clocks", "--show"),
        }
    return env


@dataclass
class RunResult:
    artifacts: str
    provider: str
    model: str = ""
    image_size: int = 0
    precision: str = ""
    files: dict[str, str] = field(default_factory=dict)  # graph -> file run (standard or flavour)
    providers_used: dict[str, list[str]] = field(default_factory=dict)
    cache: dict[str, str] = field(default_factory=dict)  # graph -> ORT / OpenVINO cache hit / built / off
    graph_precisions: dict[str, str] = field(
        default_factory=dict
    )  # graph -> precision it ran in (OpenVINO: compiled for)
    load_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # "first" / "warm" -> graph -> ms (+ "total")
    manifest_verify_ms: float = 0.0
    support: dict[str, Stats] = field(default_factory=dict)
    shots: list[dict] = field(default_factory=list)
    ways: list[dict] = field(default_factory=list)  # N-way query vs N one-way queries, per N
    options: dict = field(default_factory=dict)  # the RuntimeOptions it ran with
    error: str | None = None


def _as_json(options: RuntimeOptions) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}


@dataclass(frozen=True)
class BenchSettings:
    shots: list[int]
    queries: int
    warmup: int
    supports: int  # timed support encodings for the support phase
    input_size: tuple[int, int]  # (width, height) of the synthetic images
    ways: list[int] = field(default_factory=lambda: [1, 3])  # class counts N for the N-way comparison


def _load(
    artifacts: Path, options: RuntimeOptions, rec: PhaseRecorder
) -> tuple[FewShotSegmenter, dict[str, float], float]:
    """(segmenter, session load ms per graph and total, ms spent checking the files' sha256)."""
    seg = FewShotSegmenter(artifacts, options, on_timing=rec)
    loads = {g: v[-1] for g, v in rec.take("load").items()}
    return seg, loads | {"total": sum(loads.values())}, sum(v[-1] for v in rec.take("verify").values())


def run_one(artifacts: Path, options: RuntimeOptions, s: BenchSettings, progress) -> RunResult:
    """Benchmark one artifacts directory run as `options` say over all K in `s.shots`."""
    provider = options.provider
    options = replace(options, max_shots=max(s.shots))  # the TensorRT EP profile covers the sweep's K
    result = RunResult(str(artifacts), provider, options=_as_json(options))
    manifest = load_manifest(artifacts, verify_files=False)  # the segmenters check the files they run
    result.model, result.image_size, result.precision = (
        manifest.model.name,
        manifest.preprocess.image_size,
        manifest.precision,
    )
    rec = PhaseRecorder()
    _, result.load_ms["first"], result.manifest_verify_ms = _load(artifacts, options, rec)  # may build the cache
    seg, result.load_ms["warm"], _ = _load(artifacts, options, rec)
    result.files = {g: manifest.graphs[g].artifact_for(provider).file for g in GRAPH_NAMES}
    result.providers_used = {g: list(seg.graphs[g].providers) for g in GRAPH_NAMES}
    result.cache = {g: seg.graphs[g].cache for g in GRAPH_NAMES}
    result.graph_precisions = {g: seg.graphs[g].precision for g in GRAPH_NAMES}
    w, h = s.input_size
    images = [synthetic_input(w, h, seed) for seed in range(max(s.shots) + 1)]
    query = images[-1][0]

    for i in range(s.warmup + s.supports):
        rec.phase = "support" if i >= s.warmup else None
        seg.encode_support(*images[i % max(s.shots)])
        progress.update()
    sup = rec.take("support")
    result.support = {k: Stats.of(v) for k, v in sup.items()}

    embed = manifest.graphs["memory_attention"].inputs[0].shape  # (1, width, E, E)
    mem_channels = manifest.graphs["memory_attention"].inputs[2].shape[2]
    for k in s.shots:
        rec.phase = None
        supports = seg.encode_supports(images[:k])
        for i in range(s.warmup + s.queries):
            rec.phase = "query" if i >= s.warmup else None
            seg.segment(query, supports)
            progress.update()
        q = rec.take("query")
        stats = {name: Stats.of(v) for name, v in q.items()}
        gflop = memory_attention_gflop(embed[2], embed[1], mem_channels, k * manifest.episode.tokens_per_support)
        result.shots.append(
            {
                "shots": k,
                "query": stats,
                "queries_per_s": 1e3 / stats["total"].mean,
                "glue_fraction": float(np.median(np.asarray(q["glue"]) / np.asarray(q["total"]))),
                "memory_attention_gflop": gflop,
                "memory_attention_gflops": gflop / (stats["memory_attention"].p50 / 1e3),
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    rec.phase = None
    sets = [seg.encode_supports([images[i % max(s.shots)]]) for i in range(max(s.ways, default=0))]  # one-shot classes
    for n in s.ways:
        classes = {f"class{i}": sets[i] for i in range(n)}
        n_way, separate = [], []
        for i in range(s.warmup + s.queries):
            t0 = time.perf_counter()
            seg.segment(query, classes)
            t1 = time.perf_counter()
            for one in classes.values():
                seg.segment(query, one)
            t2 = time.perf_counter()
            if i >= s.warmup:
                n_way.append((t1 - t0) * 1e3)
                separate.append((t2 - t1) * 1e3)
            progress.update()
        a, b = Stats.of(n_way), Stats.of(separate)
        result.ways.append({"classes": n, "n_way": a, "separate": b, "ratio_p50": a.p50 / b.p50})
    return result


def run_bench(artifacts: list[Path], runs: list[RuntimeOptions], s: BenchSettings, show_progress: bool = True) -> dict:
    """Every artifacts directory run as each of `runs` (one per provider) over all K; returns the JSON-ready report."""
    total = (
        len(artifacts) * len(runs) * ((s.warmup + s.supports) + (len(s.shots) + len(s.ways)) * (s.warmup + s.queries))
    )
    results = []
    with progress_bar(total=total, unit="call", enabled=show_progress) as progress:
        for a in artifacts:
            for options in runs:
                progress.set_description(f"{Path(a).name}/{options.provider}")
                try:
                    results.append(run_one(Path(a), options, s, progress))
                except Exception as e:  # one failing configuration must not lose the others' figures
                    results.append(RunResult(str(a), options.provider, error=f"{type(e).__name__}: {e}"))
    precisions = next((dict(o.precision) for o in runs if o.precision), None)
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": asdict(s) | {"threads": runs[0].threads, "cache": runs[0].cache, "precisions": precisions},
        "environment": environment(),
        "runs": [asdict(r) for r in results],
    }


def format_table(report: dict) -> str:
    """Per run: load times, then per-module p50/p90/p99/mean/min of the support and the query phase."""
    lines = []
    head = f"  {'module':<18}{'p50':>9}{'p90':>9}{'p99':>9}{'mean':>9}{'min':>9}  ms"
    for r in report["runs"]:
        title = f"{r['model']} @ {r['image_size']}px {r['precision']} on {r['provider']} ({r['artifacts']})"
        if r["error"]:
            lines += [title, f"  error: {r['error']}", ""]
            continue
        load = r["load_ms"]
        lines.append(title)
        lines.append(
            f"  session load {load['first']['total']:.0f} ms first, {load['warm']['total']:.0f} ms warm "
            f"(cache: {', '.join(f'{g} {c}' for g, c in r['cache'].items())}); sha256 of the files run {r['manifest_verify_ms']:.0f} ms"
        )
        lines.append(f"  precision per graph: {', '.join(f'{g} {p}' for g, p in r['graph_precisions'].items())}")
        blocks = [("support (one encode_support)", r["support"])] + [
            (f"query, K={k['shots']}", k["query"]) for k in r["shots"]
        ]
        for name, stats in blocks:
            lines += [f" {name}", head]
            for module, st in stats.items():
                lines.append(
                    f"  {module:<18}{st['p50']:9.1f}{st['p90']:9.1f}{st['p99']:9.1f}{st['mean']:9.1f}{st['min']:9.1f}"
                )
        for k in r["shots"]:
            lines.append(
                f"  K={k['shots']}: {k['queries_per_s']:.2f} queries/s, glue {100 * k['glue_fraction']:.2f} % of a query, "
                f"memory attention {k['memory_attention_gflop']:.1f} GFLOP at {k['memory_attention_gflops']:.1f} GFLOP/s, "
                f"peak RSS {k['peak_rss_mb']:.0f} MB"
            )
        for w in r.get("ways", []):
            lines.append(
                f"  {w['classes']}-way (1-shot classes): one call {w['n_way']['p50']:.1f} ms p50 vs {w['classes']} one-way "
                f"calls {w['separate']['p50']:.1f} ms p50 = {w['ratio_p50']:.2f}x (one image encoding instead of {w['classes']})"
            )
        lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Per-module query p50 with p99 whiskers, one bar group per (run, K). Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [
        (f"{Path(r['artifacts']).name}/{r['provider']} K={k['shots']}", k["query"])
        for r in report["runs"]
        if not r["error"]
        for k in r["shots"]
    ]
    modules = [m for m in QUERY_MODULES + ("glue",) if any(m in q for _, q in groups)]
    fig, ax = plt.subplots(figsize=(min(16.0, 2.0 + 0.9 * len(modules) + 0.25 * len(modules) * len(groups)), 4.5))
    width = 0.8 / max(1, len(groups))
    for i, (label, q) in enumerate(groups):
        x = np.arange(len(modules)) + i * width
        p50 = np.array([q[m]["p50"] if m in q else 0.0 for m in modules])
        p99 = np.array([q[m]["p99"] if m in q else 0.0 for m in modules])
        ax.bar(x, p50, width, label=label, yerr=[np.zeros_like(p50), p99 - p50], capsize=3)
    ax.set_xticks(np.arange(len(modules)) + 0.4 - width / 2, modules, rotation=20)
    ax.set_yscale("log")  # modules span four orders of magnitude
    ax.set_ylabel("ms, log scale (bar p50, whisker p99)")
    ax.set_title("fssam2 query latency per module")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_json(report: dict, path: Path) -> None:
    write_atomic(path, (json.dumps(report, indent=2) + "\n").encode())
