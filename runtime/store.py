"""Support sets addressed by content: `set_digest` and a directory store of `<digest>.fssam2` files."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from .errors import InputError
from .support_set import SUFFIX, TENSORS, SupportSet

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
    """No support set with this id in the store."""


class SetStore:
    """A directory of support-set files named by digest; several processes may share it (writes are atomic)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, set_id: str) -> Path:
        if not _DIGEST.match(set_id):
            raise UnknownSetError(f"support set id must be 64 lowercase hex digits, got {set_id[:80]!r}")
        return self.root / f"{set_id}{SUFFIX}"

    def put(self, s: SupportSet) -> str:
        set_id = set_digest(s)
        if not self.path(set_id).exists():
            s.save(self.path(set_id))
        return set_id

    def get(self, set_id: str, model=None) -> SupportSet:
        """The set `set_id`; `model` (segmenter, manifest or fingerprint): it must have been made by that model."""
        path = self.path(set_id)
        if not path.exists():
            raise UnknownSetError(f"unknown support set {set_id}")
        return SupportSet.load(path, model)

    def delete(self, set_id: str) -> None:
        path = self.path(set_id)
        try:
            path.unlink()
        except FileNotFoundError:
            raise UnknownSetError(f"unknown support set {set_id}") from None

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob(f"*{SUFFIX}") if _DIGEST.match(p.stem))
