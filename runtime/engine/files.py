"""Writing files so that a crash never leaves half of one: atomic file writes and a safe directory replace (used by
every stage: support sets, caches, exports, checkpoints, label outputs)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def write_atomic(path: str | Path, data: bytes | memoryview) -> Path:
    """Write `data` to `path` atomically: a temporary file in the same directory, fsynced, then renamed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def replace_dir(new: str | Path, final: str | Path) -> Path:
    """Move directory `new` onto `final` (a directory, a file or nothing) so that a crash at any moment leaves a
    whole copy: the old `final` is renamed aside (`.NAME.old`), `new` renamed in, then the aside copy deleted.
    A crash between the renames leaves only the aside copy, which `recover_dir` puts back (called first here)."""
    new, final = Path(new), Path(final)
    aside = _aside(final)
    recover_dir(final)
    if final.exists() or final.is_symlink():
        final.rename(aside)
    new.rename(final)
    _remove(aside)
    return final


def recover_dir(final: str | Path) -> None:
    """Finish an interrupted `replace_dir(..., final)`: bring the aside copy back if `final` is missing, else
    delete it."""
    final = Path(final)
    aside = _aside(final)
    if aside.exists() or aside.is_symlink():
        if final.exists():
            _remove(aside)
        else:
            aside.rename(final)


def _aside(final: Path) -> Path:
    return final.with_name(f".{final.name}.old")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
