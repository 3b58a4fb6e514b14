"""Fidelity of reduced-precision artifacts against FP32 artifacts of the same model (torch-free).

`compare_artifacts(candidate, reference, episodes)` runs both artifact sets over the same K-shot
episodes and measures

- per graph: every output of the candidate graph on the *reference's* recorded feeds (so each graph is
  judged in isolation): cosine similarity, Pearson correlation (cosine after subtracting the mean) and
  relative max error (max |a - b| / max |b|);
- end to end: the query logits in the query's own size (cosine, Pearson, relative max error) and the
  mask IoU; episodes whose reference mask is empty or full are counted as degenerate and left out of
  the IoU (an IoU of two full masks says nothing).

`GateThresholds` turns a report into pass/fail: mean mask IoU over non-degenerate episodes and the
minimum logits Pearson correlation over all episodes. `synthetic_episodes` makes seeded episodes
(textured polygons on textured backgrounds, numpy + Pillow) for calibration and checks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .backends import Backend, Graph, OrtBackend
from .errors import FidelityError, InputError
from .manifest import GRAPH_NAMES, GraphSpec, Manifest, load_manifest
from .segmenter import FewShotSegmenter

# Seed streams: calibration and the gate draw episodes from different streams of the same seed.
CALIBRATION_STREAM, CHECK_STREAM = 0, 1


@dataclass(frozen=True)
class Episode:
    supports: list[tuple[np.ndarray, np.ndarray]]  # (RGB uint8 (H, W, 3), bool mask (H, W)) per shot
    query: np.ndarray


def _sample(rng: np.random.Generator, h: int, w: int, color: np.ndarray, sides: int) -> tuple[np.ndarray, np.ndarray]:
    coarse = rng.uniform(0, 255, size=(max(h // 32, 2), max(w // 32, 2), 3)).astype(np.uint8)
    bg = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), np.float32)
    bg += rng.normal(0, 12, size=(h, w, 3))
    cy, cx, r = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, rng.uniform(0.15, 0.3) * min(h, w)
    angles = np.sort(rng.uniform(0, 2 * np.pi, sides))
    radii = r * rng.uniform(0.7, 1.0, sides)
    poly = Image.new("L", (w, h), 0)
    ImageDraw.Draw(poly).polygon([(float(cx + q * np.cos(a)), float(cy + q * np.sin(a))) for a, q in zip(angles, radii)], fill=255)
    mask = np.asarray(poly) > 0
    yy, xx = np.mgrid[0:h, 0:w]
    texture = color + 25 * (np.sin(xx / 4.0) * np.cos(yy / 4.0))[..., None]
    bg[mask] = texture[mask]
    return np.clip(bg, 0, 255).astype(np.uint8), mask


def synthetic_episodes(count: int, seed: int, shots: tuple[int, int], size: int, stream: int = CHECK_STREAM) -> list[Episode]:
    """`count` episodes with K drawn uniformly from `shots` = (min, max) inclusive; images of varied
    sizes around `size`. Episode i depends only on (stream, seed, i)."""
    lo, hi = shots
    if not 1 <= lo <= hi:
        raise InputError(f"shots range must satisfy 1 <= min <= max, got {shots}")
    episodes = []
    for i in range(count):
        rng = np.random.default_rng([stream, seed, i])
        k = int(rng.integers(lo, hi + 1))
        color, sides = rng.uniform(40, 215, 3), int(rng.integers(3, 9))
        dims = [tuple(int(v) for v in rng.integers(size * 3 // 4, size * 5 // 4 + 1, 2)) for _ in range(k + 1)]
        samples = [_sample(rng, h, w, color, sides) for h, w in dims]
        episodes.append(Episode(samples[:k], samples[k][0]))
    return episodes


def run_episode(seg: FewShotSegmenter, episode: Episode):
    return seg.segment(episode.query, seg.encode_supports(episode.supports))


class RecordingBackend:
    """Wraps a backend; keeps every loaded graph and, while `recording`, each call's feeds per graph."""

    def __init__(self, inner: Backend, graph_of: Mapping[str, str]):
        self.inner, self.name, self.provider = inner, f"recording-{inner.name}", inner.provider
        self._graph_of = graph_of  # file name -> graph name
        self.graphs: dict[str, Graph] = {}
        self.calls: dict[str, list[dict[str, np.ndarray]]] = {n: [] for n in GRAPH_NAMES}
        self.results: dict[str, list[dict[str, np.ndarray]]] = {n: [] for n in GRAPH_NAMES}
        self.recording = True

    def clear(self) -> None:
        for store in (self.calls, self.results):
            for calls in store.values():
                calls.clear()

    def load(self, path: Path, spec: GraphSpec) -> Graph:
        name = self._graph_of[path.name]
        graph = self.inner.load(path, spec)
        self.graphs[name] = graph
        backend = self

        class Recorded:
            def run(self, feeds):
                out = graph.run(feeds)
                if backend.recording:
                    backend.calls[name].append(dict(feeds))
                    backend.results[name].append(out)
                return out

            def __getattr__(self, attr):  # the rest is the wrapped graph's: providers, cache, support_copies
                return getattr(graph, attr)

        return Recorded()


