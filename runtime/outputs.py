"""Writing results: atomic files, PNG masks and palette label maps (the colours of `image.overlay`), RLE masks."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from .image import label_palette


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


def save_png(array: np.ndarray, path: str | Path, palette: bool = False) -> Path:
    """Write a mask (or, with `palette`, a uint8 label map as a palette PNG whose pixel values are the labels)
    atomically."""
    return write_atomic(path, png_bytes(array, palette))


def png_bytes(array: np.ndarray, palette: bool = False) -> bytes:
    """Encode an image or mask or, with `palette`, a uint8 label map as PNG bytes."""
    im = Image.fromarray(array)
    if palette:
        im = Image.frombytes("P", im.size, np.ascontiguousarray(array, np.uint8).tobytes())
        im.putpalette(label_palette(255))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def rle_encode(mask: np.ndarray) -> dict:
    """COCO-style uncompressed RLE: {"size": [H, W], "counts": [...]}: run lengths in column-major order,
    starting with a (possibly empty) run of zeros."""
    flat = np.asarray(mask, bool).ravel(order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


def rle_decode(rle: dict) -> np.ndarray:
    """Inverse of `rle_encode`."""
    h, w = rle["size"]
    values = np.arange(len(rle["counts"])) % 2 == 1
    return np.repeat(values, rle["counts"]).reshape((h, w), order="F")
