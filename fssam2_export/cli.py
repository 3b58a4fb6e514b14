"""`fssam2-export`: build/load a SAM2 model and export the four ONNX graphs + manifest."""

from __future__ import annotations

import argparse
import sys
import time

from .engines import EngineBuildError, add_engine_arguments, current_device, require_tensorrt, settings_from
from .export import DEFAULT_OPSET, PRECISIONS, export_artifacts
from .models import DEFAULT_IMAGE_SIZE, MODEL_CONFIGS, build_model


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fssam2-export", description=__doc__)
    p.add_argument("--model", default="sam2.1_hiera_t", choices=sorted(MODEL_CONFIGS), help="sam2 model (hydra config)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="official-format .pt ({'model': state_dict}), e.g. a merged FS-SAM2 checkpoint")
    src.add_argument("--random-init", action="store_true", help="random weights (needs --seed); for testing the pipeline only")
    p.add_argument("--seed", type=int, help="seed for --random-init")
    p.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE, help="square input size, a multiple of 32")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--out", required=True, help="artifacts directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out (only after a complete export)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--engine", choices=("none", "tensorrt"), default="none",
                   help="also build TensorRT engines (needs TensorRT and a GPU: build on the target machine)")
    add_engine_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.random_init and args.seed is None:
        parser().error("--random-init needs --seed N")
    if args.checkpoint and args.seed is not None:
        parser().error("--seed only applies to --random-init")
    t0 = time.perf_counter()
    try:
        engines = settings_from(args) if args.engine == "tensorrt" else None
        if engines is not None:  # fail before exporting when engines cannot be built here
            require_tensorrt()
            current_device()
        loaded = build_model(args.model, checkpoint=args.checkpoint, random_init=args.random_init, seed=args.seed, image_size=args.image_size)
        t1 = time.perf_counter()
        report = export_artifacts(loaded, args.out, precision=args.precision, opset=args.opset, overwrite=args.overwrite,
                                  progress=not args.quiet, engines=engines)
    except (ValueError, FileNotFoundError, FileExistsError, NotImplementedError, ImportError, EngineBuildError) as e:
        print(f"fssam2-export: error: {e}", file=sys.stderr)
        return 2
    per_graph = ", ".join(f"{k} {v:.1f}s" for k, v in report.seconds.items())
    weights = f"random-init seed {args.seed}" if args.random_init else f"checkpoint {args.checkpoint}"
    print(f"exported {args.model} @ {args.image_size}px ({weights}, {args.precision}) to {report.out_dir}")
    print(f"build {t1 - t0:.1f}s; export {sum(report.seconds.values()):.1f}s ({per_graph})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
