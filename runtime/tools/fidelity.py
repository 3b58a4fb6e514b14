"""Fidelity of reduced-precision artifacts against FP32 artifacts of the same model (torch-free).

`compare_candidates(candidates, reference, episodes)` runs the reference once per K-shot episode and judges
every candidate on it:

- per graph: every output of the candidate graph on the *reference's* recorded feeds (so each graph is
  judged in isolation): non-finite values, cosine, Pearson correlation (n/a for single-element outputs),
  relative max error and max absolute error;
- end to end (`episode_fidelity`): the query logits (non-finite pixels, Pearson, relative RMS error, sign
  agreement of every pixel), the mask IoU, and the scalar heads (`iou_score`, `object_score_logits`: error
  and object-presence decision). Reference masks outside JUDGEABLE_FOREGROUND are degenerate and left out
  of the IoU (an IoU of two full masks says nothing).

`GateThresholds` + `FidelityReport.verdict()` turn a report into pass / fail / refused (too few judgeable
episodes). The episodes judged are `runtime.tools.synthetic.synthetic_episodes` or a benchmark's (calibration).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..backends.ort import OrtBackend
from ..engine.backend import Backend, DelegatingGraph, Graph
from ..engine.errors import FidelityError
from ..engine.manifest import GRAPH_NAMES, GraphSpec, Manifest, load_manifest
from ..engine.progress import progress as progress_bar
from ..engine.results import Segmentation
from ..engine.segmenter import FewShotSegmenter
from .synthetic import Episode


def run_episode(seg: FewShotSegmenter, episode: Episode):
    return seg.segment(episode.query, seg.encode_supports(episode.supports))


class RecordingBackend:
    """Wraps a backend; keeps every loaded graph and, while `recording`, each call's feeds per graph."""

    def __init__(self, inner: Backend):
        self.inner, self.name, self.provider = inner, f"recording-{inner.name}", inner.provider
        self.graphs: dict[str, Graph] = {}
        self.calls: dict[str, list[dict[str, np.ndarray]]] = {n: [] for n in GRAPH_NAMES}
        self.results: dict[str, list[dict[str, np.ndarray]]] = {n: [] for n in GRAPH_NAMES}
        self.recording = True

    def clear(self) -> None:
        for store in (self.calls, self.results):
            for calls in store.values():
                calls.clear()

    def precision_for(self, graph: str, spec: GraphSpec) -> str:
        return self.inner.precision_for(graph, spec)

    def load(self, path: Path, spec: GraphSpec, graph: str) -> Graph:
        self.graphs[graph] = self.inner.load(path, spec, graph)
        return _Recorded(self.graphs[graph], self, graph)


class _Recorded(DelegatingGraph):
    def __init__(self, inner: Graph, backend: RecordingBackend, graph: str):
        super().__init__(inner)
        self._backend, self._graph = backend, graph

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.inner.run(feeds)
        if self._backend.recording:
            self._backend.calls[self._graph].append(dict(feeds))
            self._backend.results[self._graph].append(out)
        return out


class ProviderFiles:
    """Runs on `inner` (ORT CPU) the graph files the runtime picks for `provider`, so a gate judges exactly those.
    The default, "standard" (a provider name no flavour lists), runs every graph from its standard ONNX."""

    def __init__(self, inner: Backend, provider: str = "standard"):
        self.inner, self.provider = inner, provider
        self.name = f"{inner.name}-standard" if provider == "standard" else f"{inner.name}-as-{provider}"

    def precision_for(self, graph: str, spec: GraphSpec) -> str:
        return self.inner.precision_for(graph, spec)

    def load(self, path: Path, spec: GraphSpec, graph: str) -> Graph:
        return self.inner.load(path, spec, graph)


def recording_segmenter(
    artifacts: str | Path, backend: Backend | None = None
) -> tuple[FewShotSegmenter, RecordingBackend]:
    rec = RecordingBackend(backend or OrtBackend("cpu"))
    return FewShotSegmenter(artifacts, backend=rec), rec


