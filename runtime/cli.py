"""`fssam2`: run K-shot segmentation over exported artifacts (torch-free)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from .backends import PROVIDERS, ProviderUnavailableError, create_backend
from .fidelity import FidelityError, GateThresholds, compare_artifacts, synthetic_episodes
from .image import InputError, load_image, overlay
from .manifest import ManifestError, load_manifest
from .profiles import DEFAULT_MAX_SHOTS
from .segmenter import FewShotSegmenter


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fssam2", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    seg = sub.add_parser("segment", help="segment a query image from K annotated supports")
    seg.add_argument("--artifacts", required=True, help="directory written by fssam2-export")
    seg.add_argument("--support", nargs=2, action="append", required=True, metavar=("IMAGE", "MASK"),
                     help="an annotated support (repeat for K shots); mask nonzero = object")
    seg.add_argument("--query", required=True, help="image to segment")
    seg.add_argument("--out", required=True, help="predicted mask PNG (0/255), in the query's size")
    seg.add_argument("--overlay", help="also write the query with the mask blended in")
    seg.add_argument("--provider", default="cpu", choices=PROVIDERS,
                     help="cpu/cuda/tensorrt: ONNX Runtime (and its EPs); tensorrt-native: the manifest's TensorRT engines")
    seg.add_argument("--profile", action="store_true", help="print per-module latency")
    info = sub.add_parser("info", help="print an artifacts directory's manifest summary and graph I/O")
    info.add_argument("--artifacts", required=True)
    chk = sub.add_parser("check", help="fidelity of (reduced-precision) artifacts against FP32 artifacts of the same model")
    chk.add_argument("--artifacts", required=True, help="artifacts to check, e.g. an int8 export")
    chk.add_argument("--reference", required=True, help="FP32 artifacts of the same model and image size")
    chk.add_argument("--episodes", type=int, default=16, help="synthetic K-shot episodes")
    chk.add_argument("--seed", type=int, default=0)
    chk.add_argument("--shots", type=int, nargs=2, default=(1, 4), metavar=("MIN", "MAX"), help="K range")
    chk.add_argument("--provider", default="cpu", choices=PROVIDERS, help="runs the provider's flavours of --artifacts")
    chk.add_argument("--min-iou", type=float, help="gate: min mean mask IoU (default by precision: 0.99 fp16, 0.97 int8)")
    chk.add_argument("--min-correlation", type=float, help="gate: min logits correlation (default 0.999 fp16, 0.99 int8)")
    chk.add_argument("--min-judgeable", type=int, help="gate: fewer judgeable (non-degenerate) episodes refuse to judge, exit 2 (default 2)")
    chk.add_argument("--json", help="also write the report as JSON here")
    b = sub.add_parser("bench", help="per-module latency of the support and query paths (sweeps K, artifacts, providers)")
    b.add_argument("--artifacts", nargs="+", required=True, help="one or more artifacts directories (sizes, precisions)")
    b.add_argument("--providers", nargs="+", default=["cpu"], choices=PROVIDERS)
    b.add_argument("--shots", nargs="+", type=int, default=[1, 5], help="K values to sweep")
    b.add_argument("--queries", type=int, default=20, help="timed queries per K")
    b.add_argument("--warmup", type=int, default=3, help="untimed calls before each timed series")
    b.add_argument("--supports", type=int, default=5, help="timed add_support calls")
    b.add_argument("--input-size", default="1024x768", help="WxH of the synthetic images")
    b.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: ORT's choice)")
    b.add_argument("--no-cache", action="store_true", help="do not use the pre-optimised ORT model cache")
    b.add_argument("--out", help="write the report as JSON")
    b.add_argument("--plot", help="write a PNG chart (needs matplotlib: pip install 'fssam2[bench]')")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _save_png(array: np.ndarray, path: str) -> None:
    """Write a PNG atomically: a temp file in the same directory, renamed when complete."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".png", dir=target.parent)
    os.close(fd)
    try:
        Image.fromarray(array).save(tmp, format="PNG")
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def _segment(args) -> int:
    seg = FewShotSegmenter(args.artifacts, provider=args.provider, max_shots=max(DEFAULT_MAX_SHOTS, len(args.support)),
                           profile=args.profile)
    for image, mask in args.support:
        seg.add_support(image, mask)
    result = seg.segment(args.query)
    _save_png(result.mask.astype(np.uint8) * 255, args.out)
    if args.overlay:
        _save_png(overlay(load_image(args.query), result.mask), args.overlay)
    m = seg.manifest
    print(f"{args.out}: {int(result.mask.sum())} px of {result.mask.size} foreground; "
          f"predicted IoU {result.score:.3f}, object score {result.object_score:+.2f} "
          f"({len(args.support)}-shot, {m.model.name} @ {m.preprocess.image_size}px)")
    if m.model.random_init:
        print("note: random-init weights; the mask is numerically valid but not meaningful")
    if args.profile:
        for name, t in seg.timings().items():
            print(f"  {name:<22} {t.calls:>3} calls  {t.mean_ms:9.1f} ms/call  {t.total_ms:9.1f} ms total")
    return 0


