"""Support sets addressed by content: `set_digest` and a directory store of `<digest>.fssam2` files."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path

from ..engine.errors import InputError
from ..engine.support_set import SUFFIX, TENSORS, SupportSet

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def set_digest(s: SupportSet) -> str:
    """sha256 (hex) of a set's tensors and fingerprint: equal sets from the same model have equal digests."""
    h = hashlib.sha256(repr(s.fingerprint).encode())
    for name in TENSORS:
        a = getattr(s, name)
        h.update(f"{name}:{a.dtype}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class UnknownSetError(InputError):
    """No support set with this id in the store (or it expired)."""


class StoreFullError(InputError):
    """The store holds its quota of sets; a new one is refused until some are deleted or expire."""


class SetStore:
    """A directory of support-set files named by digest; several processes may share it (writes are atomic).

    Loaded sets are kept (up to `cache_size`, least recently used dropped): a set is read once per process,
    and device backends, which keep a set's tokens on the device while the set object lives, upload it once.
    Sets are immutable (the id is their content hash), so a cached set is valid while its file exists.
    `max_sets`: a new set beyond it is refused (`StoreFullError`); `ttl`: seconds a set lives after it was last
    created (uploading the same supports again renews it), then it is unknown and deleted."""

    def __init__(self, root: str | Path, cache_size: int = 64, max_sets: int | None = None, ttl: float | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._cache: OrderedDict[str, SupportSet] = OrderedDict()
        self._cache_size = cache_size
        self.max_sets, self.ttl = max_sets, ttl
        self._lock = threading.Lock()

    def _gone(self, path: Path) -> bool:
        """Missing, or older than the time to live."""
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return True
        return self.ttl is not None and mtime < time.time() - self.ttl

    def path(self, set_id: str) -> Path:
        if not _DIGEST.match(set_id):
            raise UnknownSetError(f"support set id must be 64 lowercase hex digits, got {set_id[:80]!r}")
        return self.root / f"{set_id}{SUFFIX}"

    def put(self, s: SupportSet) -> str:
        set_id = set_digest(s)
        path = self.path(set_id)
        if path.exists():
            os.utime(path)  # created again: its time to live starts over
            return set_id
        if self.ttl is not None:
            for old in self.root.glob(f"*{SUFFIX}"):
                if self._gone(old):
                    old.unlink(missing_ok=True)
        if self.max_sets is not None and len(self.ids()) >= self.max_sets:
            raise StoreFullError(f"the store holds {self.max_sets} sets, its limit: delete some first")
        s.save(path)
        return set_id  # not cached: the next get reads the file, as every other process does

    def get(self, set_id: str) -> SupportSet:
        """The set `set_id` (whichever model made it: the segmenter refuses sets of another model)."""
        path = self.path(set_id)
        if self._gone(path):
            path.unlink(missing_ok=True)
            with self._lock:
                self._cache.pop(set_id, None)
            raise UnknownSetError(f"unknown support set {set_id} (never created, deleted or expired)")
        with self._lock:
            s = self._cache.get(set_id)
            if s is not None:
                self._cache.move_to_end(set_id)
        if s is None:
            s = SupportSet.load(path)
            with self._lock:
                self._cache[set_id] = s
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return s

    def delete(self, set_id: str) -> None:
        path = self.path(set_id)
        with self._lock:
            self._cache.pop(set_id, None)
        try:
            path.unlink()
        except FileNotFoundError:
            raise UnknownSetError(f"unknown support set {set_id}") from None

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob(f"*{SUFFIX}") if _DIGEST.match(p.stem))