# ---- metrics (NaN-safe: computed over the elements finite in both arrays; non-finite ones are counted apart) --------

JUDGEABLE_FOREGROUND = (0.01, 0.99)  # a reference mask is judgeable when its foreground fraction lies in this range


def nonfinite(a: np.ndarray, ref: np.ndarray) -> int:
    """Elements of `a` that are NaN / inf where `ref` is finite."""
    return int(np.count_nonzero(~np.isfinite(a) & np.isfinite(ref)))


def _finite_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    keep = np.isfinite(a) & np.isfinite(b)
    return (a, b) if keep.all() else (a[keep], b[keep])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _finite_pair(a, b)
    na, nb = np.sqrt(np.sum(a * a)), np.sqrt(np.sum(b * b))  # elementwise sums: no BLAS threads competing with ORT
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.sum(a * b) / (na * nb))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine after subtracting each array's mean: blind to offsets (the sign agreement and relative error see them)."""
    a, b = _finite_pair(a, b)
    return cosine(a - a.mean(), b - b.mean()) if a.size else 0.0


def rel_max_error(a: np.ndarray, ref: np.ndarray) -> float:
    """max |a - ref| / max |ref| (absolute error where the reference is all zero)."""
    a, ref = _finite_pair(a, ref)
    if not ref.size:
        return 0.0
    scale, err = float(np.abs(ref).max()), float(np.abs(a - ref).max())
    return err / scale if scale else err


def rel_rms_error(a: np.ndarray, ref: np.ndarray) -> float:
    """RMS(a - ref) / RMS(ref): sees constant offsets and scale changes that correlation ignores."""
    a, ref = _finite_pair(a, ref)
    if not ref.size:
        return 0.0
    scale, err = float(np.sqrt(np.mean(ref * ref))), float(np.sqrt(np.mean((a - ref) ** 2)))
    return err / scale if scale else err


def sign_agreement(a: np.ndarray, ref: np.ndarray) -> float:
    """Fraction of elements whose decision (value > 0) agrees; a non-finite candidate value never agrees."""
    a, ref = np.asarray(a).ravel(), np.asarray(ref).ravel()
    agree = (a > 0) == (ref > 0)
    return float(np.mean(agree & np.isfinite(a))) if a.size else 1.0


def scalar_error(a: float, ref: float) -> float:
    """|a - ref| / (1 + |ref|): absolute error for small values, relative error for large ones; inf if `a` is not finite."""
    return abs(a - ref) / (1.0 + abs(ref)) if np.isfinite(a) else float("inf")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@dataclass
class OutputFidelity:
    """One graph output over all judged calls. Correlation (and its n/a) is for outputs of more than one element."""

    calls: int = 0
    nonfinite: int = 0  # candidate values that are NaN / inf where the reference is finite, summed over calls
    cosine: float = 1.0  # minimum over calls
    pearson: float | None = 1.0  # minimum over calls; None for single-element outputs (scalar heads)
    rel_max_error: float = 0.0  # maximum over calls
    max_abs_error: float = 0.0  # maximum over calls

    def update(self, got: np.ndarray, ref: np.ndarray) -> None:
        self.calls += 1
        self.nonfinite += nonfinite(got, ref)
        self.cosine = min(self.cosine, cosine(got, ref))
        self.pearson = (
            None if ref.size == 1 else min(self.pearson if self.pearson is not None else 1.0, pearson(got, ref))
        )
        self.rel_max_error = max(self.rel_max_error, rel_max_error(got, ref))
        a, b = _finite_pair(got, ref)
        self.max_abs_error = max(self.max_abs_error, float(np.abs(a - b).max()) if a.size else 0.0)


