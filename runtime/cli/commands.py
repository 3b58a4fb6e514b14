"""`fssam2`: run K-shot segmentation over exported artifacts (torch-free)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..apps.render import overlay
from ..apps.render import save_png as _save_png
from ..engine.backend import create_backend
from ..engine.errors import Error, FidelityError, InputError
from ..engine.files import write_atomic
from ..engine.image import load_image, load_mask
from ..engine.manifest import load_manifest
from ..engine.profiles import DEFAULT_MAX_SHOTS
from ..engine.results import MultiClassSegmentation
from ..engine.segmenter import FewShotSegmenter
from ..engine.support_set import SupportSet
from ..tools.fidelity import GateThresholds, compare_artifacts
from ..tools.synthetic import synthetic_episodes
from . import label, serve
from .common import add_runtime_options, options_from_args


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fssam2", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sup = sub.add_parser("support", help="encode K annotated supports into a support-set file (docs/support-sets.md)")
    sup.add_argument("--artifacts", required=True, help="directory written by fssam2-export")
    sup.add_argument(
        "--support",
        nargs=2,
        action="append",
        required=True,
        metavar=("IMAGE", "MASK"),
        help="an annotated support (repeat for K shots); mask nonzero = object",
    )
    sup.add_argument("--out", required=True, help="support-set file to write, e.g. cats.fssam2")
    add_runtime_options(sup)
    seg = sub.add_parser("segment", help="segment a query image from K annotated supports, a support set, or N classes")
    seg.add_argument("--artifacts", required=True, help="directory written by fssam2-export")
    src = seg.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--support",
        nargs=2,
        action="append",
        metavar=("IMAGE", "MASK"),
        help="an annotated support (repeat for K shots); mask nonzero = object",
    )
    src.add_argument("--support-set", help="a support-set file written by `fssam2 support`")
    src.add_argument(
        "--class",
        dest="classes",
        action="append",
        metavar="NAME=SET",
        help="N-way: a class name and its support-set file (repeat per class); --out is then a label map",
    )
    seg.add_argument("--query", required=True, help="image to segment")
    seg.add_argument(
        "--out",
        required=True,
        help="mask PNG (0/255) in the query's size; with --class a palette PNG "
        "of labels (0 background, i = the i-th --class)",
    )
    seg.add_argument(
        "--class-masks", metavar="DIR", help="with --class: also write DIR/<NAME>.png, each class's own mask (0/255)"
    )
    seg.add_argument(
        "--overlay", help="also write the query with each class tinted in its colour, outlined, with a legend"
    )
    seg.add_argument(
        "--truth", metavar="MASK", help="the query's ground-truth mask (nonzero = object): print the mask's IoU with it"
    )
    seg.add_argument("--profile", action="store_true", help="print per-module latency")
    add_runtime_options(seg)
    info = sub.add_parser(
        "info", help="print an artifacts directory's manifest summary and graph I/O, or what a support set holds"
    )
    info.add_argument("--artifacts", help="artifacts directory (with --support-set: check the set against it)")
    info.add_argument("--support-set", help="a support-set file")
    chk = sub.add_parser(
        "check", help="fidelity of (reduced-precision) artifacts against FP32 artifacts of the same model"
    )
    chk.add_argument("--artifacts", required=True, help="artifacts to check, e.g. an int8 export")
    chk.add_argument("--reference", required=True, help="FP32 artifacts of the same model and image size")
    chk.add_argument("--episodes", type=int, default=16, help="synthetic K-shot episodes")
    chk.add_argument("--seed", type=int, default=0)
    chk.add_argument("--shots", type=int, nargs=2, default=(1, 4), metavar=("MIN", "MAX"), help="K range")
    add_runtime_options(chk)  # the provider's flavours of --artifacts are judged, run as it runs them
    chk.add_argument(
        "--min-iou", type=float, help="gate: min mean mask IoU (default by precision: 0.99 fp16, 0.98 bf16, 0.97 int8)"
    )
    chk.add_argument(
        "--min-correlation", type=float, help="gate: min logits correlation (default 0.999 fp16 and bf16, 0.99 int8)"
    )
    chk.add_argument(
        "--min-judgeable",
        type=int,
        help="gate: fewer judgeable (non-degenerate) episodes refuse to judge, exit 2 (default 2)",
    )
    chk.add_argument("--json", help="also write the report as JSON here")
    b = sub.add_parser(
        "bench", help="per-module latency of the support and query paths (sweeps K, artifacts, providers)"
    )
    b.add_argument(
        "--artifacts", nargs="+", required=True, help="one or more artifacts directories (sizes, precisions)"
    )
    b.add_argument("--shots", nargs="+", type=int, default=[1, 5], help="K values to sweep")
    b.add_argument("--queries", type=int, default=20, help="timed queries per K (and per N of --ways)")
    b.add_argument(
        "--ways",
        nargs="*",
        type=int,
        default=[1, 3],
        help="class counts N: one N-way query timed against N one-way queries (none: skip)",
    )
    b.add_argument("--warmup", type=int, default=3, help="untimed calls before each timed series")
    b.add_argument("--supports", type=int, default=5, help="timed support encodings")
    b.add_argument("--input-size", default="1024x768", help="WxH of the synthetic images")
    add_runtime_options(b, sweep=True)
    b.add_argument("--out", help="write the report as JSON")
    b.add_argument("--plot", help="write a PNG chart (needs matplotlib: pip install 'fssam2[bench]')")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    label.add_parser(sub)
    serve.add_parser(sub)
    return p


def _support(args) -> int:
    seg = FewShotSegmenter(args.artifacts, options_from_args(args))
    support_set = seg.encode_supports(args.support)
    support_set.save(args.out)
    print(
        f"{args.out}: {support_set.shots}-shot support set, {support_set.tokens} memory tokens "
        f"({seg.manifest.model.name} @ {seg.manifest.preprocess.image_size}px)"
    )
    return 0


def _segment(args) -> int:
    if args.class_masks and not args.classes:
        raise InputError("--class-masks needs --class")
    if args.truth and args.classes:
        raise InputError("--truth scores one class's mask; give --support or --support-set, not --class")
    truth = load_mask(args.truth) if args.truth else None
    classes = label.class_files(args.classes) if args.classes else {}
    files = classes or ({"": args.support_set} if args.support_set else {})
    loaded = {name: SupportSet.load(path) for name, path in files.items()}  # checked against the artifacts below
    shots = max(s.shots for s in loaded.values()) if loaded else len(args.support)
    options = options_from_args(args, max_shots=max(DEFAULT_MAX_SHOTS, shots))
    seg = FewShotSegmenter(args.artifacts, options, profile=args.profile)
    for name, s in loaded.items():
        s.fingerprint.check(seg.fingerprint, files[name])
    if classes:
        sets = loaded
    else:
        sets = loaded[""] if loaded else seg.encode_supports(args.support)
    query = load_image(args.query)
    result = seg.segment(query, sets)
    m = seg.manifest
    if isinstance(result, MultiClassSegmentation):
        _save_png(result.label_map, args.out, palette=True)
        for name, r in result.items():
            if args.class_masks:
                _save_png(r.mask.astype(np.uint8) * 255, str(Path(args.class_masks) / f"{name}.png"))
            print(
                f"  {result.label(name):>3} {name:<16} {int((result.label_map == result.label(name)).sum()):>9} px labelled, "
                f"{int(r.mask.sum()):>9} px own mask; predicted IoU {r.score:.3f}, object score {r.object_score:+.2f}"
            )
        print(
            f"{args.out}: {len(result)}-way label map, {int((result.label_map == 0).sum())} px background of "
            f"{result.label_map.size} ({m.model.name} @ {m.preprocess.image_size}px)"
        )
        if args.overlay:
            _save_png(overlay(query, result.label_map, list(result)), args.overlay)
    else:
        _save_png(result.mask.astype(np.uint8) * 255, args.out)
        if args.overlay:
            _save_png(overlay(query, result.mask), args.overlay)
        print(
            f"{args.out}: {int(result.mask.sum())} px of {result.mask.size} foreground; "
            f"predicted IoU {result.score:.3f}, object score {result.object_score:+.2f} "
            f"({sets.shots}-shot, {m.model.name} @ {m.preprocess.image_size}px)"
        )
        if truth is not None:
            if truth.shape != result.mask.shape:
                raise InputError(
                    f"--truth is {truth.shape[1]}x{truth.shape[0]}, the query {query.shape[1]}x{query.shape[0]}"
                )
            union = int((truth | result.mask).sum())
            iou = (truth & result.mask).sum() / union if union else 1.0
            print(f"IoU with {args.truth}: {iou:.3f} ({int(truth.sum())} px object)")
    if m.model.random_init:
        print("note: random-init weights; the mask is numerically valid but not meaningful")
    if args.profile:
        for name, t in seg.timings().items():
            print(f"  {name:<22} {t.calls:>3} calls  {t.mean_ms:9.1f} ms/call  {t.total_ms:9.1f} ms total")
    return 0


def _info(args) -> int:
    if not (args.artifacts or args.support_set):
        raise InputError("info needs --artifacts, --support-set or both")
    if args.support_set:
        manifest = load_manifest(args.artifacts, verify_files=False) if args.artifacts else None
        support_set = SupportSet.load(args.support_set, manifest)  # refuses a set the artifacts did not make
        print(f"{args.support_set}: {support_set.describe()}")
        if manifest is not None:
            print(f"made by the same model as {args.artifacts}: usable with these artifacts")
        return 0
    m = load_manifest(args.artifacts)
    src = (
        f"random-init, seed {m.model.seed}" if m.model.random_init else f"checkpoint sha256 {m.model.checkpoint_sha256}"
    )
    print(f"{m.model.name} ({m.model.config}), {src}")
    print(
        f"precision {m.precision}, image {m.preprocess.image_size}px, schema v{m.schema_version}, created {m.created}"
    )
    for name, g in m.graphs.items():
        print(f"{name} ({g.file})")
        for kind, tensors in (("in ", g.inputs), ("out", g.outputs)):
            for t in tensors:
                print(f"  {kind} {t.name:<20} {t.dtype:<8} {t.shape}")
        for f in g.flavours:
            built = (
                f", TensorRT {f.meta.get('tensorrt')} on {f.meta.get('gpu')} (cc {f.meta.get('compute_capability')})"
                if f.kind == "tensorrt-engine"
                else ""
            )
            print(f"  flavour {f.kind} {f.file} for {', '.join(f.providers)} ({f.precision}{built})")
    return 0


def _check(args) -> int:
    if args.episodes < 1:
        raise FidelityError("--episodes must be at least 1")
    manifest = load_manifest(args.artifacts, verify_files=False)  # files are verified when compare_artifacts loads them
    if load_manifest(args.reference, verify_files=False).precision != "fp32":
        raise FidelityError(
            f"--reference {args.reference} is not an FP32 export; the fidelity gate measures against FP32"
        )
    backend = create_backend(options_from_args(args), manifest)
    precisions = {g.precision for g in manifest.graphs.values()} | {
        backend.precision_for(n, g) for n, g in manifest.graphs.items()
    }
    thresholds = GateThresholds.for_precisions(precisions)
    thresholds = thresholds.with_overrides(
        mask_iou=args.min_iou, logits_pearson=args.min_correlation, min_judgeable=args.min_judgeable
    )
    episodes = synthetic_episodes(args.episodes, args.seed, tuple(args.shots), manifest.preprocess.image_size)
    report = compare_artifacts(
        args.artifacts, args.reference, episodes, backend=backend, thresholds=thresholds, progress=True, stop_early=True
    )
    print(report.table())
    if args.json:
        write_atomic(args.json, (json.dumps(report.to_dict(), indent=2) + "\n").encode())
    return report.verdict().exit_code


def _bench(args) -> int:
    from ..tools import bench

    try:
        w, h = (int(v) for v in args.input_size.lower().split("x"))
    except ValueError:
        raise InputError(f"--input-size must be WxH, e.g. 1024x768, got {args.input_size!r}") from None
    if (
        min(args.shots) < 1
        or min(args.ways, default=1) < 1
        or args.queries < 1
        or args.supports < 1
        or args.warmup < 0
        or min(w, h) < 1
    ):
        raise InputError("--shots, --ways, --queries, --supports and the input size must be >= 1, --warmup >= 0")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InputError("--plot needs matplotlib: pip install 'fssam2[bench]'") from None
    settings = bench.BenchSettings(
        sorted(set(args.shots)), args.queries, args.warmup, args.supports, (w, h), sorted(set(args.ways))
    )
    runs = [options_from_args(args, p) for p in args.providers]
    report = bench.run_bench([Path(a) for a in args.artifacts], runs, settings, show_progress=not args.quiet)
    print(bench.format_table(report))
    if args.out:
        bench.write_json(report, Path(args.out))
    if args.plot:
        bench.plot(report, Path(args.plot))
    return 1 if any(r["error"] for r in report["runs"]) else 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    commands = {
        "support": _support,
        "segment": _segment,
        "info": _info,
        "check": _check,
        "bench": _bench,
        "label": label.command,
        "serve": serve.command,
    }
    try:
        return commands[args.command](args)
    except (Error, OSError) as e:  # OSError: an output that cannot be written
        print(f"fssam2: error: {e}", file=sys.stderr)
        return 2
