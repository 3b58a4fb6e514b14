"""Accuracy through the whole chain: the same held-out test episodes through PyTorch FP32 (the base model and the
LoRA model), the LoRA model's exports on every provider and precision, libfssam2, and a non-learned baseline, as
one markdown table of mIoU / FB-IoU per (shots, ways), with each row's difference to PyTorch FP32.

    python -m bench.accuracy_chain --checkpoint models/fssam2-shapes-t128/model.safetensors \\
        [--base runs/base.safetensors] [--episodes 300] [--work chain/] [--write docs/accuracy.md]

Exports go to --work (reused when made from the same weights, so a rerun only evaluates; evaluated cells are
cached there too, keyed by the weights' and the base's sha256); `--write` replaces the generated part of a
markdown page (between the CHAIN_BEGIN / CHAIN_END markers) with the table and the command that made it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from calibration.export_cli import main as export_main
from fssam2_export.models import build_model
from runtime import FewShotSegmenter, RuntimeOptions
from runtime.backends import OrtBackend
from runtime.engine.manifest import file_sha256, load_manifest
from runtime.tools.bench import environment
from runtime.tools.fidelity import ProviderFiles
from training.baseline import color_histogram_predictor
from training.datasets import build_dataset
from training.evaluate import Predictor, evaluate, runtime_predictor, segment_ways, torch_predictor

CONFIGS = ((1, 1), (5, 1), (1, 2), (5, 2))  # (shots, ways)
CHAIN_BEGIN, CHAIN_END = "<!-- accuracy-chain:begin -->", "<!-- accuracy-chain:end -->"
REFERENCE = "PyTorch FP32, LoRA merged"
EXPORTS = {  # precision -> extra fssam2-export arguments
    "fp32": [],
    "fp16": [],
    "int8": ["--calib-episodes", "64"],
    "bf16": [],  # the FP32 graphs + OpenVINO BF16 flavours, gated through OpenVINO
}


@dataclass(frozen=True)
class Row:
    name: str
    kind: str  # what the reader compares it with: "baseline", "torch", "runtime"
    make: Callable[[], Predictor]


def export(
    checkpoint: Path, sha256: str, model: str, size: int, precision: str, work: Path, gate_episodes: int
) -> Path:
    out = work / f"export-{precision}"
    if (out / "manifest.json").is_file():  # reused only if made from these weights at this size
        m = load_manifest(out, verify_files=False)
        if m.model.checkpoint_sha256 == sha256 and m.preprocess.image_size == size:
            return out
    args = ["--model", model, "--checkpoint", str(checkpoint), "--image-size", str(size), "--precision", precision]
    if precision != "fp32":  # the gate runs and reports, but an export it fails is kept: the table shows its cost
        args += ["--calib-dataset", "shapes", "--gate-episodes", str(gate_episodes), "--no-gate", *EXPORTS[precision]]
    if export_main([*args, "--out", str(out), "--overwrite", "--quiet"]) != 0:
        raise SystemExit(f"accuracy_chain: the {precision} export failed")
    return out


def gate_table(exports: dict[str, Path]) -> str:
    """What the fidelity gate saw on each reduced-precision export (fidelity.json), per file set it judged."""
    lines = [
        "| export | files judged | verdict | mask IoU mean (min) | logits correlation min | sign agreement min |",
        "|---|---|---|---|---|---|",
    ]
    for precision, art in exports.items():
        report = art / "fidelity.json"
        if not report.is_file():
            continue
        for files, r in json.loads(report.read_text()).items():
            lines.append(
                f"| {precision} | {files} | {r['verdict']} | {r['mean_mask_iou']:.4f} ({r['min_mask_iou']:.4f}) | "
                f"{r['min_logits_pearson']:.5f} | {r['min_sign_agreement']:.4f} |"
            )
    return "\n".join(lines)


def cpu_kind() -> str:
    """The CPU model and its matrix units (what BF16 / INT8 rows depend on), e.g. 'AMD EPYC (avx512_bf16, vnni)'."""
    cpu = environment()["cpu"]
    units = [name for name, present in cpu.get("matrix_units", {}).items() if present]
    return f"{cpu['model']} ({', '.join(units) or 'no BF16 / INT8 matrix units'}, {cpu['logical_cores']} cores)"


def standard_graphs(artifacts: Path) -> Predictor:
    """The standard graphs (what TensorRT runs: INT8 as QDQ) on ONNX Runtime's CPU, not the `cpu` flavours."""
    seg = FewShotSegmenter(artifacts, backend=ProviderFiles(OrtBackend("cpu")))
    return lambda ep: segment_ways(seg, ep.supports, ep.query)


