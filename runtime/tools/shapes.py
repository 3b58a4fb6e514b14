"""The `shapes` few-shot benchmark: procedural images where a class is a conjunction of cues, not one.

20 classes = 10 shape families x 2 texture families (each shape in two classes with different textures, each
texture in five classes), so neither the outline nor the texture alone names a class. Every instance draws its
own two colours, scale, aspect, rotation and texture phase; an image shows 1-3 instances of its class, 0-3
objects of other classes (drawn in random order, so they occlude and are occluded) and background clutter on a
varied background. Folds are PASCAL-5i's: fold f tests classes 5f..5f+4 and images of the other splits never show
them; each novel class's shape and texture appear in training, only not together.

`instance_image` draws the class-agnostic pretraining data (the analogue of SA-V's video objects): one random
object (a jittered polygon that is none of the class shapes) placed twice in different scenes, among distractors
that copy its texture or its outline.

`write_episode` writes a held-out episode (a novel class, a query with a distractor) to disk for the demo:
`python -m runtime.tools.shapes --out example/ --shots 2`. Everything is a pure function of its integer arguments (numpy
`default_rng` streams), numpy + Pillow only.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..engine.errors import InputError
from .synthetic import EpisodeFiles

SHAPES = ("disk", "triangle", "square", "star", "cross", "ring", "crescent", "hexagon", "arrow", "ell")
TEXTURES = ("stripes", "checker", "dots", "shaded")
NUM_CLASSES = 2 * len(SHAPES)
FOLDS = 4
SIZE_RANGE = (128, 192)  # image height and width, drawn independently
# Seed streams: images of the training, validation and test splits, and pretraining scenes never coincide.
STREAMS = {"trn": 11, "val": 12, "test": 13, "instance": 14}


def class_parts(class_id: int) -> tuple[str, str]:
    """(shape, texture) of a class: classes s and s + 10 share shape s, with textures s % 4 and (s + 2) % 4."""
    if not 0 <= class_id < NUM_CLASSES:
        raise InputError(f"shapes: class must be 0..{NUM_CLASSES - 1}, got {class_id}")
    s = class_id % len(SHAPES)
    t = s % len(TEXTURES) if class_id < len(SHAPES) else (s + 2) % len(TEXTURES)
    return SHAPES[s], TEXTURES[t]


def test_classes(fold: int) -> list[int]:
    if fold not in range(FOLDS):
        raise InputError(f"shapes: fold must be 0..{FOLDS - 1}, got {fold}")
    return [5 * fold + i for i in range(5)]


def _polygon(shape: str, r: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Outline(s) of a shape of radius ~r around the origin: [outer, hole?] as (n, 2) arrays (x, y)."""

    def ngon(n: int, radius: float, phase: float = 0.0) -> np.ndarray:
        a = phase + np.arange(n) * 2 * np.pi / n
        return np.stack([radius * np.cos(a), radius * np.sin(a)], 1)

    if shape == "disk":
        return [ngon(40, r)]
    if shape == "triangle":
        return [ngon(3, 1.15 * r, -np.pi / 2)]
    if shape == "square":
        return [ngon(4, 1.05 * r, np.pi / 4)]
    if shape == "hexagon":
        return [ngon(6, r)]
    if shape == "star":
        a = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 1.15 * r, 0.45 * r)
        return [np.stack([rad * np.cos(a), rad * np.sin(a)], 1)]
    if shape == "cross":
        w = 0.36 * r
        pts = [
            (w, w),
            (r, w),
            (r, -w),
            (w, -w),
            (w, -r),
            (-w, -r),
            (-w, -w),
            (-r, -w),
            (-r, w),
            (-w, w),
            (-w, r),
            (w, r),
        ]
        return [np.array(pts, float)]
    if shape == "ring":
        return [ngon(40, r), ngon(40, 0.55 * r)]
    if shape == "crescent":
        off = np.array([0.45 * r, 0.0])
        return [ngon(40, r), ngon(40, 0.85 * r) + off]
    if shape == "arrow":
        s, h = 0.28 * r, 0.65 * r
        pts = [(-r, -s), (0.15 * r, -s), (0.15 * r, -h), (r, 0), (0.15 * r, h), (0.15 * r, s), (-r, s)]
        return [np.array(pts, float)]
    if shape == "ell":
        t = 0.45 * r
        pts = [(-0.8 * r, -r), (-0.8 * r + t, -r), (-0.8 * r + t, r - t), (0.8 * r, r - t), (0.8 * r, r), (-0.8 * r, r)]
        return [np.array(pts, float)]
    if shape == "blob":  # pretraining objects: star-convex, 7-12 jittered vertices, none of the class outlines
        n = int(rng.integers(7, 13))
        a = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = r * rng.uniform(0.5, 1.1, n)
        return [np.stack([rad * np.cos(a), rad * np.sin(a)], 1)]
    raise InputError(f"unknown shape {shape!r}")


