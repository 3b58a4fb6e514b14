"""Per-query latency of the C++ runtime (libfssam2, via build/cpp/fssam2_bench) vs the Python runtime,
same artifacts, same episode, same machine, one after the other. Prints a table; no asserts.

    python bench/cpp_vs_python.py --artifacts artifacts/ [--shots 1 5] [--queries 10] [--build build/cpp]

The episode is synthetic (runtime.tools.synthetic) unless --episode DIR names one written by it. Both
sides time preprocessing + the graphs + postprocessing of an already decoded query, with --threads
ONNX Runtime intra-op threads (default 1: steadier on a shared machine). The ONNX Runtimes differ: 1.29
in C++ (scripts/get_onnxruntime.sh), the installed wheel in Python.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import onnxruntime

from runtime import FewShotSegmenter, RuntimeOptions
from runtime.engine.image import load_image


def python_latency(
    artifacts: Path, supports, query: Path, shots: int, queries: int, warmup: int, threads: int
) -> float:
    seg = FewShotSegmenter(artifacts, RuntimeOptions(threads=threads or None))
    support_set = seg.encode_supports([supports[i % len(supports)] for i in range(shots)])
    rgb = load_image(query)
    for _ in range(warmup):
        seg.segment(rgb, support_set)
    times = []
    for _ in range(queries):
        t0 = time.perf_counter()
        seg.segment(rgb, support_set)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def cpp_latency(
    bench: Path, artifacts: Path, supports, query: Path, shots: int, queries: int, warmup: int, threads: int
) -> float:
    cmd = [
        str(bench),
        "--artifacts",
        str(artifacts),
        "--query",
        str(query),
        "--queries",
        str(queries),
        "--warmup",
        str(warmup),
        "--threads",
        str(threads),
        "--json",
        "--shots",
        str(shots),
    ]
    for image, mask in supports:
        cmd += ["--support", str(image), str(mask)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)["query_ms_median"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path, required=True)
    p.add_argument("--episode", type=Path, help="directory with support{i}.png/_mask.png and query.png")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--queries", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--threads", type=int, default=1, help="ONNX Runtime intra-op threads on both sides (0 = its default)"
    )
    p.add_argument("--build", type=Path, default=Path("build/cpp"))
    args = p.parse_args(argv)
    bench = args.build / "fssam2_bench"
    if not bench.is_file():
        p.error(
            f"{bench} not found: cmake -S runtime/cpp -B {args.build} -DONNXRUNTIME_ROOT=third_party/onnxruntime && cmake --build {args.build}"
        )
    with tempfile.TemporaryDirectory() as tmp:
        episode = args.episode
        if episode is None:
            from runtime.tools.synthetic import write_episode

            episode = Path(tmp)
            write_episode(episode, shots=max(args.shots), seed=1)
        supports = sorted((i, i.with_name(i.stem + "_mask.png")) for i in episode.glob("support*[0-9].png"))
        query = episode / "query.png"
        print(
            f"per-query latency, median of {args.queries} after {args.warmup} warm-up, {args.threads or 'default'} "
            f"intra-op thread(s) (python: onnxruntime {onnxruntime.__version__}; C++: libfssam2, {bench})"
        )
        print(f"{'K':>3} {'python ms':>10} {'C++ ms':>10} {'C++/python':>11}")
        for k in args.shots:  # C++ then Python for each K, so both see the same machine load
            cpp = cpp_latency(bench, args.artifacts, supports, query, k, args.queries, args.warmup, args.threads)
            py = python_latency(args.artifacts, supports, query, k, args.queries, args.warmup, args.threads)
            print(f"{k:>3} {py:>10.1f} {cpp:>10.1f} {cpp / py:>11.3f}")


if __name__ == "__main__":
    main()
