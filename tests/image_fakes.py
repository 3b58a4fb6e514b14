"""Bad image files for the label and serve tests: not an image, truncated, a decompression bomb header."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid tiny PNG whose header declares width x height pixels (what a decompression bomb looks like
    before decoding)."""
    data = bytearray(png(np.zeros((1, 1), np.uint8)))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


# EXIF orientation (1-8) -> the Pillow transpose that turns the stored pixels upright, and its inverse.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_INVERSE = {**_UPRIGHT, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def blocky_grey(rgb: np.ndarray) -> np.ndarray:
    """`rgb` in grey, cropped to whole 8x8 blocks, each block flat: a JPEG of it at quality 100 holds only DC
    terms, so every decoder (Pillow's libjpeg, stb_image) gives back exactly these pixels."""
    grey = np.asarray(Image.fromarray(rgb).convert("L"), np.float32)
    h, w = (d - d % 8 for d in grey.shape)
    blocks = grey[:h, :w].reshape(h // 8, 8, w // 8, 8).mean(axis=(1, 3)).round().astype(np.uint8)
    return np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)


def oriented_jpeg(upright: np.ndarray, orientation: int) -> bytes:
    """A JPEG (quality 100, EXIF Orientation `orientation`) whose stored pixels, turned as the tag says, are
    `upright` (a 2-D grey array)."""
    im = Image.fromarray(upright)
    if orientation in _INVERSE:
        im = im.transpose(_INVERSE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=100, exif=exif.tobytes())
    return buf.getvalue()