def rows(args: argparse.Namespace, exports: dict[str, Path]) -> list[Row]:
    size = args.image_size
    cpu, openvino = RuntimeOptions("cpu"), RuntimeOptions("openvino")
    out = [Row("colour histogram (no learning)", "baseline", color_histogram_predictor)]
    if args.base:
        out.append(
            Row(
                "PyTorch FP32, base (pretrained, no LoRA)",
                "torch",
                lambda: torch_predictor(build_model(args.model, checkpoint=args.base, image_size=size).model),
            )
        )
    out.append(
        Row(
            REFERENCE,
            "torch",
            lambda: torch_predictor(build_model(args.model, checkpoint=args.checkpoint, image_size=size).model),
        )
    )
    out += [
        Row("ORT cpu FP32", "runtime", lambda: runtime_predictor(exports["fp32"], cpu)),
        Row("ORT cpu FP16 (FP32 islands)", "runtime", lambda: runtime_predictor(exports["fp16"], cpu)),
        Row("ORT cpu INT8 QDQ (the graphs TensorRT runs)", "runtime", lambda: standard_graphs(exports["int8"])),
        Row("ORT cpu INT8, `cpu` flavour (dynamic)", "runtime", lambda: runtime_predictor(exports["int8"], cpu)),
    ]
    if "openvino" in args.providers:
        out += [
            Row(
                "OpenVINO, BF16 export (BF16 where the CPU has it)",
                "runtime",
                lambda: runtime_predictor(exports["bf16"], openvino),
            ),
            Row("OpenVINO, INT8 export", "runtime", lambda: runtime_predictor(exports["int8"], openvino)),
        ]
    if "libfssam2" in args.providers:
        from bench.libfssam2 import cpp_predictor

        out.append(Row("libfssam2 (C++) cpu FP32", "runtime", lambda: cpp_predictor(args.cpp_build, exports["fp32"])))
    return out


def table(results: dict[str, dict[tuple[int, int], tuple[float, float]]]) -> str:
    head = "| | " + " | ".join(f"{s}-shot {w}-way" for s, w in CONFIGS) + " |"
    lines = [head, "|---" * (len(CONFIGS) + 1) + "|"]
    ref = results.get(REFERENCE, {})
    for name, cells in results.items():
        parts = []
        for cfg in CONFIGS:
            miou, fbiou = cells[cfg]
            delta = "" if name == REFERENCE or cfg not in ref else f" ({100 * (miou - ref[cfg][0]):+.2f})"
            parts.append(f"{100 * miou:.2f}{delta} / {100 * fbiou:.2f}")
        lines.append(f"| {name} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def write_section(page: Path, text: str) -> None:
    body = page.read_text() if page.is_file() else f"{CHAIN_BEGIN}\n{CHAIN_END}\n"
    if CHAIN_BEGIN not in body or CHAIN_END not in body:
        raise SystemExit(f"accuracy_chain: {page} has no {CHAIN_BEGIN} ... {CHAIN_END} section to replace")
    head, rest = body.split(CHAIN_BEGIN, 1)
    tail = rest.split(CHAIN_END, 1)[1]
    page.write_text(f"{head}{CHAIN_BEGIN}\n{text}\n{CHAIN_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="the LoRA-merged model (what ships)")
    p.add_argument("--base", type=Path, help="the base model the LoRA meta-training started from")
    p.add_argument("--model", default="sam2.1_hiera_t")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--dataset", default="shapes")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--episodes", type=int, default=300, help="test episodes per (shots, ways)")
    p.add_argument("--gate-episodes", type=int, default=32)
    p.add_argument("--providers", nargs="*", default=["openvino", "libfssam2"], help="beyond ORT cpu")
    p.add_argument("--cpp-build", type=Path, default=Path("build/cpp"))
    p.add_argument("--work", type=Path, default=Path("chain"))
    p.add_argument("--write", type=Path, help="markdown page whose generated section gets the table")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[tuple[int, int], tuple[float, float]]] = {}
    cache = args.work / "results.json"
    identity = {  # cached cells count only for the same weights, data and size
        "checkpoint": file_sha256(args.checkpoint),
        "base": file_sha256(args.base) if args.base else None,
        "data": [args.dataset, args.fold, args.image_size],
    }
    exports = {
        prec: export(
            args.checkpoint, identity["checkpoint"], args.model, args.image_size, prec, args.work, args.gate_episodes
        )
        for prec in EXPORTS
    }
    saved = json.loads(cache.read_text()) if cache.is_file() else {}
    done = saved.get("cells", {}) if saved.get("identity") == identity else {}
    for row in rows(args, exports):
        cells = {}
        predict = None
        for shots, ways in CONFIGS:
            key = f"{row.name}|{shots}|{ways}|{args.episodes}"
            if key not in done:
                predict = predict or row.make()
                data = build_dataset(args.dataset, None, args.fold, "test", shots, num_episodes=args.episodes)
                t0 = time.perf_counter()
                report = evaluate(predict, data, {"row": row.name}, args.fold, progress=True, ways=ways)
                done[key] = [report.miou, report.fbiou, time.perf_counter() - t0]
                cache.write_text(json.dumps({"identity": identity, "cells": done}, indent=1))
                print(
                    f"{row.name:<60} {shots}-shot {ways}-way mIoU {100 * report.miou:6.2f} FB-IoU {100 * report.fbiou:6.2f}"
                )
            cells[(shots, ways)] = tuple(done[key][:2])
        results[row.name] = cells
    text = (
        table(results) + "\n\nWhat the fidelity gate saw on the same model (its held-out training-split episodes):\n\n"
    )
    text += gate_table(exports)
    command = "python -m bench.accuracy_chain " + shlex.join(sys.argv[1:] if argv is None else argv)
    note = (
        f"{args.dataset} fold {args.fold} test episodes ({args.episodes} per column, novel classes only), "
        f"{args.image_size}², mIoU (difference to PyTorch FP32 LoRA, points) / FB-IoU, in %. "
        f"Made by `{command}` on {cpu_kind()}."
    )
    print(note + "\n\n" + text)
    if args.write:
        write_section(args.write, note + "\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
