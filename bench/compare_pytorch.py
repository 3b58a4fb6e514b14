"""The runtime against FS-SAM2's PyTorch forward, same episodes, same process, interleaved.

PyTorch side: `fssam2_export.reference.reference_episode`, which (like FS-SAM2) re-encodes the K supports
on every query; per-module times come from forward hooks on sam2's modules, and the support phase ends
at the K-th memory encoder call; `--torch-dtype fp32 bf16` also runs it under `torch.autocast` (BF16: on
CPUs with AMX, PyTorch's fastest mode). Runtime side: `FewShotSegmenter` on each of `--providers`, with its
own timing hook; its query runs with the K supports cached. Each round runs every side (order rotating),
so drifting machine load hits all of them.

    python -m bench.compare_pytorch --artifacts art-fp32/ [art-int8/ ...] --providers cpu openvino \\
        --torch-dtype fp32 bf16 --shots 1 5 --out cmp.json

Needs torch and sam2 (the export extra); outside runtime/, which stays torch-free.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fssam2_export.models import build_model
from fssam2_export.reference import reference_episode
from runtime import FewShotSegmenter, RuntimeOptions, load_manifest
from runtime.cli import add_runtime_options, options_from_args
from runtime.tools.bench import PhaseRecorder, environment, memory_attention_gflop, synthetic_input
from runtime.tools.fidelity import iou as mask_iou
from runtime.tools.fidelity import pearson

SCHEMA = "fssam2-compare-pytorch/2"
TORCH_MODULES = {  # sam2 attribute -> runtime module it corresponds to
    "image_encoder": "image_encoder",
    "memory_encoder": "memory_encoder",
    "memory_attention": "memory_attention",
    "sam_prompt_encoder": "mask_decoder",  # the runtime folds the prompt encoder into the decoder graph
    "sam_mask_decoder": "mask_decoder",
}


@dataclass
class TorchClock:
    """Forward hooks timing sam2's modules; marks the end of the support phase (the memory encoder call that
    completes K supports: the reference encodes them as one batch, a loop would take K calls)."""

    shots: int
    calls: dict[str, list[float]] = field(default_factory=dict)  # runtime module name -> ms per call
    support_end: float = 0.0
    _start: dict[str, float] = field(default_factory=dict)
    _memory_calls: int = 0

    def attach(self, model: torch.nn.Module) -> None:
        for attr, name in TORCH_MODULES.items():
            module = getattr(model, attr)
            module.register_forward_pre_hook(lambda m, a, attr=attr: self._start.__setitem__(attr, time.perf_counter()))
            module.register_forward_hook(lambda m, a, o, attr=attr, name=name: self._stop(attr, name, a))

    def _stop(self, attr: str, name: str, args: tuple) -> None:
        now = time.perf_counter()
        self.calls.setdefault(name, []).append((now - self._start[attr]) * 1e3)
        if attr == "memory_encoder":
            self._memory_calls += int(args[0].shape[0])  # supports encoded by this call
            if self._memory_calls == self.shots:
                self.support_end = now

    def reset(self, shots: int) -> None:
        self.shots, self._memory_calls, self.support_end = shots, 0, 0.0
        self.calls.clear()


def _median(values) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


def torch_model(artifacts: Path):
    """The PyTorch model the artifacts were exported from (checkpoint, or random-init seed), FP32."""
    m = load_manifest(artifacts, verify_files=False)
    size, fallback = m.preprocess.image_size, m.model.stability_fallback
    if m.model.random_init:
        loaded = build_model(
            m.model.name, random_init=True, seed=m.model.seed, image_size=size, stability_fallback=fallback
        )
    else:
        loaded = build_model(m.model.name, checkpoint=m.model.checkpoint, image_size=size, stability_fallback=fallback)
    return loaded.model.eval()


TORCH_DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def _autocast(model: torch.nn.Module, dtype: str):
    """fp32: plain; bf16: torch.autocast on the model's device (CPU: oneDNN's AMX kernels where the CPU has them)."""
    device = next(model.parameters()).device.type
    return (
        contextlib.nullcontext() if TORCH_DTYPES[dtype] is None else torch.autocast(device, dtype=TORCH_DTYPES[dtype])
    )


def compare(
    artifacts: Path,
    shots: list[int],
    episodes: int,
    warmup: int,
    input_size: tuple[int, int],
    model: torch.nn.Module,
    clock: TorchClock,
    progress,
    runs: list[RuntimeOptions] | None = None,
    torch_dtypes: list[str] = ("fp32",),
) -> dict:
    """All K for one artifacts directory: the runtime run as each of `runs` (one per provider) and every PyTorch dtype,
    interleaved (the order rotates each round); medians in ms, runtime/PyTorch ratios, and each side's mask IoU /
    logits correlation against the first PyTorch dtype. `clock` is attached to `model`."""
    runs = runs or [RuntimeOptions()]
    providers = [o.provider for o in runs]
    recs = {p: PhaseRecorder() for p in providers}
    segs = {o.provider: FewShotSegmenter(artifacts, o, on_timing=recs[o.provider]) for o in runs}
    manifest = next(iter(segs.values())).manifest
    w, h = input_size
    images = [synthetic_input(w, h, seed) for seed in range(max(shots) + 1)]
    query = images[-1][0]
    out = {
        "artifacts": str(artifacts),
        "precision": manifest.precision,
        "image_size": manifest.preprocess.image_size,
        "model": manifest.model.name,
        "graph_precisions": {p: {g: graph.precision for g, graph in seg.graphs.items()} for p, seg in segs.items()},
        "by_shots": [],
    }
    sides = [("runtime", p) for p in providers] + [("torch", d) for d in torch_dtypes]
    for k in shots:
        supports = images[:k]
        rt = {p: {"support": [], "query": [], "modules": {}} for p in providers}
        pt = {d: {"support": [], "query": [], "forward": [], "modules": {}} for d in torch_dtypes}
        last = {}
        for i in range(warmup + episodes):
            keep = i >= warmup
            for kind, name in sides[i % len(sides) :] + sides[: i % len(sides)]:
                if kind == "runtime":
                    seg, rec, acc = segs[name], recs[name], rt[name]
                    rec.phase = None
                    t0 = time.perf_counter()
                    support_set = seg.encode_supports(supports)
                    t1 = time.perf_counter()
                    rec.phase = "query"
                    last[name] = seg.segment(query, support_set)
                    t2 = time.perf_counter()
                    q = rec.take("query")
                    if keep:
                        acc["support"].append((t1 - t0) * 1e3)
                        acc["query"].append((t2 - t1) * 1e3)
                        for module, v in q.items():
                            acc["modules"].setdefault(module, []).extend(v)
                else:
                    acc = pt[name]
                    clock.reset(k)
                    t0 = time.perf_counter()
                    with torch.inference_mode(), _autocast(model, name):
                        last[f"torch-{name}"] = reference_episode(model, supports, query)
                    t1 = time.perf_counter()
                    if keep:
                        acc["forward"].append((t1 - t0) * 1e3)
                        acc["support"].append((clock.support_end - t0) * 1e3)
                        acc["query"].append((t1 - clock.support_end) * 1e3)
                        for module, v in clock.calls.items():
                            acc["modules"].setdefault(module, []).append(v[-1] if module == "image_encoder" else sum(v))
            progress.update()
        runtime_ms = {
            p: {
                "support_phase": _median(a["support"]),
                "query_cached": _median(a["query"]),
                "query_modules": {m: _median(v) for m, v in a["modules"].items()},
            }
            for p, a in rt.items()
        }
        pytorch_ms = {
            d: {
                "support_phase": _median(a["support"]),
                "query_phase": _median(a["query"]),
                "forward": _median(a["forward"]),
                "modules": {m: _median(v) for m, v in a["modules"].items()},
            }
            for d, a in pt.items()
        }
        ratios = {}  # runtime / PyTorch; < 1 = the runtime is faster
        for p, r in runtime_ms.items():
            for d, t in pytorch_ms.items():
                ratios[f"{p}/{d}"] = {
                    "query_cached_vs_query_phase": r["query_cached"] / t["query_phase"],
                    "query_cached_vs_forward": r["query_cached"] / t["forward"],
                    "support_phase": r["support_phase"] / t["support_phase"],
                    "episode_vs_forward": (r["support_phase"] + r["query_cached"]) / t["forward"],
                    **{
                        f"module:{m}": r["query_modules"][m] / v
                        for m, v in t["modules"].items()
                        if m in r["query_modules"] and m != "memory_encoder"
                    },
                }
        ref = last[f"torch-{torch_dtypes[0]}"]
        embed, channels = (
            manifest.graphs["memory_attention"].inputs[0].shape,
            manifest.graphs["memory_attention"].inputs[2].shape[2],
        )
        gflop = memory_attention_gflop(embed[2], embed[1], channels, k * manifest.episode.tokens_per_support)
        out["by_shots"].append(
            {
                "shots": k,
                "runtime_ms": runtime_ms,
                "memory_attention_gflop": gflop,
                "memory_attention_gflops": {
                    p: gflop / (r["query_modules"]["memory_attention"] / 1e3) for p, r in runtime_ms.items()
                }
                | {f"torch-{d}": gflop / (t["modules"]["memory_attention"] / 1e3) for d, t in pytorch_ms.items()},
                "pytorch_ms": pytorch_ms,
                "ratios": ratios,
                "support_cache_speedup": {
                    p: (r["support_phase"] + r["query_cached"]) / r["query_cached"] for p, r in runtime_ms.items()
                },
                "fidelity_reference": f"pytorch {torch_dtypes[0]}",  # last round's masks/logits of each side against it
                "fidelity_reference_foreground": float(ref.mask.mean()),  # 0 or 1: every mask IoU is vacuous
                "fidelity": {
                    side: {"mask_iou": mask_iou(res.mask, ref.mask), "logits_pearson": pearson(res.logits, ref.logits)}
                    for side, res in last.items()
                },
            }
        )
    return out


def format_table(report: dict) -> str:
    lines = []
    units = report["environment"]["cpu"].get("matrix_units")
    if "bf16" in report["settings"]["torch_dtypes"] and units and not (units["amx_bf16"] or units["avx512_bf16"]):
        lines.append(
            "note: this CPU has no BF16 matrix instructions (AMX-BF16 / AVX512_BF16): PyTorch's BF16 autocast is"
            " emulated here and slower than its FP32, which is then the peer to compare with"
        )
    for run in report["runs"]:
        lines.append(
            f"{Path(run['artifacts']).name} ({run['model']} @ {run['image_size']}px, {run['precision']} export); "
            + "; ".join(
                f"{p}: " + ", ".join(f"{g} {v}" for g, v in gp.items()) for p, gp in run["graph_precisions"].items()
            )
        )
        for k in run["by_shots"]:
            lines.append(
                f" K={k['shots']}  medians in ms; ratios runtime/PyTorch (< 1: runtime faster); fidelity vs {k['fidelity_reference']}"
            )
            lines.append(
                f"  memory attention {k['memory_attention_gflop']:.1f} GFLOP: "
                + ", ".join(f"{side} {v:.0f} GFLOP/s" for side, v in k["memory_attention_gflops"].items())
            )
            for p, r in k["runtime_ms"].items():
                f = k["fidelity"][p]
                lines.append(
                    f"  runtime {p:<9} query(cached) {r['query_cached']:8.0f}  support phase {r['support_phase']:8.0f}"
                    f"  IoU {f['mask_iou']:.4f} corr {f['logits_pearson']:.5f}"
                )
            for d, t in k["pytorch_ms"].items():
                f = k["fidelity"][f"torch-{d}"]
                lines.append(
                    f"  pytorch {d:<9} query phase   {t['query_phase']:8.0f}  support phase {t['support_phase']:8.0f}"
                    f"  forward {t['forward']:8.0f}  IoU {f['mask_iou']:.4f} corr {f['logits_pearson']:.5f}"
                )
            for pair, x in k["ratios"].items():
                modules = ", ".join(f"{m.split(':')[1]} {v:.2f}" for m, v in x.items() if m.startswith("module:"))
                lines.append(
                    f"  {pair:<15} query {x['query_cached_vs_query_phase']:.2f}  vs forward {x['query_cached_vs_forward']:.2f}"
                    f"  support {x['support_phase']:.2f}  | {modules}"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compare_pytorch", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--artifacts", nargs="+", required=True, help="artifacts directories (e.g. FP32 and INT8 of one model)"
    )
    p.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    p.add_argument(
        "--episodes", type=int, default=10, help="timed rounds per K (each: one runtime episode, one PyTorch forward)"
    )
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--input-size", default="1024x768", help="WxH of the synthetic images")
    p.add_argument(
        "--torch-dtype",
        nargs="+",
        default=["fp32"],
        choices=sorted(TORCH_DTYPES),
        help="PyTorch modes, side by side (bf16: torch.autocast); fidelity is measured against the first",
    )
    add_runtime_options(p, sweep=True)  # the runtime's providers, side by side; --threads also sets torch's
    p.add_argument("--out", help="write the report as JSON")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.input_size.lower().split("x"))
    if args.threads:
        torch.set_num_threads(args.threads)
    from tqdm import tqdm

    shots = sorted(set(args.shots))
    models: dict[tuple, tuple[torch.nn.Module, TorchClock]] = {}
    runs = []
    with tqdm(
        total=len(args.artifacts) * len(shots) * (args.warmup + args.episodes),
        unit="round",
        disable=args.quiet,
        file=sys.stderr,
    ) as bar:
        for a in map(Path, args.artifacts):
            manifest = load_manifest(a, verify_files=False)
            m = manifest.model
            key = (m.name, m.checkpoint_sha256, m.seed, manifest.preprocess.image_size)
            if key not in models:  # FP32 and INT8 artifacts of one model share the PyTorch reference
                model, clock = torch_model(a), TorchClock(shots[0])
                clock.attach(model)
                models[key] = (model, clock)
            runs.append(
                compare(
                    a,
                    shots,
                    args.episodes,
                    args.warmup,
                    (w, h),
                    *models[key],
                    bar,
                    runs=[options_from_args(args, p) for p in args.providers],
                    torch_dtypes=args.torch_dtype,
                )
            )
    report = {
        "schema": SCHEMA,
        "settings": {
            "shots": shots,
            "episodes": args.episodes,
            "warmup": args.warmup,
            "input_size": [w, h],
            "threads": args.threads,
            "providers": args.providers,
            "torch_dtypes": args.torch_dtype,
            "ov_precision": args.ov_precision,
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "environment": environment(),
        "runs": runs,
    }
    print(format_table(report))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
