"""TensorRT engines for an artifacts directory, built with polygraphy and recorded as manifest flavours.

One engine per graph, from the graph's standard ONNX (whatever precision it carries: FP32, FP16 with
FP32 islands, QDQ INT8), strongly typed, so the engine's precision is the graph's (no builder
precision flags: TensorRT 11 has none). The memory length gets an optimisation profile for
K = 1..max_shots supports (opt at opt_shots); every other input is static. The timing cache
(`timing.cache` in the artifacts directory) is reused across builds. Before anything is written, each
engine is compared with its ONNX graph (polygraphy's TrtRunner vs OnnxrtRunner on CPU, on the inputs of a
synthetic episode): per output, the largest and the 99.9th-percentile |engine - onnx| over all inputs, divided
by the ONNX output's spread (its standard deviation over all inputs; max |onnx| where that is 0, e.g. one
scalar), must stay within `TOLERANCES` (the percentile only for outputs of >= 1000 values over all inputs: below
that it is the max itself), and every value must be finite. Then the engines run end to end
through the runtime (`tensorrt-native`) against the ONNX graphs on ORT CPU over gate episodes, judged by the
ONNX fidelity gate (`runtime.tools.fidelity`). A failed comparison fails the build and leaves the directory as it was.

Engines are tied to the TensorRT version and GPU architecture: build them on the target machine,
`python -m fssam2_export.engines --artifacts art/` (or `fssam2-export ... --engine tensorrt`).
TensorRT and polygraphy are imported only when a build starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from runtime.backends.ort import OrtBackend
from runtime.backends.tensorrt import ENGINE_KIND, PROVIDER, DeviceInfo
from runtime.engine.files import write_atomic
from runtime.engine.manifest import GRAPH_NAMES, MANIFEST_NAME, Flavour, GraphSpec, Manifest, load_manifest
from runtime.engine.profiles import (
    DEFAULT_MAX_SHOTS,
    DEFAULT_OPT_SHOTS,
    MEMORY_AXIS,
    DimRange,
    InputProfile,
    input_profiles,
    memory_dim_ranges,
)
from runtime.engine.versions import dist_version
from runtime.tools.fidelity import FidelityReport, GateThresholds, ProviderFiles, compare_artifacts, recording_segmenter
from runtime.tools.synthetic import CHECK_STREAM, synthetic_episodes, write_episode

TIMING_CACHE = "timing.cache"
DEFAULT_WORKSPACE_GB = 4.0
ENGINE_STAGING = ".engines.staging"
QUANTILE = 0.999


@dataclass(frozen=True)
class EngineTolerance:
    """Per output, |engine - onnx| over all comparison inputs, in units of the ONNX output's spread."""

    max: float  # largest error
    quantile: float  # 99.9th percentile of the error


# Written, not run on a GPU: set from the precisions' own rounding (FP32 without TF32; FP16 ~1e-3 per op, ORT CPU
# partly emulating it; INT8 one quantisation step ~ range / 127 on either side), not from measured engines.
TOLERANCES = {
    "fp32": EngineTolerance(1e-3, 1e-4),
    "fp16": EngineTolerance(5e-2, 1e-2),
    "int8": EngineTolerance(0.25, 5e-2),
}


class EngineBuildError(RuntimeError):
    """An engine could not be built, or differs from its ONNX graph beyond the tolerance."""


@dataclass(frozen=True)
class EngineSettings:
    max_shots: int = DEFAULT_MAX_SHOTS
    opt_shots: int | None = None  # default: min(5, max_shots)
    workspace_gb: float = DEFAULT_WORKSPACE_GB
    gate_episodes: int = 8  # end-to-end episodes, engines vs ONNX

    def __post_init__(self):
        opt = min(DEFAULT_OPT_SHOTS, self.max_shots) if self.opt_shots is None else self.opt_shots
        if self.max_shots < 1 or not 1 <= opt <= self.max_shots:
            raise ValueError(f"need 1 <= opt shots <= max shots, got opt {opt}, max {self.max_shots}")
        if self.workspace_gb <= 0:
            raise ValueError(f"workspace must be > 0 GB, got {self.workspace_gb}")
        if self.gate_episodes < 1:
            raise ValueError(f"the end-to-end check needs at least one episode, got {self.gate_episodes}")

    @property
    def workspace_bytes(self) -> int:
        return int(self.workspace_gb * (1 << 30))


@dataclass(frozen=True)
class EngineReport:
    manifest: Manifest  # as written, engines recorded
    flavours: dict[str, Flavour]
    seconds: dict[str, float]  # build + comparison per graph


