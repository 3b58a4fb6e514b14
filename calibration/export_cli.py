"""`fssam2-export`: build/load a SAM2 model and export the four ONNX graphs + manifest.

The command lives in the top stage (calibration) because reduced precision and real-data calibration need
calibration and training; `fssam2_export` itself imports neither.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fssam2_export.engines import (
    EngineBuildError,
    add_engine_arguments,
    current_device,
    require_tensorrt,
    settings_from,
)
from fssam2_export.export import DEFAULT_OPSET, export_artifacts
from fssam2_export.models import DEFAULT_IMAGE_SIZE, MODEL_CONFIGS, build_model
from runtime.tools.fidelity import GateThresholds
from training.datasets import build_dataset

from .capture import EpisodeSource
from .int8 import METHODS
from .pipeline import GateError, PrecisionOptions, bf16_judge, converter, graph_precisions

PRECISIONS = ("fp32", "fp16", "int8", "mixed", "bf16")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fssam2-export", description=__doc__)
    p.add_argument("--model", default="sam2.1_hiera_t", choices=sorted(MODEL_CONFIGS), help="sam2 model (hydra config)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--checkpoint", help="official-format .pt ({'model': state_dict}), e.g. a merged FS-SAM2 checkpoint"
    )
    src.add_argument(
        "--random-init", action="store_true", help="random weights (needs --seed); for testing the pipeline only"
    )
    p.add_argument("--seed", type=int, help="seed for --random-init")
    p.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE, help="square input size, a multiple of 32")
    p.add_argument(
        "--stability-fallback",
        choices=("on", "off"),
        help="SAM2's stability-based multimask fallback in the mask decoder graph (default: as the checkpoint's "
        "training record says, else on, SAM2's default; docs/precision.md#learned-weights)",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="fp16: FP16 with FP32 islands; int8: INT8 QDQ where safe (+ --int8-rest elsewhere); mixed: per "
        "--module-precision; bf16: FP32 graphs plus OpenVINO flavours compiled in BF16, gated through OpenVINO here",
    )
    q = p.add_argument_group("reduced precision (fp16 / int8 / mixed / bf16)")
    q.add_argument(
        "--module-precision",
        type=_module_precision,
        default={},
        metavar="GRAPH=PREC[,...]",
        help="per-graph precision (fp32|fp16|int8; with --precision bf16: fp32|bf16), e.g. "
        "image_encoder=int8,memory_attention=fp16",
    )
    q.add_argument("--calib-episodes", type=int, default=32, help="K-shot episodes run for calibration")
    q.add_argument(
        "--calib-dataset",
        default="synthetic",
        choices=("synthetic", "shapes", "pascal", "coco", "fss"),
        help="where calibration and gate episodes come from: synthetic (one coloured polygon per episode), or a "
        "benchmark's training episodes: shapes (generated; the shipped model's benchmark) or pascal|coco|fss "
        "(need --calib-data)",
    )
    q.add_argument(
        "--calib-data", type=Path, help="data root of --calib-dataset, in FS-SAM2's layout (see README, Training)"
    )
    q.add_argument("--calib-fold", type=int, default=0, help="fold of --calib-dataset whose training classes are used")
    q.add_argument(
        "--calib-seed",
        type=int,
        default=0,
        help="seed of the calibration episodes (the gate uses another stream of it)",
    )
    q.add_argument(
        "--calib-shots", type=int, nargs=2, default=(1, 4), metavar=("MIN", "MAX"), help="K range of the episodes"
    )
    q.add_argument(
        "--calib-method", default="minmax", choices=sorted(METHODS), help="INT8 activation range calibration"
    )
    q.add_argument(
        "--calib-file", type=Path, help="calibration .npz: loaded if it exists, else captured and saved there"
    )
    q.add_argument(
        "--int8-rest", default="fp16", choices=("fp16", "fp32"), help="precision of what INT8 leaves unquantised"
    )
    q.add_argument(
        "--int8-heads",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="quantise the mask decoder's MLP heads",
    )
    q.add_argument("--no-cpu-int8", action="store_true", help="no ORT-CPU dynamic INT8 flavour next to INT8 graphs")
    q.add_argument(
        "--no-gate",
        action="store_true",
        help="keep the export even if the fidelity gate fails (recorded in the manifest)",
    )
    q.add_argument("--gate-episodes", type=int, default=16, help="held-out episodes of the fidelity gate")
    q.add_argument("--gate-iou", type=float, help="min mean mask IoU (default 0.99 fp16, 0.98 bf16, 0.97 int8)")
    q.add_argument(
        "--gate-correlation", type=float, help="min logits correlation (default 0.999 fp16 and bf16, 0.99 int8)"
    )
    q.add_argument(
        "--gate-min-judgeable",
        type=int,
        help="fewer gate episodes with a judgeable (non-degenerate) FP32 mask refuse the export, exit 2 (default 2)",
    )
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--out", required=True, help="artifacts directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out (only after a complete export)")
    p.add_argument(
        "--ort-optimize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write fused-attention copies of the graphs for ONNX Runtime's cpu/cuda providers (manifest flavours)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--engine",
        choices=("none", "tensorrt"),
        default="none",
        help="also build TensorRT engines (needs TensorRT and a GPU: build on the target machine)",
    )
    add_engine_arguments(p)
    return p


def _module_precision(text: str) -> dict[str, str]:
    try:
        return dict(item.split("=", 1) for item in text.split(",") if item)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GRAPH=PRECISION[,...], got {text!r}") from None


def _precision_options(args) -> PrecisionOptions | None:
    if args.precision == "fp32":
        if args.module_precision:
            raise ValueError(
                "--module-precision needs --precision mixed (or fp16/int8 as the default for the other graphs)"
            )
        return None
    graph_precisions(args.precision, args.module_precision)  # fail before the export, not after
    if args.precision == "bf16" and not args.no_gate:
        bf16_judge()  # the gate needs OpenVINO BF16 on this machine
    thresholds = GateThresholds.for_precisions(
        {args.precision, *args.module_precision.values()} - {"mixed"}
    ).with_overrides(
        mask_iou=args.gate_iou, logits_pearson=args.gate_correlation, min_judgeable=args.gate_min_judgeable
    )
    return PrecisionOptions(
        precision=args.precision,
        module_precision=args.module_precision,
        calib_episodes=args.calib_episodes,
        calib_seed=args.calib_seed,
        calib_shots=tuple(args.calib_shots),
        calib_method=args.calib_method,
        calib_file=args.calib_file,
        calib_source=_calib_source(args),
        int8_rest=args.int8_rest,
        int8_heads=args.int8_heads,
        cpu_int8_flavour=not args.no_cpu_int8,
        ort_flavours=args.ort_optimize,
        gate=not args.no_gate,
        gate_episodes=args.gate_episodes,
        thresholds=thresholds,
    )


def _calib_source(args) -> EpisodeSource:
    if (args.calib_dataset in ("synthetic", "shapes")) != (args.calib_data is None):
        raise ValueError("--calib-data DIR goes with --calib-dataset pascal|coco|fss (and only with them)")
    if args.calib_data is not None:
        build_dataset(args.calib_dataset, args.calib_data, args.calib_fold, "trn", 1)  # layout errors before exporting
    return EpisodeSource(args.calib_dataset, args.calib_data, args.calib_fold)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.random_init and args.seed is None:
        parser().error("--random-init needs --seed N")
    if args.checkpoint and args.seed is not None:
        parser().error("--seed only applies to --random-init")
    t0 = time.perf_counter()
    try:
        options = _precision_options(args)
        engines = settings_from(args) if args.engine == "tensorrt" else None
        if engines is not None:  # fail before exporting when engines cannot be built here
            require_tensorrt()
            current_device()
        loaded = build_model(
            args.model,
            checkpoint=args.checkpoint,
            random_init=args.random_init,
            seed=args.seed,
            image_size=args.image_size,
            stability_fallback=None if args.stability_fallback is None else args.stability_fallback == "on",
        )
        t1 = time.perf_counter()
        report = export_artifacts(
            loaded,
            args.out,
            convert=None if options is None else converter(options),
            opset=args.opset,
            overwrite=args.overwrite,
            progress=not args.quiet,
            ort_optimize=args.ort_optimize,
            engines=engines,
        )
    except GateError as e:  # a broken conversion: exit 1 (a refusal to judge is a ValueError: exit 2)
        print(f"fssam2-export: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, FileExistsError, NotImplementedError, ImportError, EngineBuildError) as e:
        print(f"fssam2-export: error: {e}", file=sys.stderr)
        return 2
    per_phase = ", ".join(f"{k} {v:.1f}s" for k, v in report.seconds.items())
    weights = f"random-init seed {args.seed}" if args.random_init else f"checkpoint {args.checkpoint}"
    print(f"exported {args.model} @ {args.image_size}px ({weights}, {args.precision}) to {report.out_dir}")
    print(f"time per phase: build {t1 - t0:.1f}s, {per_phase}; total {time.perf_counter() - t0:.1f}s")
    if report.fidelity_table:
        print(report.fidelity_table)
    if isinstance(unjudged := (report.manifest.fidelity or {}).get("openvino"), str):
        print(f"openvino flavours {unjudged}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
