"""`fssam2`: run K-shot segmentation over exported artifacts (torch-free)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from .backends import PROVIDERS, ProviderUnavailableError
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
    seg = FewShotSegmenter(args.artifacts, provider=args.provider, max_shots=max(DEFAULT_MAX_SHOTS, len(args.support)))
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
            print(f"  {name:<17} {t.calls:>3} calls  {t.mean_ms:9.1f} ms/call  {t.total_ms:9.1f} ms total")
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


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _segment(args) if args.command == "segment" else _info(args)
    except (InputError, ManifestError, ProviderUnavailableError, RuntimeError) as e:
        print(f"fssam2: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