def require_tensorrt():
    """The tensorrt module, or ImportError saying how to get it."""
    try:
        import tensorrt
    except ImportError as e:
        raise ImportError(
            f"building engines needs TensorRT ({e}): desktop: pip install 'fssam2[trt]' "
            "(NVIDIA's wheels) or a TensorRT tarball; Jetson: JetPack's python3-libnvinfer"
        ) from e
    return tensorrt


def current_device(device_id: int = 0) -> DeviceInfo:
    """The GPU engines are built for (cuda-python); EngineBuildError if there is none."""
    from runtime.backends.tensorrt import CudaError, CudaRuntime

    try:
        return CudaRuntime(device_id).device()
    except ImportError as e:
        raise ImportError(f"building engines needs cuda-python ({e}): pip install cuda-python") from e
    except CudaError as e:
        raise EngineBuildError(f"no usable CUDA device {device_id} to build engines on: {e}") from e


def strongly_typed_flag(trt) -> bool | None:
    """polygraphy's `strongly_typed`: True on TensorRT 10 (its STRONGLY_TYPED network flag), None where every
    network is strongly typed and the flag is gone (TensorRT 11)."""
    return True if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED") else None


def build_engine(onnx_path: Path, profiles: dict[str, InputProfile], timing_cache: Path, workspace_bytes: int) -> bytes:
    """Serialized engine for one ONNX graph (precision from the graph; timing cache loaded and saved)."""
    trt = require_tensorrt()
    from polygraphy.backend.trt import CreateConfig, Profile, engine_from_network, network_from_onnx_path

    profile = Profile()
    for name, p in profiles.items():
        profile.add(name, p.min, p.opt, p.max)
    network = network_from_onnx_path(str(onnx_path), strongly_typed=strongly_typed_flag(trt))
    config = CreateConfig(
        profiles=[profile] if profiles else None,
        load_timing_cache=str(timing_cache),
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: workspace_bytes},
    )
    engine = engine_from_network(network, config, save_timing_cache=str(timing_cache))
    return bytes(engine.serialize())


def spread(values: list[np.ndarray]) -> float:
    """Scale of an output over all inputs: its standard deviation, max |value| where that is 0, else 1."""
    flat = np.concatenate([np.asarray(v, np.float64).ravel() for v in values])
    flat = flat[np.isfinite(flat)]
    for scale in (float(flat.std()) if flat.size else 0.0, float(np.abs(flat).max()) if flat.size else 0.0):
        if scale > 0:
            return scale
    return 1.0


def engine_errors(engine_runs: list[dict], onnx_runs: list[dict], tol: EngineTolerance) -> tuple[list[str], dict]:
    """(failures, figures) of engine outputs against the ONNX graph's on the same inputs."""
    failures, figures = [], {}
    for name in onnx_runs[0].keys():
        want = [np.asarray(r[name], np.float64) for r in onnx_runs]
        got = [np.asarray(r[name], np.float64) for r in engine_runs]
        scale = spread(want)
        diff = np.concatenate([np.abs(g - w).ravel() for g, w in zip(got, want)])
        finite = np.concatenate([np.isfinite(g).ravel() | ~np.isfinite(w).ravel() for g, w in zip(got, want)])
        worst = float(diff.max()) / scale if finite.all() else float("inf")
        quantile = float(np.quantile(np.where(finite, diff, np.inf), QUANTILE)) / scale
        figures[name] = {
            "spread": scale,
            "max_over_spread": worst,
            "q999_over_spread": quantile,
            "non_finite": int((~finite).sum()),
        }
        if not finite.all():
            failures.append(f"{name}: {int((~finite).sum())} non-finite values where the ONNX graph's are finite")
        elif worst > tol.max or (
            diff.size * (1 - QUANTILE) >= 1 and quantile > tol.quantile
        ):  # small outputs: max only
            failures.append(
                f"{name}: max |diff| {worst:.3g} x spread (<= {tol.max}), 99.9th percentile {quantile:.3g} x spread "
                f"(<= {tol.quantile}); spread {scale:.3g}"
            )
    return failures, figures


def compare_engine(
    blob: bytes, onnx_path: Path, feeds: list[dict[str, np.ndarray]], precision: str
) -> tuple[list[str], dict]:
    """Run the engine (TrtRunner) and the ONNX graph (OnnxrtRunner, CPU) on `feeds`; (failures, figures)."""
    from polygraphy import comparator
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.logger import G_LOGGER

    tol = TOLERANCES[precision]
    runners = [TrtRunner(EngineFromBytes(blob)), OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["cpu"]))]
    with G_LOGGER.verbosity(G_LOGGER.WARNING):
        results = comparator.Comparator.run(runners, data_loader=feeds)
    (_, engine_runs), (_, onnx_runs) = list(results)
    failures, outputs = engine_errors(list(engine_runs), list(onnx_runs), tol)
    return failures, {"inputs": len(feeds), "tolerance": dataclasses.asdict(tol), "outputs": outputs}


