"""Pre-optimised ONNX Runtime models, cached beside the artifacts.

Building a session runs ORT's graph optimiser (fusions, constant folding, CPU layout transforms), which
for the image encoder takes most of its load time. The first load saves the optimised model
(`SessionOptions.optimized_model_filepath`); later loads read it with optimisation off.

The optimised model depends on the source file, the ORT version, the provider and (for CPU layout
transforms) the instruction set; all four form the cache key, stored in a sidecar JSON and checked on
every load, so a changed graph, ORT upgrade, other provider or other CPU rebuilds the entry instead of
reusing a stale one. Files are written under temporary names and renamed, so a crash leaves no half
entry. Location: `<artifacts>/.ort_cache/`; if that is not writable, the user cache
(`$XDG_CACHE_HOME/fssam2/ort`, default `~/.cache/fssam2/ort`); if neither is, the session is optimised
in memory as without a cache (with a warning). The OpenVINO backend keeps its compiled blobs the same way
(`.openvino_cache/`, key with the OpenVINO version, device, precision and FP32 islands).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from ..engine.files import write_atomic

CACHE_DIRNAME = ".ort_cache"  # ONNX Runtime's; other kinds (`runtime.backends.openvino`) use .<kind>_cache


@dataclass(frozen=True)
class CacheKey:
    source_sha256: str
    provider: str  # with everything else that changes what is compiled (OpenVINO: device, precision, FP32 islands)
    runtime: str  # the inference library and its version, e.g. "onnxruntime 1.32.0"
    machine: str  # instruction-set fingerprint (CPU layout transforms depend on it)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty where unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("flags", "Features"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def machine_fingerprint() -> str:
    """Architecture plus a hash of the CPU's feature flags, else the processor name."""
    flags = " ".join(sorted(cpu_flags()))
    tag = hashlib.sha256((flags or platform.processor()).encode()).hexdigest()[:12]
    return f"{platform.machine()}-{tag}"


def user_cache_dir(kind: str = "ort") -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fssam2" / kind


@dataclass(frozen=True)
class CacheEntry:
    model: Path  # the optimised model (may not exist yet)
    key: CacheKey

    @property
    def sidecar(self) -> Path:
        return self.model.with_suffix(".json")

    def valid(self) -> bool:
        """The entry exists, was written for exactly this key, and its model file is complete."""
        try:
            meta = json.loads(self.sidecar.read_text())
            return meta.get("key") == asdict(self.key) and self.model.stat().st_size == meta.get("size")
        except (OSError, ValueError):
            return False

    def commit(self, tmp_model: Path) -> None:
        """Move a freshly written optimised model into place, then its sidecar (both atomically)."""
        os.replace(tmp_model, self.model)
        self._seal()

    def write(self, data: bytes) -> None:
        """Write the model's bytes into place, then its sidecar (both atomically)."""
        write_atomic(self.model, data)
        self._seal()

    def _seal(self) -> None:
        write_atomic(
            self.sidecar, json.dumps({"key": asdict(self.key), "size": self.model.stat().st_size}, indent=2).encode()
        )


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".probe-", dir=path)
        os.close(fd)
        os.unlink(tmp)
        return True
    except OSError:
        return False


def cache_entry(
    source: Path, key: CacheKey, cache_dir: Path | None = None, *, kind: str = "ort", suffix: str = ".onnx"
) -> CacheEntry | None:
    """Where the optimised (or compiled) copy of `source` lives: `cache_dir` if given, else
    `<source dir>/.<kind>_cache`, else the user cache; None (with a warning) if none of them is writable.
    A valid existing entry is returned even from a read-only directory."""
    candidates = [cache_dir] if cache_dir is not None else [source.parent / f".{kind}_cache", user_cache_dir(kind)]
    name = f"{source.stem}.{key.provider}.{key.digest}{suffix}"
    for directory in candidates:
        entry = CacheEntry(Path(directory) / name, key)
        if entry.valid() or _writable_dir(Path(directory)):
            return entry
    warnings.warn(
        f"no writable {kind} cache directory ({', '.join(map(str, candidates))}); optimising {source.name} in memory",
        stacklevel=3,
    )
    return None
