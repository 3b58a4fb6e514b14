"""`fssam2-train fit | eval | merge`: meta-train LoRA adapters, evaluate (PyTorch or exported), merge."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from fssam2_export.models import DEFAULT_IMAGE_SIZE, MODEL_CONFIGS, CheckpointError
from runtime.cli import add_runtime_options, options_from_args
from runtime.engine.files import write_atomic

from .baseline import BASELINES
from .datasets import BENCHMARKS, GENERATED, DatasetLayoutError, build_dataset
from .lora import parse_lora_overrides
from .run import TRAIN_MODES, BaseModelSpec, RunConfig, read_config

DEFAULT_DATA_ROOT = "data"


def _weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=sorted(MODEL_CONFIGS), help="SAM2 config (default sam2.1_hiera_b+)")
    p.add_argument("--checkpoint", help="official SAM2 checkpoint ({'model': state_dict})")
    p.add_argument("--random-init", action="store_true", help="random weights (tests, demos)")
    p.add_argument("--init-seed", type=int, default=0, help="seed of --random-init (default 0)")
    p.add_argument("--image-size", type=int, help=f"model input size, multiple of 32 (default {DEFAULT_IMAGE_SIZE})")


def _data(p: argparse.ArgumentParser, need_dataset: bool) -> None:
    p.add_argument("--dataset", choices=BENCHMARKS, required=need_dataset)
    p.add_argument("--data-root", help=f"holds VOC2012/, COCO2014/ or FSS-1000/ (default {DEFAULT_DATA_ROOT}/)")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--seed", type=int, default=42, help="episode / training seed (42 = FS-SAM2's test episodes)")
    p.add_argument("--workers", type=int, help="data loader processes")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="fssam2-train", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="meta-train LoRA adapters (torchrun for several GPUs)")
    _weights(fit)
    _data(fit, need_dataset=False)
    fit.add_argument("--out", required=True, help="run directory")
    fit.add_argument("--resume", action="store_true", help="continue the run in --out with its own config")
    fit.add_argument("--batch-size", type=int, default=8, help="episodes per step and process")
    fit.add_argument("--lr", type=float, default=1e-4)
    fit.add_argument("--weight-decay", type=float, default=1e-6)
    fit.add_argument("--epochs", type=int, default=50)
    fit.add_argument("--steps", type=int, help="total optimiser steps (overrides --epochs)")
    fit.add_argument("--stop-after", type=int, help="end this session after N steps (continue with --resume)")
    fit.add_argument("--val-every", type=int, help="steps between validations (default: once per epoch)")
    fit.add_argument(
        "--val-episodes", type=int, help="default 1000 (PASCAL, COCO), every val image (FSS-1000), 100 (synthetic)"
    )
    fit.add_argument(
        "--amp", choices=("auto", "bf16", "off"), default="auto", help="auto: bf16 on a GPU or CPU that has it"
    )
    fit.add_argument("--no-augment", action="store_true")
    fit.add_argument(
        "--train",
        choices=TRAIN_MODES,
        default="lora",
        help="lora: FS-SAM2's adapters on a frozen base (default); all: every parameter (pretraining from "
        "--random-init, e.g. on --dataset shapes-instances)",
    )
    fit.add_argument("--warmup", type=int, default=0, help="steps of linear learning-rate warm-up (default 0)")
    fit.add_argument("--clip-grad", type=float, help="clip the gradient norm to this (default: no clipping)")
    fit.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="MODULE:k=v,...",
        help="override FS-SAM2's adapters, e.g. memory_attention:r=16,alpha=32 or "
        "image_encoder:targets=qkv+proj or memory_encoder:off",
    )
    fit.add_argument("--device", default="auto")
    fit.add_argument("--quiet", action="store_true")

    ev = sub.add_parser("eval", help="mIoU / FB-IoU on a benchmark's episodes")
    src = ev.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="a training run (base + adapters, PyTorch)")
    src.add_argument("--artifacts", help="exported graphs, run by the torch-free runtime")
    src.add_argument("--base", action="store_true", help="a plain SAM2 from --model + --checkpoint/--random-init")
    src.add_argument(
        "--baseline", choices=sorted(BASELINES), help="a non-learned baseline on raw pixels (no model at all)"
    )
    _weights(ev)
    _data(ev, need_dataset=True)
    ev.add_argument("--which", choices=("best", "last"), default="best", help="adapters of --run")
    ev.add_argument("--split", choices=("test", "val"), default="test")
    ev.add_argument(
        "--ways",
        type=int,
        default=1,
        help="N-way episodes: N classes of the fold with --shots supports each, one query (PANet's protocol)",
    )
    ev.add_argument("--episodes", type=int, help="default: 1000 (PASCAL, COCO), every test image (FSS-1000)")
    add_runtime_options(ev)  # how the torch-free runtime runs --artifacts
    ev.add_argument("--device", default="auto")
    ev.add_argument(
        "--amp", choices=("auto", "bf16", "off"), default="auto", help="auto: bf16 on a GPU that has it, FP32 on CPUs"
    )
    ev.add_argument("--out", help="JSON report (default: <run>/eval/... or ./fssam2-eval-...json)")
    ev.add_argument("--quiet", action="store_true")

    mg = sub.add_parser("merge", help="fold adapters into SAM2 weights -> official checkpoint")
    mg.add_argument("--run", required=True)
    mg.add_argument(
        "--out",
        required=True,
        help="checkpoint path: .pt (sam2's {'model': state_dict}) or .safetensors; a .fssam2.json record beside it",
    )
    mg.add_argument("--which", choices=("best", "last"), default="best")
    mg.add_argument(
        "--dtype", choices=("fp32", "fp16", "bf16"), default="fp32", help="floating-point weights as (default fp32)"
    )
    mg.add_argument(
        "--stability-fallback",
        choices=("on", "off"),
        help="record whether inference (fssam2-export, eval) keeps SAM2's stability-based multimask fallback "
        "(default: as the run's base model does)",
    )
    return top


def _data_root(args: argparse.Namespace, fallback: str | None = DEFAULT_DATA_ROOT) -> str | None:
    if args.dataset in GENERATED:
        return None
    return str(Path(args.data_root or fallback).resolve()) if (args.data_root or fallback) else None


def _cmd_fit(args: argparse.Namespace) -> int:
    from .fit import fit

    if args.resume:
        result = fit(
            None, args.out, resume=True, stop_after=args.stop_after, device=args.device, progress=not args.quiet
        )
    else:
        if args.dataset is None:
            raise ValueError("fit needs --dataset (or --resume)")
        base = BaseModelSpec.from_args(
            args.model or "sam2.1_hiera_b+",
            args.image_size or DEFAULT_IMAGE_SIZE,
            args.checkpoint,
            args.random_init,
            args.init_seed,
        )
        config = RunConfig(
            base,
            args.dataset,
            _data_root(args),
            args.fold,
            args.shots,
            lora=parse_lora_overrides(args.lora),
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            epochs=args.epochs,
            steps=args.steps,
            val_every=args.val_every,
            val_episodes=args.val_episodes,
            workers=4 if args.workers is None else args.workers,
            seed=args.seed,
            amp=args.amp,
            augment=not args.no_augment,
            train=args.train,
            warmup=args.warmup,
            clip_grad=args.clip_grad,
        )
        result = fit(config, args.out, stop_after=args.stop_after, device=args.device, progress=not args.quiet)
    if not args.quiet:
        print(
            f"fit: {result.step} steps in {result.run}; best val mIoU "
            f"{'-' if result.best_val_miou is None else f'{100 * result.best_val_miou:.2f}'}"
        )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, runtime_predictor, torch_predictor
    from .fit import resolve_device, use_amp

    device = resolve_device(args.device)
    config = read_config(Path(args.run)) if args.run else None
    root = _data_root(args, fallback=(config.data_root if config else None) or DEFAULT_DATA_ROOT)
    dataset = build_dataset(
        args.dataset, root, args.fold, args.split, args.shots, args.seed, num_episodes=args.episodes
    )
    dataset.check_ways(args.ways)  # before any model is built
    if config is not None:
        from .run import load_run_model

        model = load_run_model(Path(args.run), args.which).to(device)
        predict = torch_predictor(model, use_amp(args.amp, device, cpu=False))
        source = {
            "kind": "torch",
            "run": str(Path(args.run).resolve()),
            "which": args.which,
            "base": asdict(config.base),
        }
    elif args.baseline:
        predict = BASELINES[args.baseline]()
        source = {"kind": "baseline", "baseline": args.baseline}
    elif args.artifacts:
        options = options_from_args(args)
        predict = runtime_predictor(args.artifacts, options)
        source = {"kind": "runtime", "artifacts": str(Path(args.artifacts).resolve()), "provider": options.provider}
    else:
        base = BaseModelSpec.from_args(
            args.model or "sam2.1_hiera_b+",
            args.image_size or DEFAULT_IMAGE_SIZE,
            args.checkpoint,
            args.random_init,
            args.init_seed,
        )
        predict = torch_predictor(base.build().model.to(device), use_amp(args.amp, device, cpu=False))
        source = {"kind": "torch", "base": asdict(base)}
    report = evaluate(
        predict, dataset, source, args.fold, progress=not args.quiet, workers=args.workers or 0, ways=args.ways
    )
    ways = f"{args.ways}way-" if args.ways > 1 else ""
    name = f"{args.dataset}-f{args.fold}-{ways}{args.shots}shot-{args.split}.json"
    out = (
        Path(args.out)
        if args.out
        else (Path(args.run) / "eval" / name if args.run else Path(f"fssam2-eval-{source['kind']}-{name}"))
    )
    write_atomic(out, report.to_json().encode())
    if not args.quiet:
        print(report.table())
        print(f"report: {out} ({report.seconds:.1f} s)")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from .merge import merge_run

    result = merge_run(
        args.run,
        args.out,
        args.which,
        args.dtype,
        None if args.stability_fallback is None else args.stability_fallback == "on",
    )
    print(
        f"merge: {result.checkpoint} ({result.num_keys} tensors, sha256 {result.sha256[:12]}...), record {result.record}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return {"fit": _cmd_fit, "eval": _cmd_eval, "merge": _cmd_merge}[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError, DatasetLayoutError, CheckpointError) as e:
        print(f"fssam2-train {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
