"""Support sets as values: K encoded supports, immutable, savable, bound to the model that made them.

A `SupportSet` holds the memory tokens and position encodings of K supports (contiguous, as the memory
attention takes them), each support's source image size and mask area, and the `Fingerprint` of the
model that encoded them. It is made by `FewShotSegmenter.encode_supports`, combined with `a + b`, saved
with `save` and read back with `SupportSet.load(path, seg)`; the file format is docs/support-sets.md.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from .errors import SupportSetError
from .manifest import Manifest
from .versions import dist_version

FORMAT = "fssam2-support-set"
FORMAT_VERSION = 1
SUFFIX = ".fssam2"
TENSORS = ("memory", "memory_pos", "image_sizes", "mask_areas")


@dataclass(frozen=True)
class Fingerprint:
    """What made a set's tokens; sets are interchangeable between segmenters with equal fingerprints."""

    model: str  # manifest model.name
    weights: str  # "sha256:<checkpoint sha256>" or "random-init:seed=<seed>"
    image_size: int
    memory_dtype: str  # numpy name of the memory attention's `memory` input dtype
    tokens_per_support: int
    memory_channels: int  # C of the memory tokens (not in the file's metadata: the tensors' last axis)

    @classmethod
    def of(cls, manifest: Manifest) -> Fingerprint:
        m = manifest.model
        weights = f"random-init:seed={m.seed}" if m.random_init else f"sha256:{m.checkpoint_sha256}"
        memory = next(t for t in manifest.graphs["memory_attention"].inputs if t.name == "memory")
        return cls(
            m.name,
            weights,
            manifest.preprocess.image_size,
            memory.dtype,
            manifest.episode.tokens_per_support,
            int(memory.shape[2]),
        )

    def check(self, artifacts: Fingerprint, what: str = "support set") -> None:
        """Raise SupportSetError naming every field in which this (a set's) differs from the artifacts'."""
        if diff := self.differences(artifacts):
            raise SupportSetError(f"{what} was made by another model than these artifacts': {'; '.join(diff)}")

    def differences(self, other: Fingerprint, mine: str = "set", theirs: str = "artifacts") -> list[str]:
        """'field: <mine> value != <theirs> value' for every field that differs."""
        return [
            f"{f.name}: {mine} {getattr(self, f.name)} != {theirs} {getattr(other, f.name)}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]


def _frozen(a: np.ndarray) -> np.ndarray:
    """A read-only, C-contiguous array that owns its data (a copy unless it already is one)."""
    if a.flags.c_contiguous and a.flags.owndata and not a.flags.writeable:
        return a
    out = np.array(a, order="C", copy=True)
    out.flags.writeable = False
    return out


@dataclass(frozen=True, eq=False)
class SupportSet:
    """K encoded supports. Immutable: its arrays are read-only and owned by the set; `a + b` makes a new set.

    Identity matters: device backends keep a copy of a set's tokens keyed by its arrays and drop it when
    the set is garbage-collected, so a set is uploaded once, however many queries use it."""

    memory: np.ndarray  # (1, K*T, C), the memory attention's input dtype
    memory_pos: np.ndarray  # (1, K*T, C), same dtype
    image_sizes: np.ndarray  # (K, 2) int32: each support image's (height, width)
    mask_areas: np.ndarray  # (K,) int64: each support mask's foreground pixels, in its source size
    fingerprint: Fingerprint
    fssam2_version: str = dist_version("fssam2") or "unknown"

    def __post_init__(self):
        f = self.fingerprint
        k = self.mask_areas.shape[0] if self.mask_areas.ndim == 1 else -1
        expected = (1, k * f.tokens_per_support, f.memory_channels)
        problems = []
        if k < 1:
            problems.append(f"mask_areas is {list(self.mask_areas.shape)}: expected (K,) with K >= 1 supports")
        elif self.memory.shape != expected or self.memory_pos.shape != expected:
            problems.append(
                f"memory is {list(self.memory.shape)} and memory_pos {list(self.memory_pos.shape)}, expected "
                f"{list(expected)} for K={k} supports of {f.tokens_per_support} tokens x {f.memory_channels} channels"
            )
        if not str(self.memory.dtype) == str(self.memory_pos.dtype) == f.memory_dtype:
            problems.append(
                f"memory is {self.memory.dtype} and memory_pos {self.memory_pos.dtype}, expected {f.memory_dtype}"
            )
        if k >= 1 and self.image_sizes.shape != (k, 2):
            problems.append(f"image_sizes is {list(self.image_sizes.shape)}, expected [{k}, 2]")
        if problems:
            raise SupportSetError("; ".join(problems))
        for name, dtype in (
            ("memory", None),
            ("memory_pos", None),
            ("image_sizes", np.int32),
            ("mask_areas", np.int64),
        ):
            value = getattr(self, name)
            object.__setattr__(self, name, _frozen(value if dtype is None else value.astype(dtype, copy=False)))

    def __reduce__(self):
        """Pickle (e.g. to a worker process) through the constructor, so the copy is read-only and owned again."""
        return (
            SupportSet,
            (self.memory, self.memory_pos, self.image_sizes, self.mask_areas, self.fingerprint, self.fssam2_version),
        )

    @property
    def shots(self) -> int:
        """K: the number of supports."""
        return len(self.mask_areas)

    @property
    def tokens(self) -> int:
        return self.memory.shape[1]

    def __len__(self) -> int:
        return self.shots

    def __add__(self, other: SupportSet) -> SupportSet:
        """The supports of both sets, `self`'s first; both must come from the same model."""
        if not isinstance(other, SupportSet):
            return NotImplemented
        return SupportSet.concat([self, other])

    @classmethod
    def concat(cls, sets: list[SupportSet]) -> SupportSet:
        """One set holding the supports of `sets`, in order; all must come from the same model."""
        first = sets[0]
        for i, s in enumerate(sets[1:], 1):
            if diff := first.fingerprint.differences(s.fingerprint, "set 0", f"set {i}"):
                raise SupportSetError(f"cannot combine support sets made by different models: {'; '.join(diff)}")
        cat = lambda name: np.concatenate([getattr(s, name) for s in sets], axis=1 if name.startswith("memory") else 0)  # noqa: E731
        return cls(*(cat(n) for n in TENSORS), fingerprint=first.fingerprint)

    def metadata(self) -> dict[str, str]:
        """The file's `__metadata__` (docs/support-sets.md)."""
        f = self.fingerprint
        return {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "shots": str(self.shots),
            "tokens_per_support": str(f.tokens_per_support),
            "model": f.model,
            "weights": f.weights,
            "image_size": str(f.image_size),
            "memory_dtype": f.memory_dtype,
            "fssam2_version": self.fssam2_version,
        }

    def save(self, path: str | Path) -> Path:
        """Write the set as a safetensors file, atomically (temporary file in the same directory, then rename)."""
        from safetensors.numpy import save

        from .files import write_atomic

        return write_atomic(path, save({n: getattr(self, n) for n in TENSORS}, metadata=self.metadata()))

    @classmethod
    def load(cls, path: str | Path, model=None) -> SupportSet:
        """Read a set written by `save` (or the C library). `model` (a FewShotSegmenter, a Manifest or a
        Fingerprint) is what the set must have been made by: every differing field is named. None: no check."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                names = set(f.keys())
                if meta.get("format") != FORMAT:
                    raise SupportSetError(
                        f"{path}: not an fssam2 support set (format {meta.get('format')!r}, expected {FORMAT!r})"
                    )
                if meta.get("format_version") != str(FORMAT_VERSION):
                    raise SupportSetError(
                        f"{path}: support-set format version {meta.get('format_version')!r}; "
                        f"this runtime reads version {FORMAT_VERSION}"
                    )
                if missing := [n for n in TENSORS if n not in names]:
                    raise SupportSetError(f"{path}: missing tensors {missing}")
                tensors = {n: f.get_tensor(n) for n in TENSORS}
        except (OSError, SafetensorError) as e:
            raise SupportSetError(f"cannot read support set {path}: {e}") from e
        memory = tensors["memory"]
        if memory.ndim != 3:
            raise SupportSetError(f"{path}: memory is {list(memory.shape)}, expected (1, K*T, C)")
        try:
            found = Fingerprint(
                meta["model"],
                meta["weights"],
                int(meta["image_size"]),
                meta["memory_dtype"],
                int(meta["tokens_per_support"]),
                memory.shape[2],
            )
            shots = int(meta["shots"])
        except (KeyError, ValueError) as e:
            raise SupportSetError(f"{path}: malformed metadata ({e!r})") from e
        if model is not None:
            found.check(
                model if isinstance(model, Fingerprint) else Fingerprint.of(getattr(model, "manifest", model)),
                str(path),
            )
        if len(tensors["mask_areas"]) != shots:
            raise SupportSetError(f"{path}: metadata says {shots} shots, the tensors hold {len(tensors['mask_areas'])}")
        try:
            return cls(**tensors, fingerprint=found, fssam2_version=meta.get("fssam2_version", "unknown"))
        except SupportSetError as e:
            raise SupportSetError(f"{path}: {e}") from e

    def describe(self) -> str:
        """A few lines saying what the set holds and which model made it."""
        f = self.fingerprint
        sizes = ", ".join(f"{w}x{h}" for h, w in self.image_sizes.tolist())
        areas = ", ".join(str(a) for a in self.mask_areas.tolist())
        return (
            f"{self.shots} support{'s' if self.shots > 1 else ''}, {self.tokens} memory tokens x {self.memory.shape[2]} channels {f.memory_dtype} "
            f"({self.memory.nbytes + self.memory_pos.nbytes} bytes)\n"
            f"model {f.model}, weights {f.weights}, image size {f.image_size}px, {f.tokens_per_support} tokens per support\n"
            f"support image sizes (WxH): {sizes}\nmask areas (px): {areas}\nwritten by fssam2 {self.fssam2_version}"
        )
