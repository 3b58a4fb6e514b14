"""Side-by-side latency of artifact sets on ONNX Runtime CPU: per graph, per query, and file sizes.

    python -m calibration.speed --artifacts art-fp32 art-fp16 art-int8 [--repeats 5] [--shots 2]

The first directory is the baseline (FP32). Every variant runs on the same recorded feeds, interleaved
round by round, so machine load hits all of them alike; medians are printed with the ratio to the
baseline (< 1 = faster). An artifacts directory with CPU flavours (the dynamic INT8 copies) is measured
twice: as the runtime runs it on "cpu" (flavours) and from its standard graphs (the TensorRT-shaped QDQ).
Note: ORT CPU has few FP16 kernels and runs FP16 graphs largely through inserted Casts, so FP16 is
not expected to be faster here; it is meant for GPUs / TensorRT.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from runtime import FewShotSegmenter, Graph, RuntimeOptions, create_backend
from runtime.engine.manifest import GRAPH_NAMES, load_manifest
from runtime.tools.fidelity import ProviderFiles, check_comparable, recording_segmenter, run_episode
from runtime.tools.synthetic import synthetic_episodes


@dataclass
class Variant:
    label: str
    root: Path
    segmenter: FewShotSegmenter
    graphs: dict[str, Graph]
    files: dict[str, str]  # graph -> file it runs
    graph_ms: dict[str, list[float]]
    query_ms: list[float]


def _variants(dirs: list[Path], threads: int | None) -> list[Variant]:
    out = []
    for d in dirs:
        m = load_manifest(d, verify_files=False)  # its segmenters verify the files
        cpu = create_backend(RuntimeOptions(threads=threads))
        backends = [(f"{d.name} ({m.precision})", cpu)]
        if any(g.flavours for g in m.graphs.values()):
            backends = [
                (f"{d.name} ({m.precision}, cpu flavours)", cpu),
                (f"{d.name} ({m.precision}, standard)", ProviderFiles(cpu)),
            ]
        for label, backend in backends:
            files = {n: g.artifact_for(backend.provider).file for n, g in m.graphs.items()}
            seg, rec = recording_segmenter(d, backend)
            rec.recording = False
            out.append(Variant(label, d, seg, rec.graphs, files, {n: [] for n in GRAPH_NAMES}, []))
    return out


def measure(dirs: list[Path], repeats: int, shots: int, seed: int, threads: int | None) -> list[Variant]:
    base = load_manifest(dirs[0], verify_files=False)
    for d in dirs[1:]:
        check_comparable(load_manifest(d, verify_files=False), base)
    episode = synthetic_episodes(1, seed, (shots, shots), base.preprocess.image_size)[0]
    ref, rec = recording_segmenter(dirs[0])
    run_episode(ref, episode)
    feeds = {n: calls[-1] for n, calls in rec.calls.items()}  # the query's call (memory encoder: last support)
    variants = _variants(dirs, threads)
    sets = {}
    for v in variants:  # warm-up; each variant's own support set, encoded once
        run_episode(v.segmenter, episode)
        sets[v.label] = v.segmenter.encode_supports(episode.supports)
    for _ in tqdm(range(repeats), desc="speed", unit="round"):
        for v in variants:
            for name in GRAPH_NAMES:
                graph = v.graphs[name]
                t0 = time.perf_counter()
                graph.run(feeds[name])
                v.graph_ms[name].append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            v.segmenter.segment(episode.query, sets[v.label])
            v.query_ms.append((time.perf_counter() - t0) * 1e3)
    return variants


def table(variants: list[Variant]) -> str:
    base = variants[0]
    med = statistics.median
    width = max(len(v.label) for v in variants) + 2

    def row(name: str, cells: list[str]) -> str:
        return f"{name:<17}" + "".join(c.rjust(width) for c in cells)

    lines = [row("graph", [v.label for v in variants])]
    for name in GRAPH_NAMES:
        b = med(base.graph_ms[name])
        lines.append(row(name, [f"{med(v.graph_ms[name]):.1f} ms x{med(v.graph_ms[name]) / b:5.2f}" for v in variants]))
    b = med(base.query_ms)
    lines.append(row("query (segment)", [f"{med(v.query_ms):.1f} ms x{med(v.query_ms) / b:5.2f}" for v in variants]))
    lines.append("file sizes (MB) of the files each variant runs:")
    for name in GRAPH_NAMES:
        sizes = [(v.root / v.files[name]).stat().st_size / 2**20 for v in variants]
        lines.append(row(name, [f"{s:.2f} MB x{s / sizes[0]:5.2f}" for s in sizes]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m calibration.speed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--artifacts", nargs="+", required=True, type=Path, help="artifact dirs; the first is the baseline")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--shots", type=int, default=2, help="K of the timed episode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="ORT intra-op threads (default: ORT's choice)")
    args = p.parse_args(argv)
    try:
        variants = measure(args.artifacts, args.repeats, args.shots, args.seed, args.threads)
    except ValueError as e:
        print(f"calibration.speed: error: {e}", file=sys.stderr)
        return 2
    print(f"ONNX Runtime CPU, median of {args.repeats} interleaved rounds, ratio vs {variants[0].label} (< 1 = faster)")
    print(table(variants))
    return 0


if __name__ == "__main__":
    sys.exit(main())