def _info(args) -> int:
    m = load_manifest(args.artifacts)
    src = "random-init, seed %s" % m.model.seed if m.model.random_init else f"checkpoint sha256 {m.model.checkpoint_sha256}"
    print(f"{m.model.name} ({m.model.config}), {src}")
    print(f"precision {m.precision}, image {m.preprocess.image_size}px, schema v{m.schema_version}, created {m.created}")
    for name, g in m.graphs.items():
        print(f"{name} ({g.file})")
        for kind, tensors in (("in ", g.inputs), ("out", g.outputs)):
            for t in tensors:
                print(f"  {kind} {t.name:<20} {t.dtype:<8} {t.shape}")
        for f in g.flavours:
            built = f", TensorRT {f.meta.get('tensorrt')} on {f.meta.get('gpu')} (cc {f.meta.get('compute_capability')})" if f.kind == "tensorrt-engine" else ""
            print(f"  flavour {f.kind} {f.file} for {', '.join(f.providers)} ({f.precision}{built})")
    return 0


def _check(args) -> int:
    if args.episodes < 1:
        raise FidelityError("--episodes must be at least 1")
    manifest = load_manifest(args.artifacts, verify_files=False)  # files are verified when compare_artifacts loads them
    if load_manifest(args.reference, verify_files=False).precision != "fp32":
        raise FidelityError(f"--reference {args.reference} is not an FP32 export; the fidelity gate measures against FP32")
    thresholds = GateThresholds.for_precision("int8" if "int8" in {g.precision for g in manifest.graphs.values()} else "fp16")
    thresholds = thresholds.with_overrides(mask_iou=args.min_iou, logits_pearson=args.min_correlation, min_judgeable=args.min_judgeable)
    episodes = synthetic_episodes(args.episodes, args.seed, tuple(args.shots), manifest.preprocess.image_size)
    report = compare_artifacts(args.artifacts, args.reference, episodes, backend=create_backend(args.provider, manifest),
                               thresholds=thresholds, progress=True, stop_early=True)
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report.verdict().exit_code


def _bench(args) -> int:
    from . import bench

    try:
        w, h = (int(v) for v in args.input_size.lower().split("x"))
    except ValueError:
        raise InputError(f"--input-size must be WxH, e.g. 1024x768, got {args.input_size!r}") from None
    if min(args.shots) < 1 or args.queries < 1 or args.supports < 1 or args.warmup < 0 or min(w, h) < 1:
        raise InputError("--shots, --queries, --supports and the input size must be >= 1, --warmup >= 0")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InputError("--plot needs matplotlib: pip install 'fssam2[bench]'") from None
    settings = bench.BenchSettings(sorted(set(args.shots)), args.queries, args.warmup, args.supports, (w, h), args.threads, not args.no_cache)
    report = bench.run_bench([Path(a) for a in args.artifacts], args.providers, settings, show_progress=not args.quiet)
    print(bench.format_table(report))
    if args.out:
        bench.write_json(report, Path(args.out))
    if args.plot:
        bench.plot(report, Path(args.plot))
    return 1 if any(r["error"] for r in report["runs"]) else 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    commands = {"segment": _segment, "info": _info, "check": _check, "bench": _bench}
    try:
        return commands[args.command](args)
    except (InputError, ManifestError, ProviderUnavailableError, FidelityError, RuntimeError, ValueError) as e:
        print(f"fssam2: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