class StandardGraphs:
    """Wraps a backend under a provider name no flavour lists, so every graph runs from its standard ONNX."""

    provider = "standard"

    def __init__(self, inner: Backend):
        self.inner, self.name = inner, f"{inner.name}-standard"

    def load(self, path: Path, spec: GraphSpec) -> Graph:
        return self.inner.load(path, spec)


def recording_segmenter(artifacts: str | Path, backend: Backend | None = None) -> tuple[FewShotSegmenter, RecordingBackend]:
    manifest = load_manifest(artifacts, verify_files=False)  # FewShotSegmenter verifies the files below
    files = {f.file: name for name, g in manifest.graphs.items() for f in [g.standard, *g.flavours]}
    rec = RecordingBackend(backend or OrtBackend("cpu"), files)
    return FewShotSegmenter(artifacts, backend=rec), rec


# ---- metrics ---------------------------------------------------------------------------------------

def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    na, nb = np.sqrt(np.sum(a * a)), np.sqrt(np.sum(b * b))  # elementwise sums: no BLAS threads competing with ORT
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.sum(a * b) / (na * nb))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine after subtracting each array's mean: blind to the large constant offsets of random-init logits."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return cosine(a - a.mean(), b - b.mean())


def rel_max_error(a: np.ndarray, ref: np.ndarray) -> float:
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    err = float(np.abs(a.astype(np.float64) - ref.astype(np.float64)).max()) if ref.size else 0.0
    return err / scale if scale else err


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@dataclass
class OutputFidelity:
    cosine: float = 1.0  # minimum over calls
    pearson: float = 1.0  # minimum over calls
    rel_max_error: float = 0.0  # maximum over calls

    def update(self, got: np.ndarray, ref: np.ndarray) -> None:
        self.cosine = min(self.cosine, cosine(got, ref))
        self.pearson = min(self.pearson, pearson(got, ref))
        self.rel_max_error = max(self.rel_max_error, rel_max_error(got, ref))


@dataclass(frozen=True)
class EpisodeFidelity:
    shots: int
    logits_cosine: float
    logits_pearson: float
    logits_rel_max_error: float
    mask_iou: float
    reference_foreground: float  # fraction of the reference mask that is foreground
    degenerate: bool  # reference mask empty or full


@dataclass(frozen=True)
class GateThresholds:
    mask_iou: float  # mean over non-degenerate episodes
    logits_pearson: float  # minimum over episodes

    @classmethod
    def for_precision(cls, precision: str) -> "GateThresholds":
        """Issue defaults: FP16 IoU >= 0.99, correlation >= 0.999; INT8 (and mixed) IoU >= 0.97, >= 0.99.
        BF16 (OpenVINO on AMX; 8 mantissa bits): IoU >= 0.98, correlation >= 0.999, stricter than INT8; measured
        at 256² (random-init tiny, 16 episodes): IoU mean 0.99, logits correlation min 0.9998."""
        return {"fp16": cls(0.99, 0.999), "fp32": cls(0.99, 0.999), "bf16": cls(0.98, 0.999)}.get(precision, cls(0.97, 0.99))


