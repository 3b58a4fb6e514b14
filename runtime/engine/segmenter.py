"""K-shot segmentation: the FS-SAM2 memory loop over the four exported graphs.

Supports are encoded once (image encoder -> memory encoder on the mask as logits) into a `SupportSet`,
an immutable value; a query runs the image encoder once, then memory attention over a set's tokens and
the mask decoder, per set (one class, or N classes with one image encoding).

Threading: one segmenter may be called from many threads at once, with the same or different sets;
each call's results are bit-identical to a serial call (openvino in BF16 excepted: docs/support-sets.md).
The segmenter holds no support state (a set is a value the caller keeps); its only mutable state is the
timing totals.

Timing is off unless asked for: `profile=True` keeps per-module totals (`timings()`), `on_timing`
receives every measurement as (name, milliseconds). Names: the graphs, "preprocess", "postprocess",
"verify:<graph>" (sha256 of the file it runs), "load:<graph>" (session creation), and the phases
"support" (one support encoded) and "query" (one `segment` call, all its classes), which contain the
module times measured inside them. With calls from several threads, `on_timing` is called from them.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np

from .backend import Backend, Graph, create_backend
from .errors import InputError, ManifestError
from .image import ImageLike, load_image, load_mask, postprocess_logits, preprocess_image, resize_mask
from .manifest import GRAPH_NAMES, GraphSpec, Manifest, load_manifest, verify_file
from .options import RuntimeOptions
from .results import MAX_CLASSES, MultiClassSegmentation, Segmentation, label_map
from .support_set import Fingerprint, SupportSet

TimingListener = Callable[[str, float], None]
_UNTIMED = nullcontext()


@dataclass(frozen=True)
class ModuleTiming:
    calls: int
    total_ms: float

    @property
    def mean_ms(self) -> float:
        return self.total_ms / self.calls if self.calls else 0.0


class FewShotSegmenter:
    """Few-shot segmenter over an fssam2 artifacts directory.

    >>> seg = FewShotSegmenter("artifacts/")          # RuntimeOptions(): ONNX Runtime on the CPU
    >>> seg = FewShotSegmenter("artifacts/", RuntimeOptions("openvino", threads=4))   # or provider="openvino"
    >>> cats = seg.encode_supports([(image, mask), (image2, mask2)])   # SupportSet, any K >= 1
    >>> result = seg.segment(query, cats)               # Segmentation in the query's own size
    >>> results = seg.segment(query, {"cat": cats, "dog": dogs})       # MultiClassSegmentation
    """

    def __init__(
        self,
        artifacts_dir: str | Path,
        options: RuntimeOptions | None = None,
        *,
        provider: str | None = None,
        backend: Backend | None = None,
        profile: bool = False,
        on_timing: TimingListener | None = None,
    ):
        """The graphs run as `options` say (default `RuntimeOptions()`: ONNX Runtime on the CPU); `provider="..."` is
        short for `RuntimeOptions(provider=...)`. Or hand in a `backend` you made (a wrapper, a fake, a remote one):
        then neither options nor a provider, which it would not use."""
        if backend is not None and (options is not None or provider is not None):
            raise InputError("give a backend or runtime options (or a provider), not both: the backend is already made")
        if options is not None and provider is not None:
            raise InputError(f"give options or provider={provider!r}, not both: options name their provider")
        if options is not None and not isinstance(options, RuntimeOptions):
            raise InputError(
                f"options must be a RuntimeOptions, got {type(options).__name__} (a provider name: provider={options!r})"
            )
        self.artifacts_dir = Path(artifacts_dir)
        self.manifest: Manifest = load_manifest(self.artifacts_dir, verify_files=False)  # _load verifies what runs
        self.options = None if backend is not None else options or RuntimeOptions(provider or "cpu")
        self.backend = backend if backend is not None else create_backend(self.options, self.manifest)
        self._profile, self._listener = profile, on_timing
        self._timings: dict[str, list[float]] = {}  # name -> [calls, total_ms]
        self._lock = threading.Lock()  # guards the timing totals
        self._graphs: dict[str, Graph] = {name: self._load(name) for name in GRAPH_NAMES}
        self.fingerprint = Fingerprint.of(self.manifest)

    @property
    def graphs(self) -> Mapping[str, Graph]:
        """The loaded graphs by name (what the backend returned)."""
        return dict(self._graphs)

    def encode_supports(self, pairs: Iterable[tuple[ImageLike, ImageLike]]) -> SupportSet:
        """Encode annotated supports, (image, mask) pairs, into a new SupportSet (K = len(pairs) >= 1)."""
        parts = [self.encode_support(image, mask) for image, mask in pairs]
        if not parts:
            raise InputError("encode_supports() needs at least one (image, mask) pair")
        return parts[0] if len(parts) == 1 else SupportSet.concat(parts)

    def encode_support(self, image: ImageLike, mask: ImageLike) -> SupportSet:
        """Encode one annotated support into a one-support SupportSet."""
        with self._timed("support"):
            return self._encode_support(image, mask)

    def _encode_support(self, image: ImageLike, mask: ImageLike) -> SupportSet:
        rgb, m = load_image(image), load_mask(mask)
        if m.shape != rgb.shape[:2]:
            raise InputError(
                f"support mask is {m.shape[1]}x{m.shape[0]} (WxH) but its image is {rgb.shape[1]}x{rgb.shape[0]}"
            )
        pre, ep = self.manifest.preprocess, self.manifest.episode
        if not m.any():
            raise InputError("support mask is empty: a support must show at least one foreground pixel")
        small = resize_mask(m, pre.image_size)
        if not small.any():
            raise InputError(
                f"support mask vanishes when resized to {pre.image_size}x{pre.image_size}: object too small"
            )
        if m.all():
            warnings.warn("support mask covers the whole image; the support carries no background", stacklevel=3)
        feats = self._encode_image(rgb)
        logits = small.astype(np.float32) * np.float32(ep.mask_logit_scale) + np.float32(ep.mask_logit_bias)
        out = self._run("memory_encoder", {"image_embed": feats["image_embed"], "mask_logits": logits[None, None]})
        return SupportSet(
            np.asarray(out["memory"]),
            np.asarray(out["memory_pos"]),
            np.array([rgb.shape[:2]], np.int32),
            np.array([m.sum()], np.int64),
            fingerprint=self.fingerprint,
        )

    @overload
    def segment(self, query: ImageLike, support: SupportSet) -> Segmentation: ...

    @overload
    def segment(self, query: ImageLike, support: Mapping[str, SupportSet]) -> MultiClassSegmentation: ...

    def segment(
        self, query: ImageLike, support: SupportSet | Mapping[str, SupportSet]
    ) -> Segmentation | MultiClassSegmentation:
        """Segment `query` with one support set (-> Segmentation) or N named sets (-> MultiClassSegmentation,
        one image encoding for all classes). Sets come from `encode_supports` (or `SupportSet.load`)."""
        if isinstance(support, SupportSet):
            sets = {"": support}
        elif isinstance(support, Mapping):
            sets = dict(support)
            if not 1 <= len(sets) <= MAX_CLASSES:
                raise InputError(f"N-way segment() takes 1..{MAX_CLASSES} classes, got {len(sets)}")
        else:
            raise InputError(
                f"support must be a SupportSet or a mapping of class name to SupportSet, got {type(support).__name__}"
            )
        for name, s in sets.items():
            self._check_set(name, s)
        with self._timed("query"):
            results = self._segment(query, list(sets.values()))
        if isinstance(support, SupportSet):
            return results[0]
        classes = dict(zip(sets, results))
        return MultiClassSegmentation(classes, label_map([r.logits for r in results]))

    def _check_set(self, name: str, s: object) -> None:
        what = f"the support set of class {name!r}" if name else "the support set"
        if not isinstance(s, SupportSet):
            raise InputError(f"{what}: expected a SupportSet, got {type(s).__name__}")
        s.fingerprint.check(self.fingerprint, what)

    def _segment(self, query: ImageLike, sets: list[SupportSet]) -> list[Segmentation]:
        rgb = load_image(query)
        feats = self._encode_image(rgb)  # once for every class
        return [self._decode(feats, s, rgb.shape[:2]) for s in sets]

    def _decode(self, feats: Mapping[str, np.ndarray], s: SupportSet, size: tuple[int, int]) -> Segmentation:
        cond = self._run(
            "memory_attention",
            {
                "image_embed": feats["image_embed"],
                "image_pos": feats["image_pos"],
                "memory": s.memory,  # the set's own arrays: device backends key their copy on them
                "memory_pos": s.memory_pos,
            },
        )
        dec = self._run(
            "mask_decoder",
            {
                "conditioned_embed": cond["conditioned_embed"],
                "high_res_feat0": feats["high_res_feat0"],
                "high_res_feat1": feats["high_res_feat1"],
            },
        )
        low = dec["low_res_logits"][0, 0]
        with self._timed("postprocess"):
            logits = postprocess_logits(low, self.manifest.preprocess.image_size, size)
        return Segmentation(
            mask=logits > 0,
            logits=logits,
            score=float(dec["iou_score"].reshape(-1)[0]),
            object_score=float(dec["object_score_logits"].reshape(-1)[0]),
            low_res_logits=low,
        )

    def timings(self) -> dict[str, ModuleTiming]:
        """Per-module latency since construction (or `clear_timings`), in milliseconds; needs `profile=True`."""
        with self._lock:
            return {k: ModuleTiming(int(n), total) for k, (n, total) in self._timings.items()}

    def clear_timings(self) -> None:
        with self._lock:
            self._timings.clear()

    def _load(self, name: str) -> Graph:
        """Load the graph's flavour for the backend's provider (the standard ONNX unless the manifest has one),
        after checking its sha256: only the files this provider runs are read."""
        spec = self.manifest.graphs[name]
        artifact = spec.artifact_for(self.backend.provider)
        with self._timed(f"verify:{name}"):
            verify_file(self.artifacts_dir, name, artifact.file, artifact.sha256)
        with self._timed(f"load:{name}"):
            return self.backend.load(self.artifacts_dir / artifact.file, spec, name)

    def _encode_image(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        pre = self.manifest.preprocess
        with self._timed("preprocess"):
            x = preprocess_image(rgb, pre.image_size, pre.mean, pre.std)
        return self._run("image_encoder", {"image": x})

    def _run(self, name: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        _check_feeds(name, self.manifest.graphs[name], feeds)
        with self._timed(name):
            return self._graphs[name].run(feeds)

    def _timed(self, name: str):
        return self._measure(name) if self._profile or self._listener else _UNTIMED

    @contextmanager
    def _measure(self, name: str):
        t0 = time.perf_counter()
        yield
        ms = (time.perf_counter() - t0) * 1e3
        if self._profile:
            with self._lock:
                agg = self._timings.setdefault(name, [0, 0.0])
                agg[0] += 1
                agg[1] += ms
        if self._listener:
            self._listener(name, ms)


def _check_feeds(graph: str, spec: GraphSpec, feeds: Mapping[str, np.ndarray]) -> None:
    for t in spec.inputs:
        a = feeds.get(t.name)
        if a is None:
            raise ManifestError(f"{graph}: no value for input '{t.name}'")
        if (
            a.dtype != np.dtype(t.dtype)
            or a.ndim != len(t.shape)
            or any(isinstance(d, int) and d != n for d, n in zip(t.shape, a.shape))
        ):
            raise ManifestError(
                f"{graph}: input '{t.name}' is {a.dtype}{list(a.shape)}, manifest says {t.dtype}{t.shape}"
            )
