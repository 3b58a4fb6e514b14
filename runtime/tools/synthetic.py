"""Synthetic few-shot data: object classes (textured shapes) on textured backgrounds; numpy + Pillow only.

Images differ in size and aspect ratio so resizing paths are exercised. `synthetic_episodes` makes seeded
in-memory episodes (calibration, the fidelity gate, checks); `write_episode` writes one single-class episode to
disk (`python -m runtime.tools.synthetic --out example/ --shots 2`); `class_image` draws image `index` of class
`class_id` (with an optional object of another class) as a label map, deterministically, for the episodic dataset
that `training/` meta-trains on.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..engine.errors import InputError

# Seed streams: calibration and the gate draw episodes from different streams of the same seed.
CALIBRATION_STREAM, CHECK_STREAM = 0, 1


@dataclass(frozen=True)
class Episode:
    """K supports and a query in memory: what a segmenter is given."""

    supports: list[tuple[np.ndarray, np.ndarray]]  # (RGB uint8 (H, W, 3), bool mask (H, W)) per shot
    query: np.ndarray


@dataclass(frozen=True)
class EpisodeFiles:
    supports: list[tuple[Path, Path]]  # (image, mask) per shot
    query: Path
    query_mask: Path


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    coarse = rng.uniform(0, 255, size=(max(h // 32, 2), max(w // 32, 2), 3)).astype(np.uint8)
    bg = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    angle = rng.uniform(0, np.pi)
    stripes = 30 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / rng.uniform(3, 9))
    noise = rng.normal(0, 12, size=(h, w, 3))
    return np.clip(bg + stripes[..., None] + noise, 0, 255).astype(np.uint8)


def _object_mask(rng: np.random.Generator, h: int, w: int, sides: int) -> np.ndarray:
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    r = rng.uniform(0.15, 0.3) * min(h, w)
    angles = np.sort(rng.uniform(0, 2 * np.pi, sides)) if sides > 2 else np.linspace(0, 2 * np.pi, 48, endpoint=False)
    radii = r * rng.uniform(0.7, 1.0, len(angles))
    points = [(float(cx + rr * np.cos(a)), float(cy + rr * np.sin(a))) for a, rr in zip(angles, radii)]
    img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(img).polygon(points, fill=255)
    return np.asarray(img) > 0


def make_sample(
    rng: np.random.Generator, h: int, w: int, color: np.ndarray, sides: int
) -> tuple[np.ndarray, np.ndarray]:
    """One image with the class object pasted on a random background, and its bool mask."""
    image = _background(rng, h, w)
    mask = _object_mask(rng, h, w, sides)
    yy, xx = np.mgrid[0:h, 0:w]
    texture = color + 25 * np.sin(xx / 4.0)[..., None] * np.cos(yy / 4.0)[..., None]
    image[mask] = np.clip(texture[mask], 0, 255).astype(np.uint8)
    return image, mask


def class_style(class_id: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """A class's appearance: RGB colour and polygon sides (< 3 = ellipse-like), fixed by (seed, class_id)."""
    rng = np.random.default_rng((seed, class_id, 7919))
    return rng.uniform(40, 215, 3), int(rng.integers(0, 7))


def class_image(
    class_id: int, index: int, num_classes: int, seed: int = 0, size_range: tuple[int, int] = (96, 192)
) -> tuple[np.ndarray, np.ndarray]:
    """Image `index` of class `class_id`: (H, W, 3) uint8 and an (H, W) uint8 label map (0 = background,
    c + 1 = class c). Half of the images also show an object of another class, drawn underneath."""
    rng = np.random.default_rng((seed, class_id, index))
    h, w = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
    label = np.zeros((h, w), np.uint8)
    others = [c for c in range(num_classes) if c != class_id]
    layers = ([int(rng.choice(others))] if others and rng.random() < 0.5 else []) + [class_id]
    image = _background(rng, h, w)
    for c in layers:
        color, sides = class_style(c, seed)
        obj, mask = make_sample(rng, h, w, color, sides)
        image[mask], label[mask] = obj[mask], c + 1
    return image, label


def synthetic_episodes(
    count: int, seed: int, shots: tuple[int, int], size: int, stream: int = CHECK_STREAM
) -> list[Episode]:
    """`count` episodes with K drawn uniformly from `shots` = (min, max) inclusive; images of varied
    sizes around `size`; one class (colour, polygon) per episode. Episode i depends only on (stream, seed, i)."""
    lo, hi = shots
    if not 1 <= lo <= hi:
        raise InputError(f"shots range must satisfy 1 <= min <= max, got {shots}")
    episodes = []
    for i in range(count):
        rng = np.random.default_rng([stream, seed, i])
        k = int(rng.integers(lo, hi + 1))
        color, sides = rng.uniform(40, 215, 3), int(rng.integers(3, 9))
        dims = [tuple(int(v) for v in rng.integers(size * 3 // 4, size * 5 // 4 + 1, 2)) for _ in range(k + 1)]
        samples = [make_sample(rng, h, w, color, sides) for h, w in dims]
        episodes.append(Episode(samples[:k], samples[k][0]))
    return episodes


def write_episode(
    out_dir: str | Path, shots: int, seed: int = 0, sizes=((240, 320), (300, 260), (256, 256), (200, 360))
) -> EpisodeFiles:
    """Write `shots` supports and one query (PNG images + 0/255 PNG masks) into out_dir."""
    if shots < 1:
        raise InputError("an episode needs at least one support")
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    color, sides = rng.uniform(40, 215, 3), int(rng.integers(0, 7))
    paths = []
    for i in range(shots + 1):
        h, w = sizes[i % len(sizes)]
        image, mask = make_sample(rng, h, w, color, sides)
        stem = f"support{i}" if i < shots else "query"
        ip, mp = out / f"{stem}.png", out / f"{stem}_mask.png"
        Image.fromarray(image).save(ip)
        Image.fromarray(mask.astype(np.uint8) * 255).save(mp)
        paths.append((ip, mp))
    return EpisodeFiles(paths[:-1], *paths[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="write a synthetic few-shot episode")
    p.add_argument("--out", required=True)
    p.add_argument("--shots", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    ep = write_episode(args.out, args.shots, args.seed)
    print(f"wrote {len(ep.supports)} supports and query {ep.query} to {args.out}")


if __name__ == "__main__":
    main()