@dataclass
class FidelityReport:
    candidate: str
    reference: str
    provider: str
    graph_files: dict[str, str]  # the file each graph ran from (the provider's flavour or the standard graph)
    graphs: dict[str, dict[str, OutputFidelity]]
    episodes: list[EpisodeFidelity]
    thresholds: GateThresholds | None = None
    diagnosis: dict = field(default_factory=dict)  # filled by the exporter: worst node of the worst graph
    graph_precisions: dict[str, str] = field(default_factory=dict)  # what each graph ran in (the backend's, else the manifest's)

    @property
    def mean_iou(self) -> float | None:
        ious = [e.mask_iou for e in self.episodes if not e.degenerate]
        return float(np.mean(ious)) if ious else None

    @property
    def min_pearson(self) -> float:
        return min(e.logits_pearson for e in self.episodes)

    @property
    def worst_graph(self) -> tuple[str, str, float]:
        """(graph, output, Pearson) of the least faithful graph output."""
        return min(((g, o, f.pearson) for g, outs in self.graphs.items() for o, f in outs.items()), key=lambda t: t[2])

    def failures(self) -> list[str]:
        if self.thresholds is None:
            return []
        t, problems = self.thresholds, []
        if self.mean_iou is not None and self.mean_iou < t.mask_iou:
            problems.append(f"mean mask IoU {self.mean_iou:.4f} < {t.mask_iou}")
        if self.min_pearson < t.logits_pearson:
            problems.append(f"min logits correlation {self.min_pearson:.5f} < {t.logits_pearson}")
        return problems

    @property
    def passed(self) -> bool:
        return not self.failures()

    def summary(self) -> dict:
        """The figures the manifest records."""
        g, o, p = self.worst_graph
        return {
            "provider": self.provider,
            "episodes": len(self.episodes),
            "degenerate_episodes": sum(e.degenerate for e in self.episodes),
            "mean_mask_iou": self.mean_iou,
            "min_mask_iou": min((e.mask_iou for e in self.episodes if not e.degenerate), default=None),
            "min_logits_pearson": self.min_pearson,
            "min_logits_cosine": min(e.logits_cosine for e in self.episodes),
            "max_logits_rel_error": max(e.logits_rel_max_error for e in self.episodes),
            "graphs": {name: {out: asdict(f) for out, f in outs.items()} for name, outs in self.graphs.items()},
            "graph_files": self.graph_files,
            "graph_precisions": self.graph_precisions,
            "worst": {"graph": g, "output": o, "pearson": p, **self.diagnosis},
            "thresholds": asdict(self.thresholds) if self.thresholds else None,
            "passed": self.passed if self.thresholds else None,
        }

    def to_dict(self) -> dict:
        """The summary plus the per-episode figures: what `fidelity.json` / `fssam2 check --json` hold."""
        return self.summary() | {"candidate": self.candidate, "reference": self.reference,
                                 "per_episode": [asdict(e) for e in self.episodes]}

    def table(self) -> str:
        lines = [f"fidelity of {self.candidate} vs {self.reference} (provider {self.provider}, {len(self.episodes)} episodes)",
                 f"{'graph':<17} {'output':<20} {'cosine':>9} {'pearson':>9} {'rel.max.err':>12}  file"]
        for name, outs in self.graphs.items():
            for out, f in outs.items():
                ran = f" ({self.graph_precisions[name]})" if name in self.graph_precisions else ""
                lines.append(f"{name:<17} {out:<20} {f.cosine:9.5f} {f.pearson:9.5f} {f.rel_max_error:12.3e}  {self.graph_files[name]}{ran}")
        s = self.summary()
        iou_text = "n/a (all reference masks degenerate)" if s["mean_mask_iou"] is None else f"{s['mean_mask_iou']:.4f} (min {s['min_mask_iou']:.4f})"
        lines += [f"end to end: mask IoU mean {iou_text}, logits pearson min {s['min_logits_pearson']:.5f}, "
                  f"cosine min {s['min_logits_cosine']:.5f}, rel.max.err max {s['max_logits_rel_error']:.3e}; "
                  f"{s['degenerate_episodes']} degenerate reference masks"]
        if self.thresholds:
            verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.failures())
            g, o, p = self.worst_graph
            where = f"; worst graph {g} ({o}, pearson {p:.5f})"
            if self.diagnosis.get("node"):
                where += f", first diverging node {self.diagnosis['node']} ({self.diagnosis.get('op_type')})"
            lines.append(f"gate (IoU >= {self.thresholds.mask_iou}, correlation >= {self.thresholds.logits_pearson}): {verdict}{where}")
        return "\n".join(lines)


