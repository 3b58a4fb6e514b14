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