@dataclass(frozen=True)
class EpisodeFidelity:
    shots: int
    logits_nonfinite: int  # query logits that are NaN / inf where the reference is finite
    logits_cosine: float
    logits_pearson: float
    logits_rel_error: float  # RMS(candidate - reference) / RMS(reference)
    logits_rel_max_error: float
    sign_agreement: float  # fraction of query pixels whose mask decision (logit > 0) agrees
    mask_iou: float
    reference_foreground: float  # fraction of the reference mask that is foreground
    degenerate: bool  # reference mask (nearly) empty or full: outside JUDGEABLE_FOREGROUND, left out of the IoU
    score_error: float  # scalar_error of the predicted IoU (`iou_score`)
    object_score_error: float  # scalar_error of the object-presence logit (`object_score_logits`)
    object_agrees: bool  # object presence (object score > 0) decided alike


def episode_fidelity(got: Segmentation, ref: Segmentation, shots: int) -> EpisodeFidelity:
    """Judge one episode's end-to-end result against the reference's."""
    fg = float(ref.mask.mean())
    return EpisodeFidelity(
        shots=shots,
        logits_nonfinite=nonfinite(got.logits, ref.logits),
        logits_cosine=cosine(got.logits, ref.logits),
        logits_pearson=pearson(got.logits, ref.logits),
        logits_rel_error=rel_rms_error(got.logits, ref.logits),
        logits_rel_max_error=rel_max_error(got.logits, ref.logits),
        sign_agreement=sign_agreement(got.logits, ref.logits),
        mask_iou=iou(got.mask, ref.mask),
        reference_foreground=fg,
        degenerate=not JUDGEABLE_FOREGROUND[0] <= fg <= JUDGEABLE_FOREGROUND[1],
        score_error=scalar_error(got.score, ref.score),
        object_score_error=scalar_error(got.object_score, ref.object_score),
        object_agrees=bool((got.object_score > 0) == (ref.object_score > 0)),
    )