def check_comparable(candidate: Manifest, reference: Manifest) -> None:
    """Raise FidelityError unless both manifests describe the same model with the same graph I/O."""
    problems = []
    if (candidate.model.name, candidate.model.config) != (reference.model.name, reference.model.config):
        problems.append(f"model {candidate.model.name} vs {reference.model.name}")
    if candidate.preprocess != reference.preprocess:
        problems.append(f"preprocessing/image size {candidate.preprocess.image_size} vs {reference.preprocess.image_size}")
    if candidate.episode != reference.episode:
        problems.append("episode constants differ")
    for name in GRAPH_NAMES:
        c, r = candidate.graphs[name], reference.graphs[name]
        if (c.inputs, c.outputs) != (r.inputs, r.outputs):
            problems.append(f"{name} graph I/O differs")
    if problems:
        raise FidelityError("artifacts are not the same model and cannot be compared: " + "; ".join(problems))


def compare_artifacts(
    candidate: str | Path,
    reference: str | Path,
    episodes: Sequence[Episode],
    backend: Backend | None = None,
    reference_backend: Backend | None = None,
    thresholds: GateThresholds | None = None,
    progress: bool = False,
) -> FidelityReport:
    """Run `candidate` and `reference` artifacts over `episodes` and measure how far the candidate drifts."""
    # contents only: each file's sha256 is verified once, when its segmenter loads it
    check_comparable(load_manifest(candidate, verify_files=False), load_manifest(reference, verify_files=False))
    ref_seg, ref_rec = recording_segmenter(reference, reference_backend)
    cand_seg, cand_rec = recording_segmenter(candidate, backend)
    cand_rec.recording = False
    graphs = {n: {o.name: OutputFidelity() for o in ref_seg.manifest.graphs[n].outputs} for n in GRAPH_NAMES}
    results = []
    for ep in _progress(episodes, progress):
        ref_rec.clear()
        ref = run_episode(ref_seg, ep)
        got = run_episode(cand_seg, ep)
        for name, calls in ref_rec.calls.items():
            for feeds, want in zip(calls, ref_rec.results[name]):
                have = cand_rec.graphs[name].run(feeds)
                for out, stats in graphs[name].items():  # np.asarray: GPU backends may leave outputs on the device
                    stats.update(np.asarray(have[out]), np.asarray(want[out]))
        fg = float(ref.mask.mean())
        results.append(EpisodeFidelity(
            shots=len(ep.supports),
            logits_cosine=cosine(got.logits, ref.logits),
            logits_pearson=pearson(got.logits, ref.logits),
            logits_rel_max_error=rel_max_error(got.logits, ref.logits),
            mask_iou=iou(got.mask, ref.mask),
            reference_foreground=fg,
            degenerate=not 0.0 < fg < 1.0,
        ))
    files = {n: g.artifact_for(cand_rec.provider).file for n, g in cand_seg.manifest.graphs.items()}
    precisions = {n: getattr(cand_rec.graphs[n], "precision", g.precision) for n, g in cand_seg.manifest.graphs.items()}
    return FidelityReport(str(candidate), str(reference), cand_rec.provider, files, graphs, results, thresholds,
                          graph_precisions=precisions)


def _progress(items, enabled: bool):
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is not a runtime dependency
        return items
    return tqdm(items, desc="fidelity", unit="episode")