def comparison_feeds(root: Path, dims: dict[str, DimRange], seed: int = 0) -> dict[str, list[dict[str, np.ndarray]]]:
    """Inputs for every graph from a synthetic 2-shot episode run on CPU; memory attention at K = 1, 2 and
    the profile's largest K (the supports repeated), as far as the profile reaches."""
    manifest = load_manifest(root, verify_files=False)  # the segmenter checks the files it runs
    seg, recorder = recording_segmenter(root)  # ORT CPU
    with tempfile.TemporaryDirectory() as tmp:
        episode = write_episode(tmp, shots=2, seed=seed)
        seg.segment(episode.query, seg.encode_supports(episode.supports))
    feeds = recorder.calls
    k2, memory = feeds["memory_attention"][0], dims[MEMORY_AXIS]
    dynamic = [t.name for t in manifest.graphs["memory_attention"].inputs if MEMORY_AXIS in t.shape]
    feeds["memory_attention"] = [
        k2 | {n: np.resize(k2[n], (1, k * memory.min, k2[n].shape[2])) for n in dynamic}
        for k in sorted({1, 2, memory.max // memory.min})
        if k * memory.min <= memory.max
    ]
    return dict(feeds)


def build_engines(
    artifacts_dir: str | Path,
    settings: EngineSettings = EngineSettings(),
    *,
    progress: bool = True,
    device: DeviceInfo | None = None,
    runtime_backend=None,
) -> EngineReport:
    """Build, compare and record a TensorRT engine for each graph of `artifacts_dir` (replacing earlier
    engines). Nothing in the directory changes unless every engine passed its comparison and the engines
    together passed the end-to-end gate (run by `runtime_backend`, default `TensorRTBackend()`)."""
    root = Path(artifacts_dir)
    manifest = load_manifest(root)
    trt = require_tensorrt()
    device = device or current_device()
    dims = memory_dim_ranges(manifest.episode, settings.max_shots, settings.opt_shots)
    feeds = comparison_feeds(root, dims)
    timing_cache = root / f".{TIMING_CACHE}.partial"  # replaces the directory's timing cache on success only
    flavours, seconds, partial = {}, {}, [timing_cache]
    try:
        if (root / TIMING_CACHE).is_file():
            shutil.copyfile(root / TIMING_CACHE, timing_cache)
        for name in tqdm(GRAPH_NAMES, desc="tensorrt", unit="engine", disable=not progress):
            spec, t0 = manifest.graphs[name], time.perf_counter()
            profiles = input_profiles(spec, dims)
            try:
                blob = build_engine(root / spec.file, profiles, timing_cache, settings.workspace_bytes)
            except Exception as e:  # polygraphy/TensorRT report failures as their own exception types
                raise EngineBuildError(f"{name}: TensorRT could not build an engine from {spec.file}: {e}") from e
            failures, figures = compare_engine(blob, root / spec.file, feeds[name], spec.precision)
            if failures:
                raise EngineBuildError(
                    f"{name}: the engine differs from {spec.file} beyond the {spec.precision} tolerance: "
                    f"{'; '.join(failures)}; nothing was written"
                )
            partial.append(root / f".{name}.engine.partial")
            partial[-1].write_bytes(blob)
            flavours[name] = _flavour(name, spec, blob, trt.__version__, device, profiles, settings, dims, figures)
            seconds[name] = time.perf_counter() - t0
            worst = max(o["max_over_spread"] for o in figures["outputs"].values())
            tqdm.write(
                f"{name}: engine {len(blob) / 2**20:.1f} MiB ({spec.precision}) in {seconds[name]:.1f}s; "
                f"max |engine - onnx| {worst:.2e} x spread over {figures['inputs']} inputs"
            )
        manifest = _with_engines(manifest, flavours, trt.__version__)
        gate = _end_to_end(root, manifest, partial[1:], settings, runtime_backend)
        for name, path in zip(flavours, partial[1:]):
            os.replace(path, root / flavours[name].file)
        if timing_cache.is_file():
            os.replace(timing_cache, root / TIMING_CACHE)
    except BaseException:
        for path in partial:
            path.unlink(missing_ok=True)
        raise
    manifest = dataclasses.replace(manifest, fidelity=(manifest.fidelity or {}) | {"tensorrt-native": gate.summary()})
    write_manifest(root, manifest)
    return EngineReport(manifest, flavours, seconds)


def _end_to_end(
    root: Path, manifest: Manifest, engines: list[Path], settings: EngineSettings, backend
) -> FidelityReport:
    """The ONNX fidelity gate for the new engines (`tensorrt-native`) against the standard ONNX graphs on ORT CPU,
    run from a staging directory (links to the graphs, the engines, the new manifest); EngineBuildError if it fails."""
    staging = root / ENGINE_STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for spec in manifest.graphs.values():
            os.symlink((root / spec.file).resolve(), staging / spec.file)
        for name, path in zip(GRAPH_NAMES, engines):
            os.symlink(path.resolve(), staging / f"{name}.engine")
        write_manifest(staging, manifest)
        shots = (1, min(4, settings.max_shots))
        episodes = synthetic_episodes(settings.gate_episodes, 0, shots, manifest.preprocess.image_size, CHECK_STREAM)
        report = compare_artifacts(
            staging,
            root,
            episodes,
            backend=backend or _native_backend(),
            reference_backend=ProviderFiles(OrtBackend("cpu")),
            thresholds=GateThresholds.for_precisions(g.precision for g in manifest.graphs.values()),
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.candidate, report.reference = "tensorrt engines", "onnx (ORT CPU)"
    if not report.passed:
        raise EngineBuildError(
            f"the engines fail the end-to-end fidelity gate against the ONNX graphs; nothing was written:\n"
            f"{report.table()}"
        )
    return report


def _native_backend():
    from runtime.backends.tensorrt import TensorRTBackend

    return TensorRTBackend()


def _flavour(
    name: str,
    spec: GraphSpec,
    blob: bytes,
    version: str,
    device: DeviceInfo,
    profiles: dict[str, InputProfile],
    settings: EngineSettings,
    dims: dict[str, DimRange],
    figures: dict,
) -> Flavour:
    memory = dims[MEMORY_AXIS]
    return Flavour(
        kind=ENGINE_KIND,
        file=f"{name}.engine",
        sha256=hashlib.sha256(blob).hexdigest(),
        providers=[PROVIDER],
        precision=spec.precision,
        source_sha256=spec.sha256,
        meta={
            "tensorrt": version,
            "gpu": device.name,
            "compute_capability": device.compute_capability,
            "profiles": {n: {"min": list(p.min), "opt": list(p.opt), "max": list(p.max)} for n, p in profiles.items()},
            "shots": {
                "min": 1,
                "opt": memory.opt // memory.min,
                "max": memory.max // memory.min,
                "tokens_per_support": memory.min,
            },
            "builder": {
                "strongly_typed": True,
                "precision_flags": None,
                "tf32": False,
                "workspace_bytes": settings.workspace_bytes,
                "timing_cache": TIMING_CACHE,
                "polygraphy": (dist_version("polygraphy") or "not installed"),
            },
            "comparison": figures,
        },
    )


def _with_engines(manifest: Manifest, flavours: dict[str, Flavour], version: str) -> Manifest:
    graphs = {
        name: dataclasses.replace(g, flavours=[f for f in g.flavours if f.kind != ENGINE_KIND] + [flavours[name]])
        for name, g in manifest.graphs.items()
    }
    tools = manifest.tools | {"tensorrt": version, "polygraphy": (dist_version("polygraphy") or "not installed")}
    return dataclasses.replace(manifest, graphs=graphs, tools=tools)


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Replace `root/manifest.json` atomically."""
    write_atomic(root / MANIFEST_NAME, manifest.to_json().encode())


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-shots", type=int, default=DEFAULT_MAX_SHOTS, help="largest K the engines' memory profile covers"
    )
    p.add_argument("--opt-shots", type=int, help="K the profile is tuned for (default: min(5, max shots))")
    p.add_argument("--workspace-gb", type=float, default=DEFAULT_WORKSPACE_GB, help="TensorRT builder workspace limit")


def settings_from(args: argparse.Namespace) -> EngineSettings:
    return EngineSettings(args.max_shots, args.opt_shots, args.workspace_gb)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="fssam2-engines",
        description="Build TensorRT engines for an fssam2 artifacts directory "
        "(on the machine that will run them) and record them in its manifest.",
    )
    p.add_argument("--artifacts", required=True, help="directory written by fssam2-export")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_engine_arguments(p)
    args = p.parse_args(argv)
    try:
        report = build_engines(args.artifacts, settings_from(args), progress=not args.quiet)
    except (ValueError, ImportError, RuntimeError) as e:
        print(f"fssam2-engines: error: {e}", file=sys.stderr)
        return 2
    total = sum(report.seconds.values())
    some = next(iter(report.flavours.values())).meta
    print(
        f"built {len(report.flavours)} engines in {total:.1f}s (TensorRT {some['tensorrt']}, {some['gpu']}, "
        f"cc {some['compute_capability']}, K 1..{some['shots']['max']}) into {args.artifacts}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
