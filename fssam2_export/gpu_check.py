"""Provider parity and per-module latency against the CPU runtime: what `scripts/gpu_check.sh` runs.

For each provider (default: `cpu` as the latency baseline, then every GPU provider this machine offers: ORT `cuda` /
`tensorrt`, and `tensorrt-native` when TensorRT is importable and the manifest lists engines) and each K, a synthetic
episode is segmented by the provider and by the CPU runtime (on `--reference` artifacts, default the same ones). The
episode is the first of a few seeded ones whose CPU reference mask is judgeable (1-99 % foreground: an IoU of two empty
masks says nothing). The result is judged like the fidelity gate (`runtime.tools.fidelity`: mask IoU >= --min-iou, logits
correlation, sign agreement of every pixel, relative RMS error, non-finite values, iou_score / object score error and
the object-presence decision, thresholds by the artifacts' precision) and printed with per-module latency (mean over
--repeats queries after one warm-up; the memory encoder's from the K supports). Exit status 1 if a provider failed a
check or errored, no judgeable reference episode was found, or (by default) no GPU provider was found.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from runtime import FewShotSegmenter, ModuleTiming, RuntimeOptions, Segmentation, load_manifest
from runtime.cli import add_runtime_options, options_from_args
from runtime.tools.fidelity import (
    JUDGEABLE_FOREGROUND,
    FidelityError,
    FidelityReport,
    GateThresholds,
    check_comparable,
    episode_fidelity,
)
from runtime.tools.synthetic import write_episode

MODULES = ("image_encoder", "memory_encoder", "memory_attention", "mask_decoder")
EPISODE_TRIES = 8  # seeded episodes tried for a judgeable reference mask


@dataclass
class Check:
    provider: str
    shots: int
    iou: float = float("nan")
    sign_agreement: float = float("nan")  # fraction of query pixels whose decision (logit > 0) agrees
    rel_error: float = float("nan")  # RMS(logit difference) / RMS(reference logits)
    max_abs_logits: float = float("nan")  # largest low-res logit difference
    failures: list[str] = field(default_factory=list)  # the gate's, empty when it passed
    ms: dict[str, float] = field(default_factory=dict)  # per module, mean per call
    error: str | None = None


def available_providers(artifacts: Path) -> list[str]:
    """GPU providers this machine can run for these artifacts."""
    import onnxruntime as ort

    found = ort.get_available_providers()
    out = [p for p, ep in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")) if ep in found]
    try:
        import tensorrt  # noqa: F401

        if any(
            f.kind == "tensorrt-engine"
            for g in load_manifest(artifacts, verify_files=False).graphs.values()
            for f in g.flavours
        ):
            out.append("tensorrt-native")
    except ImportError:
        pass
    return out


def machine_summary() -> list[str]:
    """GPU, driver and (on Jetson) power mode lines to print with every figure."""
    lines = []
    for cmd, label in (
        (["nvidia-smi", "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"], "gpu"),
        (["nvpmodel", "-q"], "nvpmodel"),
        (["jetson_clocks", "--show"], "jetson_clocks"),
    ):
        if shutil.which(cmd[0]) is None:
            continue
        proc = subprocess.run(cmd, capture_output=True, text=True)
        text = " | ".join(s.strip() for s in (proc.stdout or proc.stderr).splitlines()[:3] if s.strip())
        lines.append(
            f"{label}: {text or 'no output'}"
            + ("" if proc.returncode == 0 else f" (exit {proc.returncode}; needs sudo?)")
        )
    return lines or ["gpu: nvidia-smi not found"]


def _episode(seg: FewShotSegmenter, supports, query) -> Segmentation:
    return seg.segment(query, seg.encode_supports(supports))


def _judgeable_episode(reference: FewShotSegmenter, shots: int, episode_dir: Path):
    """The first of EPISODE_TRIES seeded episodes whose reference mask is judgeable, with the reference's result."""
    lo, hi = JUDGEABLE_FOREGROUND
    for seed in range(shots, shots + EPISODE_TRIES):
        episode = write_episode(episode_dir / f"k{shots}-s{seed}", shots=shots, seed=seed)
        ref = _episode(reference, episode.supports, episode.query)
        if lo <= ref.mask.mean() <= hi:
            return episode, ref
    raise ValueError(
        f"no judgeable reference mask ({lo:.0%}..{hi:.0%} foreground) in {EPISODE_TRIES} episodes: parity would be vacuous"
    )


