"""The runtime against FS-SAM2's PyTorch forward, same episodes, same process, interleaved.

PyTorch side: `fssam2_export.reference.reference_episode`, which (like FS-SAM2) re-encodes the K supports
on every query; per-module times come from forward hooks on sam2's modules, and the support phase ends
at the K-th memory encoder call. Runtime side: `FewShotSegmenter` with its own timing hook; its query runs
with the K supports cached. Each round runs both (order alternating), so drifting machine load hits both.

    python -m bench.compare_pytorch --artifacts art-fp32/ [art-int8/ ...] --shots 1 5 --out cmp.json

Needs torch and sam2 (the export extra); outside runtime/, which stays torch-free.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fssam2_export.models import build_model
from fssam2_export.reference import reference_episode
from runtime import FewShotSegmenter, OrtBackend, load_manifest
from runtime.bench import PhaseRecorder, environment, synthetic_input
from runtime.fidelity import iou as mask_iou

SCHEMA = "fssam2-compare-pytorch/1"
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
    if m.model.random_init:
        loaded = build_model(m.model.name, random_init=True, seed=m.model.seed, image_size=m.preprocess.image_size)
    else:
        loaded = build_model(m.model.name, checkpoint=m.model.checkpoint, image_size=m.preprocess.image_size)
    return loaded.model.eval()


def compare(artifacts: Path, shots: list[int], episodes: int, warmup: int, input_size: tuple[int, int], threads: int | None,
            model: torch.nn.Module, clock: TorchClock, progress) -> dict:
    """All K for one artifacts directory; medians in ms and runtime/PyTorch ratios. `clock` is attached to `model`."""
    rec = PhaseRecorder()
    seg = FewShotSegmenter(artifacts, backend=OrtBackend("cpu", intra_op_threads=threads), on_timing=rec)
    w, h = input_size
    images = [synthetic_input(w, h, seed) for seed in range(max(shots) + 1)]
    query = images[-1][0]
    out = {"artifacts": str(artifacts), "precision": seg.manifest.precision, "image_size": seg.manifest.preprocess.image_size,
           "model": seg.manifest.model.name, "by_shots": []}
    for k in shots:
        supports = images[:k]
        rt = {"support": [], "query": [], "modules": {}}
        pt = {"support": [], "query": [], "forward": [], "modules": {}}
        iou = None
        for i in range(warmup + episodes):
            keep = i >= warmup
            for side in (("runtime", "torch") if i % 2 == 0 else ("torch", "runtime")):
                if side == "runtime":
                    rec.phase = None
                    seg.reset()
                    t0 = time.perf_counter()
                    for image, mask in supports:
                        seg.add_support(image, mask)
                    t1 = time.perf_counter()
                    rec.phase = "query"
                    result = seg.segment(query)
                    t2 = time.perf_counter()
                    q = rec.take("query")
                    if keep:
                        rt["support"].append((t1 - t0) * 1e3)
                        rt["query"].append((t2 - t1) * 1e3)
                        for name, v in q.items():
                            rt["modules"].setdefault(name, []).extend(v)
                else:
                    clock.reset(k)
                    t0 = time.perf_counter()
                    ref = reference_episode(model, supports, query)
                    t1 = time.perf_counter()
                    if keep:
                        pt["forward"].append((t1 - t0) * 1e3)
                        pt["support"].append((clock.support_end - t0) * 1e3)
                        pt["query"].append((t1 - clock.support_end) * 1e3)
                        for name, v in clock.calls.items():
                            pt["modules"].setdefault(name, []).append(v[-1] if name == "image_encoder" else sum(v))
            iou = mask_iou(result.mask, ref.mask)
            progress.update()
        r_sup, r_q, p_sup, p_q, p_fwd = (_median(x) for x in (rt["support"], rt["query"], pt["support"], pt["query"], pt["forward"]))
        rt_modules = {m: _median(v) for m, v in rt["modules"].items()}
        pt_modules = {m: _median(v) for m, v in pt["modules"].items()}  # query phase per module (image encoder: the query's call, the last)
        out["by_shots"].append({
            "shots": k,
            "runtime_ms": {"support_phase": r_sup, "query_cached": r_q, "episode": r_sup + r_q, "query_modules": rt_modules},
            "pytorch_ms": {"support_phase": p_sup, "query_phase": p_q, "forward": p_fwd, "modules": pt_modules},
            "ratios": {  # runtime / PyTorch; < 1 = the runtime is faster
                "query_cached_vs_forward": r_q / p_fwd,
                "support_phase": r_sup / p_sup,
                "query_phase": r_q / p_q,
                "episode_vs_forward": (r_sup + r_q) / p_fwd,
                **{f"module:{m}": rt_modules[m] / pt_modules[m] for m in pt_modules if m in rt_modules and m != "memory_encoder"},
            },
            "support_cache_speedup": (r_sup + r_q) / r_q,  # re-encoding K supports per query vs reusing them
            "mask_iou_runtime_vs_pytorch": iou,
        })
    return out


def format_table(report: dict) -> str:
    lines = [f"{'artifacts':<28}{'K':>3}{'query(cached)':>15}{'PT forward':>12}{'ratio':>8}{'support':>10}{'query':>8}"
             f"{'cache x':>9}{'IoU':>7}   ratios: runtime/PyTorch, medians in ms"]
    for run in report["runs"]:
        for k in run["by_shots"]:
            r, p, x = k["runtime_ms"], k["pytorch_ms"], k["ratios"]
            lines.append(f"{Path(run['artifacts']).name + ' ' + run['precision']:<28}{k['shots']:>3}{r['query_cached']:>15.0f}"
                         f"{p['forward']:>12.0f}{x['query_cached_vs_forward']:>8.2f}{x['support_phase']:>10.2f}{x['query_phase']:>8.2f}"
                         f"{k['support_cache_speedup']:>9.2f}{k['mask_iou_runtime_vs_pytorch']:>7.3f}")
            lines.append("    per module (query): " + ", ".join(f"{m.split(':')[1]} {v:.2f}" for m, v in x.items() if m.startswith("module:")))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compare_pytorch", description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", nargs="+", required=True, help="artifacts directories (e.g. FP32 and INT8 of one model)")
    p.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    p.add_argument("--episodes", type=int, default=10, help="timed rounds per K (each: one runtime episode, one PyTorch forward)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--input-size", default="1024x768", help="WxH of the synthetic images")
    p.add_argument("--threads", type=int, help="threads for both ONNX Runtime and torch (default: each library's own)")
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
    with tqdm(total=len(args.artifacts) * len(shots) * (args.warmup + args.episodes), unit="round", disable=args.quiet, file=sys.stderr) as bar:
        for a in map(Path, args.artifacts):
            manifest = load_manifest(a, verify_files=False)
            m = manifest.model
            key = (m.name, m.checkpoint_sha256, m.seed, manifest.preprocess.image_size)
            if key not in models:  # FP32 and INT8 artifacts of one model share the PyTorch reference
                model, clock = torch_model(a), TorchClock(shots[0])
                clock.attach(model)
                models[key] = (model, clock)
            runs.append(compare(a, shots, args.episodes, args.warmup, (w, h), args.threads, *models[key], bar))
    report = {
        "schema": SCHEMA,
        "settings": {"shots": shots, "episodes": args.episodes, "warmup": args.warmup, "input_size": [w, h], "threads": args.threads,
                     "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
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