@dataclass(frozen=True)
class GateThresholds:
    """What the gate requires; every measure is over all episodes unless said otherwise."""

    mask_iou: float  # mean mask IoU over the judgeable episodes, at least
    logits_pearson: float  # query-logits Pearson correlation in every episode, at least
    sign_agreement: float  # fraction of query pixels whose decision agrees, in every episode, at least
    logits_rel_error: (
        float  # RMS(candidate - reference) / RMS(reference) of the query logits, in every episode, at most
    )
    scalar_error: float  # |a - b| / (1 + |b|) of iou_score and object_score_logits, in every episode, at most
    min_judgeable: int = 2  # episodes with a judgeable reference mask below which the gate refuses to judge

    @classmethod
    def for_precision(cls, precision: str) -> GateThresholds:
        """FP16 (and FP32): IoU >= 0.99, correlation >= 0.999, agreement >= 0.995, rel. error <= 0.05, scalars <= 0.02;
        BF16 (OpenVINO on AMX; 8 mantissa bits): IoU >= 0.98, correlation >= 0.999, agreement >= 0.99, rel. error <= 0.1,
        scalars <= 0.05, between FP16 and INT8 (measured at 256², random-init tiny, 16 episodes: IoU mean 0.99, logits
        correlation min 0.9997); INT8 (and mixed): IoU >= 0.97, correlation >= 0.99, agreement >= 0.98, rel. error
        <= 0.15, scalars <= 0.1."""
        return {
            "fp16": cls(0.99, 0.999, 0.995, 0.05, 0.02),
            "fp32": cls(0.99, 0.999, 0.995, 0.05, 0.02),
            "bf16": cls(0.98, 0.999, 0.99, 0.1, 0.05),
        }.get(precision, cls(0.97, 0.99, 0.98, 0.15, 0.1))

    @classmethod
    def for_precisions(cls, precisions: Iterable[str]) -> GateThresholds:
        """The gate for a set of graphs: the loosest precision among them decides (INT8, or any precision other than
        fp16 / fp32 / bf16, then BF16, else FP16)."""
        found = set(precisions)
        if found - {"fp16", "fp32", "bf16"}:
            return cls.for_precision("int8")
        return cls.for_precision("bf16" if "bf16" in found else "fp16")

    def with_overrides(self, **values) -> GateThresholds:
        """These thresholds with the values that are not None replaced (command-line overrides)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})


@dataclass(frozen=True)
class Verdict:
    status: str  # "pass", "fail" (a broken conversion: exit 1) or "refused" (cannot judge: exit 2)
    reasons: list[str]  # the failures, or why the gate refused

    @property
    def exit_code(self) -> int:
        return {"pass": 0, "fail": 1, "refused": 2}[self.status]


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
    graph_precisions: dict[str, str] = field(default_factory=dict)  # what each graph ran in (`Graph.precision`)
    planned_episodes: int | None = None  # episodes it was to run; more than len(episodes) when the gate stopped early
    islands: dict = field(default_factory=dict)  # filled by the BF16 export: FP32 islands found, in how many rounds

    def add_call(self, graph: str, have: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> None:
        """Judge one graph call of the candidate on the reference's feeds."""
        for out, stats in self.graphs[graph].items():
            stats.update(np.asarray(have[out]), np.asarray(want[out]))

    def add_nonfinite(self, graph: str, have: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> None:
        """Count the non-finite values of one of the candidate's own calls (the reference's call at the same place
        in the episode tells where FP32 is finite), without judging it in isolation."""
        for out, stats in self.graphs[graph].items():
            stats.nonfinite += nonfinite(np.asarray(have[out]), np.asarray(want[out]))

    @property
    def judgeable(self) -> list[EpisodeFidelity]:
        return [e for e in self.episodes if not e.degenerate]

    @property
    def mean_iou(self) -> float | None:
        ious = [e.mask_iou for e in self.judgeable]
        return float(np.mean(ious)) if ious else None

    @property
    def min_pearson(self) -> float:
        return min((e.logits_pearson for e in self.episodes), default=1.0)

    @property
    def nonfinite_outputs(self) -> list[tuple[str, str, int]]:
        """(graph, output, count) of every graph output with non-finite candidate values."""
        return [(g, o, f.nonfinite) for g, outs in self.graphs.items() for o, f in outs.items() if f.nonfinite]

    @property
    def worst_graph(self) -> tuple[str, str, float]:
        """(graph, output, Pearson) of the least faithful graph output: one with non-finite values first (Pearson -1)."""
        if bad := self.nonfinite_outputs:
            return bad[0][0], bad[0][1], -1.0
        return min(
            ((g, o, f.pearson) for g, outs in self.graphs.items() for o, f in outs.items() if f.pearson is not None),
            key=lambda t: t[2],
        )

    def failures(self, remaining: int = 0) -> list[str]:
        """What already fails the thresholds; with `remaining` episodes still to run, only what they cannot repair."""
        if self.thresholds is None or not self.episodes:
            return []
        t, e, problems = self.thresholds, self.episodes, []
        problems += [
            f"non-finite values in {g} {o} ({n} values where FP32 is finite)" for g, o, n in self.nonfinite_outputs
        ]
        if n := sum(x.logits_nonfinite for x in e):
            problems.append(f"non-finite query logits ({n} pixels where FP32 is finite)")
        ious = [x.mask_iou for x in self.judgeable]
        if ious and (sum(ious) + remaining) / (len(ious) + remaining) < t.mask_iou:
            problems.append(f"mean mask IoU {np.mean(ious):.4f} < {t.mask_iou}")
        checks = [
            ("min logits correlation", min(x.logits_pearson for x in e), ">=", t.logits_pearson),
            ("min sign agreement", min(x.sign_agreement for x in e), ">=", t.sign_agreement),
            ("max logits rel. RMS error", max(x.logits_rel_error for x in e), "<=", t.logits_rel_error),
            ("max iou_score error", max(x.score_error for x in e), "<=", t.scalar_error),
            ("max object_score error", max(x.object_score_error for x in e), "<=", t.scalar_error),
        ]
        problems += [
            f"{name} {value:.5g} (needs {op} {limit})"
            for name, value, op, limit in checks
            if not (value >= limit if op == ">=" else value <= limit)
        ]
        if flips := sum(not x.object_agrees for x in e):
            problems.append(f"object presence decided differently in {flips} of {len(e)} episodes")
        return problems

    def verdict(self) -> Verdict:
        """pass / fail / refused; a failure wins over a refusal (a broken conversion is broken whatever the masks)."""
        if problems := self.failures():
            return Verdict("fail", problems)
        n, need = len(self.judgeable), self.thresholds.min_judgeable if self.thresholds else 0
        if n < need:
            lo, hi = JUDGEABLE_FOREGROUND
            return Verdict(
                "refused",
                [
                    f"only {n} of {len(self.episodes)} reference masks are judgeable ({lo:.0%}..{hi:.0%} foreground), the gate "
                    f"needs {need}: the FP32 model predicts (nearly) empty or full masks on these episodes, so agreement says "
                    "little. Run more episodes (fssam2 check --episodes, fssam2-export --gate-episodes) or real episodes "
                    "(fssam2-export --calib-dataset pascal|coco|fss --calib-data ROOT), ideally with trained weights"
                ],
            )
        return Verdict("pass", [])

    @property
    def passed(self) -> bool:
        return self.verdict().status == "pass"

    def summary(self) -> dict:
        """The figures the manifest records."""
        g, o, p = self.worst_graph
        v = self.verdict() if self.thresholds else None
        e = self.episodes
        return {
            "provider": self.provider,
            "episodes": len(e),
            "planned_episodes": self.planned_episodes or len(e),
            "degenerate_episodes": sum(x.degenerate for x in e),
            "mean_mask_iou": self.mean_iou,
            "min_mask_iou": min((x.mask_iou for x in self.judgeable), default=None),
            "min_logits_pearson": self.min_pearson,
            "min_logits_cosine": min((x.logits_cosine for x in e), default=1.0),
            "min_sign_agreement": min((x.sign_agreement for x in e), default=1.0),
            "max_logits_rel_error": max((x.logits_rel_error for x in e), default=0.0),
            "max_logits_rel_max_error": max((x.logits_rel_max_error for x in e), default=0.0),
            "max_score_error": max((x.score_error for x in e), default=0.0),
            "max_object_score_error": max((x.object_score_error for x in e), default=0.0),
            "object_disagreements": sum(not x.object_agrees for x in e),
            "nonfinite_logits": sum(x.logits_nonfinite for x in e),
            "graphs": {name: {out: asdict(f) for out, f in outs.items()} for name, outs in self.graphs.items()},
            "graph_files": self.graph_files,
            "graph_precisions": self.graph_precisions,
            "worst": {"graph": g, "output": o, "pearson": p, **self.diagnosis},
            "fp32_islands": self.islands,
            "thresholds": asdict(self.thresholds) if self.thresholds else None,
            "verdict": v.status if v else None,
            "reasons": v.reasons if v else [],
            "passed": v.status == "pass" if v else None,
        }

    def to_dict(self) -> dict:
        """The summary plus the per-episode figures: what `fidelity.json` / `fssam2 check --json` hold."""
        return self.summary() | {
            "candidate": self.candidate,
            "reference": self.reference,
            "per_episode": [asdict(e) for e in self.episodes],
        }

    def table(self) -> str:
        ran = f"{len(self.episodes)} episodes" + (
            f" of {self.planned_episodes}, stopped early: the failure was certain"
            if self.planned_episodes and self.planned_episodes > len(self.episodes)
            else ""
        )
        lines = [
            f"fidelity of {self.candidate} vs {self.reference} (provider {self.provider}, {ran})",
            f"{'graph':<17} {'output':<20} {'cosine':>9} {'pearson':>9} {'rel.max.err':>12} {'max.abs.err':>12} {'non-finite':>10} {'calls':>5}  file",
        ]
        for name, outs in self.graphs.items():
            for out, f in outs.items():
                p = "n/a" if f.pearson is None else f"{f.pearson:.5f}"
                ran = f" ({self.graph_precisions[name]})" if name in self.graph_precisions else ""
                lines.append(
                    f"{name:<17} {out:<20} {f.cosine:9.5f} {p:>9} {f.rel_max_error:12.3e} {f.max_abs_error:12.3e} "
                    f"{f.nonfinite:>10} {f.calls:>5}  {self.graph_files[name]}{ran}"
                )
        s = self.summary()
        iou_text = (
            "n/a (no judgeable reference mask)"
            if s["mean_mask_iou"] is None
            else f"{s['mean_mask_iou']:.4f} (min {s['min_mask_iou']:.4f})"
        )
        lines += [
            f"end to end: mask IoU mean {iou_text}; logits pearson min {s['min_logits_pearson']:.5f}, "
            f"sign agreement min {s['min_sign_agreement']:.5f}, rel. RMS error max {s['max_logits_rel_error']:.3e}, "
            f"non-finite {s['nonfinite_logits']}; iou_score error max {s['max_score_error']:.3e}, "
            f"object_score error max {s['max_object_score_error']:.3e}, object presence differs in "
            f"{s['object_disagreements']}; {s['degenerate_episodes']} degenerate reference masks"
        ]
        if self.thresholds:
            t, v = self.thresholds, self.verdict()
            verdict = {"pass": "PASS", "fail": "FAIL: ", "refused": "REFUSED (cannot judge): "}[v.status] + "; ".join(
                v.reasons
            )
            g, o, p = self.worst_graph
            where = (
                f"; worst graph {g} ({o}, "
                + ("non-finite values" if p == -1.0 and self.nonfinite_outputs else f"pearson {p:.5f}")
                + ")"
            )
            if self.diagnosis.get("node"):
                where += (
                    f", first diverging node {self.diagnosis['node']} ({self.diagnosis.get('op_type')}, "
                    f"pearson {self.diagnosis.get('pearson', float('nan')):.5f})"
                )
            if self.islands.get("rounds"):
                where += f"; FP32 islands after {self.islands['rounds']} rounds: {self.islands['fp32_nodes']}"
            lines.append(
                f"gate (IoU >= {t.mask_iou}, correlation >= {t.logits_pearson}, sign agreement >= {t.sign_agreement}, "
                f"rel. RMS error <= {t.logits_rel_error}, scalar error <= {t.scalar_error}, "
                f"judgeable episodes >= {t.min_judgeable}): {verdict}{where}"
            )
        return "\n".join(lines)


def check_comparable(candidate: Manifest, reference: Manifest) -> None:
    """Raise FidelityError unless both manifests describe the same model (and weights) with the same graph I/O."""
    problems = []
    if (candidate.model.name, candidate.model.config) != (reference.model.name, reference.model.config):
        problems.append(f"model {candidate.model.name} vs {reference.model.name}")
    if _weights(candidate) != _weights(reference):
        problems.append(f"weights {_weights(candidate)} vs {_weights(reference)}")
    if candidate.preprocess != reference.preprocess:
        problems.append(
            f"preprocessing/image size {candidate.preprocess.image_size} vs {reference.preprocess.image_size}"
        )
    if candidate.episode != reference.episode:
        problems.append("episode constants differ")
    for name in GRAPH_NAMES:
        c, r = candidate.graphs[name], reference.graphs[name]
        if (c.inputs, c.outputs) != (r.inputs, r.outputs):
            problems.append(f"{name} graph I/O differs")
    if problems:
        raise FidelityError("artifacts are not the same model and cannot be compared: " + "; ".join(problems))


def _weights(m: Manifest) -> str:
    return (
        f"random-init seed {m.model.seed}" if m.model.random_init else f"checkpoint sha256 {m.model.checkpoint_sha256}"
    )


# ---- running candidates against one reference ----------------------------------------------------------------------


def _same_feeds(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def compare_candidates(
    candidates: Mapping[str, tuple[str | Path, Backend | None]],
    reference: str | Path,
    episodes: Sequence[Episode],
    reference_backend: Backend | None = None,
    thresholds: GateThresholds | None = None,
    progress: bool = False,
    stop_early: bool = False,
    seconds: dict[str, float] | None = None,
    isolated_episodes: int | None = None,
) -> dict[str, FidelityReport]:
    """Judge each candidate (key -> (artifacts, backend)) against `reference` over `episodes`.

    The reference runs once per episode and its results serve every candidate: end to end, and per graph, where each
    candidate graph runs on the reference's recorded feeds (judged in isolation; a call whose feeds equal the
    candidate's own end-to-end call, e.g. the image encoder's, reuses that result). `isolated_episodes` limits the
    extra isolated runs to the first N episodes (the per-graph table, which diagnoses; the verdict is end to end);
    later episodes still count every graph output's non-finite values on the candidate's own calls. With
    `stop_early`, the run stops as soon as some candidate's failure is certain whatever the remaining episodes give.
    `seconds` (if given) collects the time spent on the reference and on each candidate."""
    ref_manifest = load_manifest(reference, verify_files=False)  # contents only: segmenters verify each file they load
    for path, _ in candidates.values():
        check_comparable(load_manifest(path, verify_files=False), ref_manifest)
    ref_seg, ref_rec = recording_segmenter(reference, reference_backend)
    runs = {key: recording_segmenter(path, backend) for key, (path, backend) in candidates.items()}
    reports = {
        key: FidelityReport(
            str(candidates[key][0]),
            str(reference),
            rec.provider,
            {n: g.artifact_for(rec.provider).file for n, g in seg.manifest.graphs.items()},
            {n: {o.name: OutputFidelity() for o in ref_seg.manifest.graphs[n].outputs} for n in GRAPH_NAMES},
            [],
            thresholds,
            planned_episodes=len(episodes),
            graph_precisions={n: rec.graphs[n].precision for n in seg.manifest.graphs},
        )
        for key, (seg, rec) in runs.items()
    }
    clock = seconds if seconds is not None else {}
    for i, ep in enumerate(progress_bar(episodes, desc="fidelity", unit="episode", enabled=progress)):
        t0 = time.perf_counter()
        ref_rec.clear()
        ref = run_episode(ref_seg, ep)
        clock["reference"] = clock.get("reference", 0.0) + time.perf_counter() - t0
        for key, (seg, rec) in runs.items():
            t0, report = time.perf_counter(), reports[key]
            rec.clear()
            got = run_episode(seg, ep)
            for name, calls in ref_rec.calls.items():
                own = list(zip(rec.calls[name], rec.results[name]))
                isolate = isolated_episodes is None or i < isolated_episodes
                for j, (feeds, want) in enumerate(zip(calls, ref_rec.results[name])):
                    if j < len(own) and _same_feeds(own[j][0], feeds):
                        report.add_call(name, own[j][1], want)
                    elif isolate:
                        report.add_call(name, rec.graphs[name].run(feeds), want)
                    elif j < len(own):
                        report.add_nonfinite(name, own[j][1], want)
            report.episodes.append(episode_fidelity(got, ref, len(ep.supports)))
            clock[key] = clock.get(key, 0.0) + time.perf_counter() - t0
        if stop_early and any(r.failures(remaining=len(episodes) - i - 1) for r in reports.values()):
            break
    return reports


def compare_artifacts(
    candidate: str | Path,
    reference: str | Path,
    episodes: Sequence[Episode],
    backend: Backend | None = None,
    reference_backend: Backend | None = None,
    thresholds: GateThresholds | None = None,
    progress: bool = False,
    stop_early: bool = False,
) -> FidelityReport:
    """Run `candidate` and `reference` artifacts over `episodes` and measure how far the candidate drifts."""
    return compare_candidates(
        {"candidate": (candidate, backend)}, reference, episodes, reference_backend, thresholds, progress, stop_early
    )["candidate"]