@dataclass(frozen=True)
class Appearance:
    """How an object's pixels look: a texture family, two colours and the texture's geometry."""

    texture: str
    colors: tuple[tuple[int, int, int], tuple[int, int, int]]
    period: float  # pixels
    angle: float  # radians
    phase: float

    @staticmethod
    def draw(texture: str, rng: np.random.Generator) -> Appearance:
        a = rng.uniform(20, 236, 3)
        while True:  # a second colour far enough from the first for the texture to show
            b = rng.uniform(20, 236, 3)
            if np.abs(a - b).sum() > 150:
                break
        return Appearance(
            texture,
            (tuple(int(v) for v in a), tuple(int(v) for v in b)),
            float(rng.uniform(6.0, 10.0)),
            float(rng.uniform(0, np.pi)),
            float(rng.uniform(0, 1)),
        )

    def render(self, h: int, w: int) -> np.ndarray:
        """The texture over a whole (h, w) canvas, float32 RGB."""
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        u = xx * np.cos(self.angle) + yy * np.sin(self.angle)
        v = -xx * np.sin(self.angle) + yy * np.cos(self.angle)
        p = self.period
        if self.texture == "stripes":
            t = (np.floor(u / (p / 2) + self.phase * 2) % 2).astype(np.float32)
        elif self.texture == "checker":
            t = ((np.floor(u / (p * 0.6) + self.phase) + np.floor(v / (p * 0.6))) % 2).astype(np.float32)
        elif self.texture == "dots":
            du = (u / p + self.phase) % 1 - 0.5
            dv = (v / p) % 1 - 0.5
            t = (du**2 + dv**2 < 0.09).astype(np.float32)
        elif self.texture == "shaded":  # one colour shading smoothly into the other across the object
            t = (0.5 + 0.5 * np.sin(u / (4 * p) + 6 * self.phase)).astype(np.float32)
        else:
            raise InputError(f"unknown texture {self.texture!r}")
        a, b = (np.array(c, np.float32) for c in self.colors)
        return a * t[..., None] + b * (1 - t[..., None])


@dataclass(frozen=True)
class Placement:
    cx: float
    cy: float
    r: float
    angle: float
    aspect: float

    @staticmethod
    def draw(rng: np.random.Generator, h: int, w: int, scale: tuple[float, float] = (0.13, 0.28)) -> Placement:
        r = float(rng.uniform(*scale) * min(h, w))
        return Placement(
            float(rng.uniform(0.12, 0.88) * w),
            float(rng.uniform(0.12, 0.88) * h),
            r,
            float(rng.uniform(0, 2 * np.pi)),
            float(np.exp(rng.uniform(-0.2, 0.2))),
        )


