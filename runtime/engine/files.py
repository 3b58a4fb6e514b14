"""Writing files so that a crash never leaves half of one: atomic file writes and a safe directory replace (used by
every stage: support sets, caches, exports, checkpoints, label outputs).

Files and directories made here get the mode the process umask gives (0644 / 0755 under umask 022), as `open`
and `mkdir` would: unlike `tempfile.mkstemp` / `mkdtemp` (0600 / 0700), so that a teammate, a web server or
another node on a shared filesystem can read what was written."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path


def create_temp(directory: str | Path, prefix: str, suffix: str = ".tmp") -> tuple[int, Path]:
    """A new file `<directory>/<prefix><random><suffix>` opened for writing: (fd, path). Made with mode 0666 less
    the umask (`O_CREAT | O_EXCL`: never an existing file), not mkstemp's 0600."""
    for _ in range(100):
        path = Path(directory) / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name {prefix}*{suffix} in {directory}")


def create_temp_dir(directory: str | Path, prefix: str) -> Path:
    """A new directory `<directory>/<prefix><random>` with mode 0777 less the umask (not mkdtemp's 0700)."""
    for _ in range(100):
        path = Path(directory) / f"{prefix}{secrets.token_hex(6)}"
        try:
            path.mkdir(0o777)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name {prefix}* in {directory}")


def write_atomic(path: str | Path, data: bytes | memoryview) -> Path:
    """Write `data` to `path` atomically: a temporary file in the same directory, fsynced, then renamed; the file
    gets the umask's mode (0644 under 022)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp(target.parent, f".{target.name}.")
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