def check(
    artifacts: Path,
    options: RuntimeOptions,
    shots: int,
    repeats: int,
    episode_dir: Path,
    reference: FewShotSegmenter,
    thresholds: GateThresholds,
) -> Check:
    provider = options.provider
    result = Check(provider, shots)
    try:
        episode, ref = _judgeable_episode(reference, shots, episode_dir)
        seg = FewShotSegmenter(artifacts, replace(options, max_shots=max(8, shots)), profile=True)
        _episode(seg, episode.supports[:1], episode.query)  # warm-up (ORT's TensorRT EP builds its engines here)
        seg.clear_timings()
        supports = seg.encode_supports(episode.supports)
        got = seg.segment(episode.query, supports)
        memory_encoder = seg.timings()["memory_encoder"]
        seg.clear_timings()
        for _ in range(repeats):
            seg.segment(episode.query, supports)
        timings: dict[str, ModuleTiming] = seg.timings() | {"memory_encoder": memory_encoder}
        result.ms = {m: timings[m].mean_ms for m in MODULES}
        judged = episode_fidelity(got, ref, shots)
        result.iou, result.sign_agreement, result.rel_error = (
            judged.mask_iou,
            judged.sign_agreement,
            judged.logits_rel_error,
        )
        result.max_abs_logits = float(np.nan_to_num(np.abs(got.low_res_logits - ref.low_res_logits), nan=np.inf).max())
        report = FidelityReport(provider, "cpu", provider, {}, {}, [judged], thresholds)
        result.failures = report.verdict().reasons
    except Exception as e:  # report every provider, whatever failed
        result.error = f"{type(e).__name__}: {e}"
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fssam2-gpu-check", description=__doc__)
    p.add_argument("--artifacts", required=True, type=Path)
    p.add_argument("--reference", type=Path, help="artifacts the CPU reference runs (same model; default --artifacts)")
    p.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    p.add_argument("--repeats", type=int, default=10, help="timed queries per provider and K")
    p.add_argument("--min-iou", type=float, default=0.98, help="parity gate on the mask IoU vs the CPU reference")
    add_runtime_options(p, sweep=True)
    p.set_defaults(providers=None)  # cpu, then every GPU provider available here
    args = p.parse_args(argv)
    manifest = load_manifest(args.artifacts)
    reference_dir = args.reference or args.artifacts
    try:
        check_comparable(manifest, load_manifest(reference_dir))
    except FidelityError as e:
        print(f"fssam2-gpu-check: error: {e}", file=sys.stderr)
        return 2
    thresholds = GateThresholds.for_precisions(g.precision for g in manifest.graphs.values()).with_overrides(
        mask_iou=args.min_iou, min_judgeable=1
    )
    gpu = available_providers(args.artifacts)
    providers = args.providers or ["cpu", *gpu]  # cpu: the latency baseline
    for line in machine_summary():
        print(line)
    print(
        f"artifacts: {manifest.model.name} @ {manifest.preprocess.image_size}px, precision {manifest.precision}; "
        f"reference: the CPU runtime on {reference_dir}; providers: {', '.join(providers) or 'none available'}"
    )
    if not args.providers and not gpu:
        print("note: no GPU provider is available here (onnxruntime-gpu's CUDA/TensorRT EPs, or TensorRT + engines)")
    header = (
        f"{'provider':<16}{'K':>3}{'IoU':>8}{'sign.agr':>10}{'rel.err':>10}{'max|dlogit|':>13}"
        + "".join(f"{m:>18}" for m in MODULES)
        + "   (ms/call)"
    )
    print(header)
    failed = False
    reference = FewShotSegmenter(reference_dir)
    with tempfile.TemporaryDirectory() as tmp:
        for provider in providers:
            for shots in args.shots:
                options = options_from_args(args, provider)
                r = check(args.artifacts, options, shots, args.repeats, Path(tmp), reference, thresholds)
                if r.error:
                    print(f"{provider:<16}{shots:>3}  FAILED: {r.error}")
                else:
                    print(
                        f"{provider:<16}{shots:>3}{r.iou:>8.4f}{r.sign_agreement:>10.5f}{r.rel_error:>10.2e}{r.max_abs_logits:>13.2e}"
                        + "".join(f"{r.ms[m]:>18.2f}" for m in MODULES)
                        + (f"   PARITY FAIL: {'; '.join(r.failures)}" if r.failures else "")
                    )
                failed |= bool(r.error or r.failures)
    failed |= not args.providers and not gpu
    print("gpu check: " + ("FAILED" if failed else "all checks passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