def shape_mask(outlines: list[np.ndarray], where: Placement, h: int, w: int) -> np.ndarray:
    """Bool (h, w) mask of outlines (the first filled, the rest cut out) scaled, rotated and moved by `where`."""
    c, s = np.cos(where.angle), np.sin(where.angle)
    rot = np.array([[c, -s], [s, c]])
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    for i, pts in enumerate(outlines):
        p = pts * np.array([where.aspect, 1 / where.aspect]) @ rot.T + np.array([where.cx, where.cy])
        draw.polygon([tuple(q) for q in p.tolist()], fill=0 if i else 255)
    return np.asarray(img) > 0


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A varied scene: low-frequency colour noise, faint oriented stripes or a gradient, sensor noise, clutter."""
    coarse = rng.uniform(30, 225, size=(int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3)).astype(np.uint8)
    bg = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    kind = rng.integers(3)
    if kind == 0:
        angle = rng.uniform(0, np.pi)
        bg += 20 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / rng.uniform(2, 12))[..., None]
    elif kind == 1:
        bg += (rng.uniform(-40, 40, 3) * (xx / w)[..., None]).astype(np.float32)
    bg += rng.normal(0, rng.uniform(3, 12), size=(h, w, 3))
    image = np.clip(bg, 0, 255).astype(np.uint8)
    clutter = ImageDraw.Draw(pil := Image.fromarray(image))
    for _ in range(int(rng.integers(0, 9))):  # small things that are no object of any class
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(2, 0.05 * min(h, w))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            clutter.ellipse([x - r, y - r, x + r, y + r], fill=color)
        else:
            clutter.line([x - 3 * r, y, x + 3 * r, y + rng.uniform(-3, 3) * r], fill=color, width=int(1 + r / 2))
    return np.asarray(pil).copy()


def _paste(image: np.ndarray, label: np.ndarray, mask: np.ndarray, look: Appearance, value: int) -> None:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    tex = look.render(y1 - y0, x1 - x0)
    sub = mask[y0:y1, x0:x1]
    image[y0:y1, x0:x1][sub] = np.clip(tex[sub], 0, 255).astype(np.uint8)
    label[y0:y1, x0:x1][sub] = value


MIN_VISIBLE = 0.006  # share of the image the image's own class must keep after occlusion


def class_image(class_id: int, index: int, split: str, fold: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Image `index` of `class_id` in `split` ("trn", "val", "test") of `fold`: (H, W, 3) uint8 and an (H, W)
    uint8 label map (0 background, c + 1 where class c is visible). Training and validation images show only
    the fold's training classes; test images any class."""
    if split not in ("trn", "val", "test"):
        raise InputError(f"shapes: split must be trn, val or test, got {split!r}")
    novel = test_classes(fold)
    if split != "test" and class_id in novel:
        raise InputError(f"shapes: class {class_id} is a test class of fold {fold}; {split} images never show it")
    pool = [c for c in range(NUM_CLASSES) if c != class_id and (split == "test" or c not in novel)]
    rng = np.random.default_rng((seed, STREAMS[split], fold, class_id, index))
    h, w = (int(v) for v in rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1, 2))
    image, label = background(rng, h, w), np.zeros((h, w), np.uint8)
    n_own = 1 + int(rng.random() < 0.35) + int(rng.random() < 0.1)
    others = [int(c) for c in rng.choice(pool, int(rng.choice([0, 1, 1, 2, 2, 3])))]
    layers = [class_id] * n_own + others
    rng.shuffle(layers)
    for c in layers:
        shape, texture = class_parts(c)
        where = Placement.draw(rng, h, w)
        _paste(
            image, label, shape_mask(_polygon(shape, where.r, rng), where, h, w), Appearance.draw(texture, rng), c + 1
        )
    if (label == class_id + 1).mean() < MIN_VISIBLE:  # hidden by the others: show one more, on top
        shape, texture = class_parts(class_id)
        where = Placement.draw(rng, h, w, scale=(0.18, 0.26))
        _paste(
            image,
            label,
            shape_mask(_polygon(shape, where.r, rng), where, h, w),
            Appearance.draw(texture, rng),
            class_id + 1,
        )
    return image, label


