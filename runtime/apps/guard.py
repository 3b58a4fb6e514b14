"""Decoding untrusted images with limits: file bytes, pixels (checked from the header before decoding, which
guards against decompression bombs), truncated or unreadable files. Used by `fssam2 label` and `fssam2 serve`."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..engine.errors import InputError
from ..engine.image import load_mask, upright


class ImageLimitError(InputError):
    """An image is larger (bytes or pixels) than the configured limits."""


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 50 * 2**20
    max_pixels: int = 40_000_000  # Pillow warns at 89.5 MP and refuses at twice that; we refuse before decoding


def read_bytes(path: str | Path, limits: ImageLimits) -> bytes:
    """A file's bytes, refusing files over `limits.max_bytes` before reading them."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise ImageLimitError(f"{path}: {size} bytes, more than the limit of {limits.max_bytes}")
        return path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from e


def _open(data: bytes, what: str, limits: ImageLimits) -> Image.Image:
    if len(data) > limits.max_bytes:
        raise ImageLimitError(f"{what}: {len(data)} bytes, more than the limit of {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLimitError(f"{what}: {e}") from e
    except Image.UnidentifiedImageError:
        raise InputError(f"{what}: not an image (no format Pillow reads)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise InputError(f"{what}: not a readable image ({e})") from e
    w, h = im.size
    if w * h > limits.max_pixels:
        raise ImageLimitError(f"{what}: {w}x{h} = {w * h} pixels, more than the limit of {limits.max_pixels}")
    if min(w, h) < 1:
        raise InputError(f"{what}: empty image ({w}x{h})")
    try:
        return upright(im)  # decode now (truncated files fail here, not later), turned by its EXIF orientation
    except (OSError, ValueError, SyntaxError) as e:
        raise InputError(f"{what}: cannot decode image ({e})") from e


def decode_image(data: bytes, what: str, limits: ImageLimits) -> np.ndarray:
    """RGB uint8 (H, W, 3) from encoded image bytes; `what` names the image in error messages."""
    return np.asarray(_open(data, what, limits).convert("RGB"))


def decode_mask(data: bytes, what: str, limits: ImageLimits) -> np.ndarray:
    """Bool (H, W) mask (nonzero = foreground) from encoded image bytes."""
    return load_mask(_open(data, what, limits))
