"""Provider parity and per-module latency against the FP32 CPU runtime: what `scripts/gpu_check.sh` runs.

For each provider (default: `cpu` as the latency baseline, then every GPU provider this machine offers: ORT `cuda` / `tensorrt`, and
`tensorrt-native` when TensorRT is importable and the manifest lists engines) and each K, a
synthetic episode is segmented by the provider and by the CPU runtime; the mask IoU and the
largest low-res logit difference are printed with per-module latency (mean over --repeats queries
after one warm-up; the memory encoder's from the K supports). Exit status 1 if a provider failed,
its IoU fell below --min-iou, or (by default) no GPU provider was found.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime import FewShotSegmenter, load_manifest
from runtime.fidelity import iou
from runtime.segmenter import ModuleTiming

from .synthetic import write_episode

MODULES = ("image_encoder", "memory_encoder", "memory_attention", "mask_decoder")


@dataclass
class Check:
    provider: str
    shots: int
    iou: float = float("nan")
    max_abs_logits: float = float("nan")
    ms: dict[str, float] = field(default_factory=dict)  # per module, mean per call
    error: str | None = None


def available_providers(artifacts: Path) -> list[str]:
    """GPU providers this machine can run for these artifacts."""
    import onnxruntime as ort

    found = ort.get_available_providers()
    out = [p for p, ep in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")) if ep in found]
    try:
        import tensorrt  # noqa: F401

        if any(f.kind == "tensorrt-engine" for g in load_manifest(artifacts, verify_files=False).graphs.values() for f in g.flavours):
            out.append("tensorrt-native")
    except ImportError:
        pass
    return out


def machine_summary() -> list[str]:
    """GPU, driver and (on Jetson) power mode lines to print with every figure."""
    lines = []
    for cmd, label in ((["nvidia-smi", "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"], "gpu"),
                       (["nvpmodel", "-q"], "nvpmodel"), (["jetson_clocks", "--show"], "jetson_clocks")):
        if shutil.which(cmd[0]) is None:
            continue
        proc = subprocess.run(cmd, capture_output=True, text=True)
        text = " | ".join(s.strip() for s in (proc.stdout or proc.stderr).splitlines()[:3] if s.strip())
        lines.append(f"{label}: {text or 'no output'}" + ("" if proc.returncode == 0 else f" (exit {proc.returncode}; needs sudo?)"))
    return lines or ["gpu: nvidia-smi not found"]


def _episode(seg: FewShotSegmenter, supports, query):
    for image, mask in supports:
        seg.add_support(image, mask)
    return seg.segment(query)


def check(artifacts: Path, provider: str, shots: int, repeats: int, episode_dir: Path) -> Check:
    result = Check(provider, shots)
    episode = write_episode(episode_dir / f"k{shots}", shots=shots, seed=shots)
    try:
        seg = FewShotSegmenter(artifacts, provider, max_shots=max(8, shots), profile=True)
        ref = _episode(FewShotSegmenter(artifacts, "cpu"), episode.supports, episode.query)
        _episode(seg, episode.supports[:1], episode.query)  # warm-up (ORT's TensorRT EP builds its engines here)
        seg.reset()
        seg.clear_timings()
        got = _episode(seg, episode.supports, episode.query)
        memory_encoder = seg.timings()["memory_encoder"]
        seg.clear_timings()
        for _ in range(repeats):
            seg.segment(episode.query)
        timings: dict[str, ModuleTiming] = seg.timings() | {"memory_encoder": memory_encoder}
        result.ms = {m: timings[m].mean_ms for m in MODULES}
        result.iou = iou(got.mask, ref.mask)
        result.max_abs_logits = float(np.abs(got.low_res_logits - ref.low_res_logits).max())
    except Exception as e:  # report every provider, whatever failed
        result.error = f"{type(e).__name__}: {e}"
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fssam2-gpu-check", description=__doc__)
    p.add_argument("--artifacts", required=True, type=Path)
    p.add_argument("--providers", nargs="+", help="default: every GPU provider available here")
    p.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    p.add_argument("--repeats", type=int, default=10, help="timed queries per provider and K")
    p.add_argument("--min-iou", type=float, default=0.98, help="parity gate on the mask IoU vs the CPU runtime")
    args = p.parse_args(argv)
    manifest = load_manifest(args.artifacts)
    gpu = available_providers(args.artifacts)
    providers = args.providers or ["cpu", *gpu]  # cpu: the latency baseline (its IoU is 1 by construction)
    for line in machine_summary():
        print(line)
    print(f"artifacts: {manifest.model.name} @ {manifest.preprocess.image_size}px, precision {manifest.precision}; "
          f"reference: the CPU runtime on the same graphs; providers: {', '.join(providers) or 'none available'}")
    if not args.providers and not gpu:
        print("note: no GPU provider is available here (onnxruntime-gpu's CUDA/TensorRT EPs, or TensorRT + engines)")
    header = f"{'provider':<16}{'K':>3}{'IoU':>8}{'max|dlogit|':>13}" + "".join(f"{m:>18}" for m in MODULES) + "   (ms/call)"
    print(header)
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for provider in providers:
            for shots in args.shots:
                r = check(args.artifacts, provider, shots, args.repeats, Path(tmp))
                if r.error:
                    print(f"{provider:<16}{shots:>3}  FAILED: {r.error}")
                else:
                    print(f"{provider:<16}{shots:>3}{r.iou:>8.4f}{r.max_abs_logits:>13.2e}" + "".join(f"{r.ms[m]:>18.2f}" for m in MODULES)
                          + ("" if r.iou >= args.min_iou else f"   PARITY FAIL (IoU < {args.min_iou})"))
                failed |= bool(r.error) or not r.iou >= args.min_iou
    failed |= not args.providers and not gpu
    print("gpu check: " + ("FAILED" if failed else "all checks passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
