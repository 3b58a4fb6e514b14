"""K-shot segmentation: the FS-SAM2 memory-bank loop over the four exported graphs.

Each support is encoded once (image encoder -> memory encoder on its mask as logits) and its memory
tokens are appended to a contiguous memory bank; a query runs the image encoder, memory attention over
the bank's filled rows (a view, no copy) and the mask decoder.

Timing is off unless asked for: `profile=True` keeps per-module totals (`timings()`), `on_timing`
receives every measurement as (name, milliseconds). Names: the graphs, "preprocess", "postprocess",
"verify:<graph>" (sha256 of the file it runs), "load:<graph>" (session creation), and the phases
"support" (one `add_support`) and "query" (one `segment`), which contain the module times measured
inside them.
"""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from .backends import Backend, Graph, create_backend
from .image import ImageLike, InputError, load_image, load_mask, postprocess_logits, preprocess_image, resize_mask
from .manifest import GRAPH_NAMES, GraphSpec, Manifest, load_manifest, verify_file
from .memory_bank import MemoryBank
from .profiles import DEFAULT_MAX_SHOTS

TimingListener = Callable[[str, float], None]
_UNTIMED = nullcontext()


@dataclass(frozen=True)
class Segmentation:
    mask: np.ndarray  # (H, W) bool, in the query's own size
    logits: np.ndarray  # (H, W) float32 mask logits; mask = logits > 0
    score: float  # the decoder's predicted IoU of the mask
    object_score: float  # object-presence logit (> 0: object predicted present)
    low_res_logits: np.ndarray  # (h, w) float32 decoder output before upsampling


@dataclass(frozen=True)
class ModuleTiming:
    calls: int
    total_ms: float

    @property
    def mean_ms(self) -> float:
        return self.total_ms / self.calls if self.calls else 0.0


class FewShotSegmenter:
    """Few-shot segmenter over an fssam2 artifacts directory.

    >>> seg = FewShotSegmenter("artifacts/")          # provider="cpu" | "cuda" | "tensorrt" | "tensorrt-native"
    >>> seg.add_support(image, mask)                    # K times, any K >= 1
    >>> result = seg.segment(query)                     # Segmentation in the query's own size
    """

    def __init__(
        self,
        artifacts_dir: str | Path,
        provider: str = "cpu",
        backend: Backend | None = None,
        *,
        max_shots: int = DEFAULT_MAX_SHOTS,
        profile: bool = False,
        on_timing: TimingListener | None = None,
    ):
        """`max_shots`: the largest K ORT's TensorRT EP builds its profile for (engines carry their own)."""
        self.artifacts_dir = Path(artifacts_dir)
        self.manifest: Manifest = load_manifest(self.artifacts_dir, verify_files=False)  # _load verifies what runs
        self.backend = backend if backend is not None else create_backend(provider, self.manifest, max_shots=max_shots)
        self._profile, self._listener = profile, on_timing
        self._timings: dict[str, list[float]] = {}  # name -> [calls, total_ms]
        self._graphs: dict[str, Graph] = {name: self._load(name) for name in GRAPH_NAMES}
        self.memory_bank = MemoryBank(initial_tokens=self.manifest.episode.tokens_per_support)

    @property
    def graphs(self) -> Mapping[str, Graph]:
        """The loaded graphs by name (what the backend returned)."""
        return dict(self._graphs)

    @property
    def num_supports(self) -> int:
        return self.memory_bank.supports

    def add_support(self, image: ImageLike, mask: ImageLike) -> None:
        """Encode one annotated support image into the memory bank (once; reused by every query)."""
        with self._timed("support"):
            self._add_support(image, mask)

    def _add_support(self, image: ImageLike, mask: ImageLike) -> None:
        rgb, m = load_image(image), load_mask(mask)
        if m.shape != rgb.shape[:2]:
            raise InputError(f"support mask is {m.shape[1]}x{m.shape[0]} (WxH) but its image is {rgb.shape[1]}x{rgb.shape[0]}")
        pre, ep = self.manifest.preprocess, self.manifest.episode
        if not m.any():
            raise InputError("support mask is empty: a support must show at least one foreground pixel")
        small = resize_mask(m, pre.image_size)
        if not small.any():
            raise InputError(f"support mask vanishes when resized to {pre.image_size}x{pre.image_size}: object too small")
        if m.all():
            warnings.warn("support mask covers the whole image; the support carries no background", stacklevel=2)
        feats = self._encode_image(rgb)
        logits = small.astype(np.float32) * np.float32(ep.mask_logit_scale) + np.float32(ep.mask_logit_bias)
        out = self._run("memory_encoder", {"image_embed": feats["image_embed"], "mask_logits": logits[None, None]})
        self.memory_bank.append(out["memory"], out["memory_pos"])

    def segment(self, query: ImageLike) -> Segmentation:
        """Predict the query's mask from all supports added so far."""
        if not self.memory_bank.supports:
            raise RuntimeError("segment() called before any add_support(): add at least one annotated support")
        with self._timed("query"):
            return self._segment(query)

    def _segment(self, query: ImageLike) -> Segmentation:
        rgb = load_image(query)
        feats = self._encode_image(rgb)
        cond = self._run(
            "memory_attention",
            {
                "image_embed": feats["image_embed"],
                "image_pos": feats["image_pos"],
                "memory": self.memory_bank.memory,
                "memory_pos": self.memory_bank.memory_pos,
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
            logits = postprocess_logits(low, self.manifest.preprocess.image_size, rgb.shape[:2])
        return Segmentation(
            mask=logits > 0,
            logits=logits,
            score=float(dec["iou_score"].reshape(-1)[0]),
            object_score=float(dec["object_score_logits"].reshape(-1)[0]),
            low_res_logits=low,
        )

    def reset(self) -> None:
        """Forget all supports (the graphs stay loaded; graphs keeping a device copy of the memory drop it)."""
        self.memory_bank.reset()
        for graph in self._graphs.values():
            if hasattr(graph, "forget_memory"):
                graph.forget_memory()

    def timings(self) -> dict[str, ModuleTiming]:
        """Per-module latency since construction (or `clear_timings`), in milliseconds; needs `profile=True`."""
        return {k: ModuleTiming(int(n), total) for k, (n, total) in self._timings.items()}

    def clear_timings(self) -> None:
        self._timings.clear()

    def _load(self, name: str) -> Graph:
        """Load the graph's flavour for the backend's provider (the standard ONNX unless the manifest has one),
        after checking its sha256: only the files this provider runs are read."""
        spec = self.manifest.graphs[name]
        artifact = spec.artifact_for(self.backend.provider)
        with self._timed(f"verify:{name}"):
            verify_file(self.artifacts_dir, name, artifact.file, artifact.sha256)
        with self._timed(f"load:{name}"):
            return self.backend.load(self.artifacts_dir / artifact.file, spec)

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
            agg = self._timings.setdefault(name, [0, 0.0])
            agg[0] += 1
            agg[1] += ms
        if self._listener:
            self._listener(name, ms)


def _check_feeds(graph: str, spec: GraphSpec, feeds: Mapping[str, np.ndarray]) -> None:
    for t in spec.inputs:
        a = feeds.get(t.name)
        if a is None:
            raise RuntimeError(f"{graph}: no value for input '{t.name}'")
        if a.dtype != np.dtype(t.dtype) or a.ndim != len(t.shape) or any(
            isinstance(d, int) and d != n for d, n in zip(t.shape, a.shape)
        ):
            raise RuntimeError(f"{graph}: input '{t.name}' is {a.dtype}{list(a.shape)}, manifest says {t.dtype}{t.shape}")
