"""`fssam2 label`: its arguments and the command (the job itself is `runtime.apps.label`, on Ray `label_ray`)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ..apps.guard import ImageLimits
from ..apps.label import FINGERPRINTS, JOURNAL, PARQUET, Labeler, LabelJob, collect_inputs, run_local
from ..engine.errors import InputError
from ..engine.manifest import load_manifest
from ..engine.segmenter import FewShotSegmenter
from ..engine.support_set import Fingerprint, SupportSet
from .common import add_runtime_options, options_from_args, require


def add_parser(sub) -> None:
    p = sub.add_parser(
        "label", help="segment every image of a collection with support sets (resumable; --ray: Ray Data)"
    )
    p.add_argument("--artifacts", required=True, help="directory written by fssam2-export")
    p.add_argument(
        "--class",
        dest="classes",
        action="append",
        required=True,
        metavar="NAME=SET",
        help="a class and its support-set file (.fssam2); repeat for N classes (label i = i-th --class)",
    )
    p.add_argument("--images", required=True, help="a directory, a .txt/.lst list file or a glob ('photos/**/*.jpg')")
    p.add_argument("--out", required=True, help="output directory (masks/, overlays/, results.jsonl, job.json)")
    p.add_argument("--overlay", action="store_true", help="also write overlays/<image>.png")
    p.add_argument(
        "--table",
        choices=("jsonl", "parquet"),
        default="jsonl",
        help="results table format (results.jsonl is always written: it is the job's journal)",
    )
    p.add_argument(
        "--max-pixels", type=int, default=ImageLimits.max_pixels, help="larger images fail (checked before decoding)"
    )
    p.add_argument("--max-bytes", type=int, default=ImageLimits.max_bytes, help="larger files fail")
    p.add_argument(
        "--fingerprint",
        choices=FINGERPRINTS,
        default="stat",
        help="how a resumed job knows an image is unchanged: size and mtime (default), or its sha256 (reads every "
        "image on each run)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run on Ray Data: alone, join the cluster $RAY_ADDRESS or `ray start` names, else start one (as "
        "ray.init() does); 'auto' joins or fails, 'local' starts one, or HOST:PORT",
    )
    p.add_argument("--verbose", action="store_true", help="--ray: show Ray's own log lines and progress bars")
    p.add_argument("--workers", type=int, default=2, help="--ray: segmenter actors")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="--ray: GPUs per actor")
    p.add_argument(
        "--threads-per-worker",
        type=int,
        default=1,
        help="--ray: CPUs per actor, also its inference threads unless --threads says otherwise",
    )
    add_runtime_options(p)


def class_files(specs: list[str]) -> dict[str, str]:
    """NAME=SET arguments (`--class`) -> {name: path}, in the order given (label i = the i-th class)."""
    classes: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--class takes NAME=SET (e.g. cat=cats.fssam2), got {spec!r}")
        if name in classes:
            raise InputError(f"--class {name!r} given twice")
        classes[name] = path
    if len(classes) > 255:
        raise InputError(f"at most 255 classes (the label PNG is 8-bit), got {len(classes)}")
    return classes


def command(args: argparse.Namespace) -> int:
    """Exit code 0: every image labelled; 1: some failed (see the table); 2: the job could not run."""
    if args.workers < 1 or args.threads_per_worker < 1 or args.gpus_per_worker < 0:
        raise InputError("--workers and --threads-per-worker must be >= 1, --gpus-per-worker >= 0")
    options = options_from_args(args)
    manifest = load_manifest(args.artifacts, verify_files=False)
    model = Fingerprint.of(manifest)
    sets = {name: SupportSet.load(path, model) for name, path in class_files(args.classes).items()}
    limits = ImageLimits(args.max_bytes, args.max_pixels)
    job = LabelJob(Path(args.out), tuple(sets), args.overlay, limits, args.fingerprint)
    items = collect_inputs(args.images)
    run = dict(progress=not args.quiet, table=args.table)
    if args.ray is not None:
        require("ray.data", "ray")
        from ..apps.label_ray import RayOptions, run_ray

        actor_options = replace(options, threads=options.threads or args.threads_per_worker)
        ray_options = RayOptions(
            args.ray or None, args.workers, args.gpus_per_worker, args.threads_per_worker, actor_options, args.verbose
        )
        summary = run_ray(args.artifacts, sets, job, items, ray_options, **run)
    else:
        summary = run_local(Labeler(FewShotSegmenter(args.artifacts, options), sets, job), items, **run)
    print(f"fssam2 label: {summary.line()}")
    print(f"fssam2 label: table {job.out / (PARQUET if args.table == 'parquet' else JOURNAL)}")
    return 1 if summary.failed else 0
