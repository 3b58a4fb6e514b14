"""Image and mask I/O, preprocessing and postprocessing in numpy + Pillow.

Matches FS-SAM2's data path: Pillow bicubic resize to the square model size, scale to [0, 1],
normalise with the manifest's mean/std; support masks resized with torch's 'nearest' rule;
decoder logits upsampled bilinearly (torch semantics) to the model size, then to the query's size.
Files are turned upright by their EXIF orientation when read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import InputError

ImageLike = str | Path | np.ndarray | Image.Image


def upright(im: Image.Image) -> Image.Image:
    """`im` turned the way its EXIF orientation says it is shown (phones store pixels sideways and a tag), in place;
    decodes it. Every file the runtime reads goes through here (libfssam2's tools apply the same 8 orientations)."""
    ImageOps.exif_transpose(im, in_place=True)
    return im


def load_image(src: ImageLike) -> np.ndarray:
    """Return an RGB uint8 (H, W, 3) array from a path (turned upright by its EXIF orientation), a PIL image or
    such an array."""
    if isinstance(src, (str, Path)):
        try:
            with Image.open(src) as im:
                return np.asarray(upright(im).convert("RGB"))
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read image {src}: {e}") from e
    if isinstance(src, Image.Image):
        return np.asarray(src.convert("RGB"))
    if not isinstance(src, np.ndarray):
        raise InputError(f"image must be a path, PIL image or numpy array, got {type(src).__name__}")
    if src.dtype != np.uint8:
        raise InputError(f"image array must be uint8 RGB, got dtype {src.dtype}")
    if src.ndim != 3 or src.shape[2] != 3:
        raise InputError(f"image array must have shape (H, W, 3), got {src.shape}")
    if min(src.shape[:2]) < 1:
        raise InputError(f"image is empty: shape {src.shape}")
    return src


def _mask_array(im: Image.Image) -> np.ndarray:
    return np.asarray(im if im.mode in ("1", "L", "P", "I") else im.convert("L"))


def load_mask(src: ImageLike) -> np.ndarray:
    """Return a bool (H, W) mask; nonzero = foreground. Accepts a path (turned upright by its EXIF orientation), a
    PIL image or a 2-D array."""
    if isinstance(src, (str, Path)):
        try:
            with Image.open(src) as im:
                arr = _mask_array(upright(im))
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read mask {src}: {e}") from e
    elif isinstance(src, Image.Image):
        arr = _mask_array(src)
    elif isinstance(src, np.ndarray):
        arr = src
    else:
        raise InputError(f"mask must be a path, PIL image or numpy array, got {type(src).__name__}")
    if arr.ndim != 2:
        raise InputError(f"mask must be 2-D (H, W), got shape {arr.shape}")
    if not (arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"mask must be bool or integer (nonzero = foreground), got dtype {arr.dtype}")
    return arr != 0


def preprocess_image(rgb: np.ndarray, size: int, mean: list[float], std: list[float]) -> np.ndarray:
    """(H, W, 3) uint8 -> (1, 3, size, size) float32, (x / 255 - mean) / std: looked up per channel from the 256
    values it can take (the same float32 results as computing it per pixel, a third of the time)."""
    resized = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC))
    levels = np.arange(256, dtype=np.float32) / np.float32(255.0)
    table = (levels[:, None] - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)  # (256, 3)
    out = np.empty((1, 3, size, size), np.float32)
    for c in range(3):
        np.take(table[:, c], resized[..., c], out=out[0, c])
    return out


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source indices of torch's F.interpolate(mode='nearest')."""
    scale = np.float32(in_size / out_size)
    idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, in_size - 1)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """(H, W) bool -> (size, size) bool with torch's 'nearest' rule."""
    h, w = mask.shape
    return mask[nearest_indices(h, size)][:, nearest_indices(w, size)]


def _bilinear_axis(x: np.ndarray, out_size: int, axis: int, align_corners: bool) -> np.ndarray:
    in_size = x.shape[axis]
    dst = np.arange(out_size, dtype=np.float32)
    if align_corners:
        scale = np.float32((in_size - 1) / (out_size - 1)) if out_size > 1 else np.float32(0.0)
        src = dst * scale
    else:
        scale = np.float32(in_size / out_size)
        src = np.maximum((dst + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = (src - i0).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = out_size
    lam = lam.reshape(shape)
    return np.take(x, i0, axis=axis) * (np.float32(1.0) - lam) + np.take(x, i1, axis=axis) * lam


def resize_bilinear(x: np.ndarray, out_hw: tuple[int, int], align_corners: bool) -> np.ndarray:
    """2-D float32 bilinear resize with the semantics of torch's F.interpolate (no antialias)."""
    y = _bilinear_axis(x.astype(np.float32, copy=False), out_hw[0], 0, align_corners)
    return _bilinear_axis(y, out_hw[1], 1, align_corners)


def postprocess_logits(low_res: np.ndarray, model_size: int, out_hw: tuple[int, int]) -> np.ndarray:
    """Decoder logits (h, w) -> (H, W) as FS-SAM2 does: to model size (align_corners=False),
    then to the original image size (align_corners=True)."""
    full = resize_bilinear(low_res, (model_size, model_size), align_corners=False)
    return resize_bilinear(full, out_hw, align_corners=True)