def instance_image(index: int, view: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """View `view` of pretraining object `index`: (H, W, 3) uint8 and a {0, 1} mask of the object. The object (a
    blob outline and an appearance) is fixed by `index`; each view places it anew (scale x0.8-1.3, any rotation)
    in a new scene, alone (a third of the views: segmentation by saliency) or among 1-3 distractors, 40 % of which
    copy its look or its outline (segmentation by matching)."""
    obj = np.random.default_rng((seed, STREAMS["instance"], index))
    outline = _polygon("blob", 1.0, obj)[0]
    look = Appearance.draw(str(obj.choice(TEXTURES)), obj)
    base_scale = obj.uniform(0.2, 0.34)
    rng = np.random.default_rng((seed, STREAMS["instance"], index, view + 1))
    h, w = (int(v) for v in rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1, 2))
    image, label = background(rng, h, w), np.zeros((h, w), np.uint8)
    layers = ["target"] + ["distractor"] * int(rng.choice([0, 0, 1, 1, 2, 3]))
    rng.shuffle(layers)
    for kind in layers:
        s = base_scale * np.exp(rng.uniform(-0.25, 0.25))
        where = Placement.draw(rng, h, w, scale=(s, s))
        if kind == "target":
            mask, value, app = shape_mask([outline * where.r], where, h, w), 1, look
        else:
            twin = rng.random()  # < 0.2: its outline, another look; < 0.4: its look, another outline
            own = [outline * where.r] if twin < 0.2 else _polygon("blob", where.r, rng)
            app = look if 0.2 <= twin < 0.4 else Appearance.draw(str(rng.choice(TEXTURES)), rng)
            mask, value = shape_mask(own, where, h, w), 0
        _paste(image, label, mask, app, value)
    if label.mean() < MIN_VISIBLE:
        where = Placement.draw(rng, h, w, scale=(base_scale, base_scale))
        _paste(image, label, shape_mask([outline * where.r], where, h, w), look, 1)
    return image, label


def held_out_episode(
    fold: int = 0, shots: int = 2, class_id: int | None = None, seed: int = 0
) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
    """A test episode of a novel class of `fold` (default its first) chosen by what the query shows, never by how a
    model does on it: the first test image of the class that also shows another class's object is the query, the
    next `shots` images of the class are the supports. Returns (supports as (image, {0, 1} mask), query, the
    query's {0, 1} ground truth)."""
    novel = test_classes(fold)
    c = novel[0] if class_id is None else class_id
    if c not in novel:
        raise InputError(f"shapes: class {c} is not a test class of fold {fold} ({novel})")
    q = next(i for i in range(10_000) if len(np.unique(class_image(c, i, "test", fold, seed)[1])) > 2)
    supports = []
    for i in range(q + 1, q + 1 + shots):
        image, label = class_image(c, i, "test", fold, seed)
        supports.append((image, (label == c + 1).astype(np.uint8)))
    query, label = class_image(c, q, "test", fold, seed)
    return supports, query, (label == c + 1).astype(np.uint8)


def write_episode(out_dir: str | Path, shots: int = 2, fold: int = 0, class_id: int | None = None) -> EpisodeFiles:
    """`held_out_episode` as PNGs: support<i>.png + support<i>_mask.png (0 / 255), query.png, query_mask.png."""
    if shots < 1:
        raise InputError("an episode needs at least one support")
    supports, query, truth = held_out_episode(fold, shots, class_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, (image, mask) in [*((f"support{i}", s) for i, s in enumerate(supports)), ("query", (query, truth))]:
        ip, mp = out / f"{stem}.png", out / f"{stem}_mask.png"
        Image.fromarray(image).save(ip)
        Image.fromarray(mask * 255).save(mp)
        paths.append((ip, mp))
    return EpisodeFiles(paths[:-1], *paths[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="write a held-out episode of the shapes benchmark (a novel class)")
    p.add_argument("--out", required=True)
    p.add_argument("--shots", type=int, default=2)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--class", dest="class_id", type=int, help="a test class of --fold (default its first)")
    args = p.parse_args(argv)
    ep = write_episode(args.out, args.shots, args.fold, args.class_id)
    shape, texture = class_parts(args.class_id if args.class_id is not None else test_classes(args.fold)[0])
    print(f"wrote {len(ep.supports)} supports and query {ep.query} (class: {texture} {shape}) to {args.out}")


if __name__ == "__main__":
    main()
