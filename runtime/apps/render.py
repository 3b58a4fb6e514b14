"""Drawing results: class colours, overlays, PNG masks and palette label maps, RLE masks (what the applications
write or send; the engine returns arrays)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from ..engine.files import write_atomic

# Label colours (Tableau 10, then evenly spaced hues): distinct on photos and for most colour-blind readers.
_TABLEAU = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


def class_colors(n: int) -> list[tuple[int, int, int]]:
    """RGB colours for labels 1..n."""
    import colorsys

    extra = [
        tuple(round(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 0.95))
        for i in range(max(0, n - 10))
    ]
    return (_TABLEAU + extra)[:n]


def label_palette(n: int) -> list[int]:
    """A PNG palette (768 values) for a label map: 0 black (background), label i the i-th class colour."""
    flat = [0, 0, 0] + [v for c in class_colors(n) for v in c]
    return flat + [0] * (768 - len(flat))


def contours(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of a foreground label whose 4-neighbourhood (grown `width` times) holds another label."""
    edge = np.zeros(labels.shape, bool)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    for _ in range(width - 1):
        grown = edge.copy()
        grown[1:] |= edge[:-1]
        grown[:-1] |= edge[1:]
        grown[:, 1:] |= edge[:, :-1]
        grown[:, :-1] |= edge[:, 1:]
        edge = grown
    return edge & (labels > 0)


def overlay(rgb: np.ndarray, labels: np.ndarray, names: list[str] | None = None, alpha: float = 0.45) -> np.ndarray:
    """The image with each label's pixels tinted in its class colour, its outline drawn solid, and a legend
    (colour and name per class) when `names` are given. `labels`: (H, W) bool mask or label map (0 = none)."""
    from PIL import ImageDraw

    labels = labels.astype(np.int64)
    n = max(int(labels.max()), len(names or []))
    colors = np.asarray([(0, 0, 0)] + class_colors(n), np.float32)
    out = rgb.astype(np.float32)
    fg = labels > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * colors[labels[fg]]
    edge = contours(labels, width=max(2, round(min(labels.shape) / 250)))
    out[edge] = colors[labels[edge]]
    image = Image.fromarray(out.round().astype(np.uint8))
    if names:
        draw = ImageDraw.Draw(image)
        line = 14
        width = 26 + 7 * max(len(name) for name in names)
        draw.rectangle([2, 2, 6 + width, 6 + line * len(names)], fill=(255, 255, 255))
        for i, (name, color) in enumerate(zip(names, class_colors(len(names)))):
            y = 5 + i * line
            draw.rectangle([6, y + 1, 16, y + 11], fill=color, outline=(0, 0, 0))
            draw.text((22, y), name, fill=(0, 0, 0))
    return np.asarray(image)


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
