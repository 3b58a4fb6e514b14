"""Episodic few-shot datasets with FS-SAM2's on-disk layouts, class folds, split lists and sampling.

Splits: `trn` (meta-training), `val` (model selection) and `test` (the benchmark episodes). Test episodes are
FS-SAM2's: episode i draws from `numpy.random.default_rng((seed, i, 0))` with the same calls in the same
order as its loaders, so with seed 42 they are the episodes its `test.py` evaluates. Its `val` is the same
set of episodes; here it is not: for PASCAL-5i, COCO-20i and the synthetic set, `val` queries are a fixed
~5 % of the *training* images (by a hash of their name), never used in `trn`, on the training classes;
FSS-1000 has its own validation categories. So model selection never sees a test class.

A `LabeledEpisode` (the runtime's `Episode` plus its spec and the query's ground truth) keeps every image at its own
size: images (H, W, 3) uint8, support masks {0, 1}, the query mask {0, 1} with `IGNORE` (255) where a pixel is
excluded (PASCAL's object boundaries).

N-way episodes (`ways_episode`, evaluation only; PANet's protocol): episode i first makes exactly the draws of
the 1-way episode i (its class, query and K supports: the query always shows that first class), then, from
the same generator, N-1 further distinct classes of the split (uniformly, without replacement) and K
supports of each (never the query). The query's label map marks each of the N classes it shows as 1..N in
that order; pixels of any other class are background and IGNORE stays ignored. So `ways=1` is the 1-way
episode and every N-way episode is reproducible from (seed, i).
"""

from __future__ import annotations

import functools
import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from runtime.tools import shapes
from runtime.tools.synthetic import Episode, class_image

from .splits import read_classwise, read_names

Split = Literal["trn", "val", "test"]
SPLITS = ("trn", "val", "test")
IGNORE = 255
VAL_PERCENT = 5  # share of training images held out as validation queries
DEFAULT_TEST_EPISODES = 1000  # PASCAL-5i and COCO-20i, per fold
BENCHMARKS = ("pascal", "coco", "fss", "synthetic", "shapes", "shapes-instances")


class DatasetLayoutError(FileNotFoundError):
    """A data root that does not have the layout a benchmark expects."""


@dataclass(frozen=True)
class EpisodeSpec:
    index: int
    class_id: int  # 0-based, within the benchmark's classes
    query: str
    supports: tuple[str, ...]


@dataclass(frozen=True)
class LabeledEpisode(Episode):
    """A benchmark episode: supports ((H, W, 3) uint8 image, (H, W) uint8 {0, 1} mask) and query image, as the
    runtime takes them, with the spec they were drawn by and the query's ground truth."""

    spec: EpisodeSpec
    query_mask: np.ndarray  # (H, W) uint8 {0, 1, IGNORE}


@dataclass(frozen=True)
class WaysSpec:
    index: int
    class_ids: tuple[int, ...]  # N distinct classes; the query shows class_ids[0]
    query: str
    supports: tuple[tuple[str, ...], ...]  # K per class, in class order


@dataclass(frozen=True)
class WaysEpisode:
    spec: WaysSpec
    supports: list[list[tuple[np.ndarray, np.ndarray]]]  # per class: K (image (H, W, 3) uint8, mask {0, 1})
    query: np.ndarray
    query_label: np.ndarray  # (H, W) uint8: 0 background, j + 1 = class_ids[j], IGNORE


def held_out(name: str) -> bool:
    """Whether a training image is a validation query (stable across machines and list orders)."""
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) % 100 < VAL_PERCENT


def _read_rgb(path: Path, layout: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise DatasetLayoutError(f"cannot read image {path}: {e}\nexpected layout:\n{layout}") from e


def _read_label(path: Path, layout: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            label = np.asarray(im)
    except (OSError, ValueError) as e:
        raise DatasetLayoutError(f"cannot read mask {path}: {e}\nexpected layout:\n{layout}") from e
    if label.ndim != 2:
        raise DatasetLayoutError(
            f"mask {path} has shape {label.shape}; expected a single-channel class-index PNG\n"
            f"expected layout:\n{layout}"
        )
    return label


class FewShotDataset(ABC):
    """Episodes of one benchmark, fold and split. `episode(i, epoch)` is deterministic in (seed, i, epoch)."""

    benchmark: str
    num_classes: int
    layout: str = ""

    def __init__(self, split: Split, shots: int, seed: int, num_episodes: int | None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if shots < 1:
            raise ValueError("an episode needs at least one support")
        self.split, self.shots, self.seed = split, shots, seed
        self.num_episodes = num_episodes
        self.class_ids: list[int] = []

    def __len__(self) -> int:
        return self.num_episodes if self.num_episodes is not None else self.default_length()

    @abstractmethod
    def default_length(self) -> int: ...

    @abstractmethod
    def sample(self, index: int, rng: np.random.Generator) -> EpisodeSpec: ...

    @abstractmethod
    def read_image(self, name: str) -> np.ndarray: ...

    @abstractmethod
    def read_label(self, name: str) -> np.ndarray:
        """The raw per-pixel label map of an image."""

    def binary(self, label: np.ndarray, class_id: int, ignore: bool) -> np.ndarray:
        """{0, 1} mask of `class_id` (+ IGNORE where the benchmark excludes pixels and `ignore`)."""
        return (label == class_id + 1).astype(np.uint8)

    def spec(self, index: int, epoch: int = -1) -> EpisodeSpec:
        return self.sample(index, self._rng(index, epoch))

    def _rng(self, index: int, epoch: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, index, epoch + 1))

    def load(self, spec: EpisodeSpec) -> LabeledEpisode:
        supports = [
            (self.read_image(n), self.binary(self.read_label(n), spec.class_id, ignore=False)) for n in spec.supports
        ]
        return LabeledEpisode(
            supports,
            self.read_image(spec.query),
            spec,
            self.binary(self.read_label(spec.query), spec.class_id, ignore=True),
        )

    def episode(self, index: int, epoch: int = -1) -> LabeledEpisode:
        return self.load(self.spec(index, epoch))

    @abstractmethod
    def support_pool(self, class_id: int) -> list[str]:
        """Images that may serve as supports of `class_id` (they show it)."""

    def check_ways(self, ways: int) -> None:
        most = min(len(self.class_ids), IGNORE - 1)
        if not 1 <= ways <= most:
            raise ValueError(
                f"{self.benchmark}: --ways must be 1..{most} (the {self.split} split has "
                f"{len(self.class_ids)} classes), got {ways}"
            )

    def ways_spec(self, index: int, ways: int) -> WaysSpec:
        """N-way episode `index` (see the module docstring): the 1-way episode's draws, then N-1 more classes."""
        self.check_ways(ways)
        rng = self._rng(index, -1)
        first = self.sample(index, rng)
        others = [c for c in self.class_ids if c != first.class_id]
        extra = [int(c) for c in rng.choice(others, ways - 1, replace=False)] if ways > 1 else []
        supports = [first.supports] + [self._supports(rng, self.support_pool(c), first.query, c) for c in extra]
        return WaysSpec(index, (first.class_id, *extra), first.query, tuple(supports))

    def ways_episode(self, index: int, ways: int) -> WaysEpisode:
        spec = self.ways_spec(index, ways)
        supports = [
            [(self.read_image(n), self.binary(self.read_label(n), c, ignore=False)) for n in names]
            for c, names in zip(spec.class_ids, spec.supports)
        ]
        label = self.ways_label(self.read_label(spec.query), spec.class_ids)
        return WaysEpisode(spec, supports, self.read_image(spec.query), label)

    def ways_label(self, label: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
        """The query's N-way label map: j + 1 where it shows class_ids[j], IGNORE kept, everything else 0."""
        out = np.zeros(label.shape, np.uint8)
        for j, c in enumerate(class_ids):
            out[self.binary(label, c, ignore=False) == 1] = j + 1
        out[self.binary(label, class_ids[0], ignore=True) == IGNORE] = IGNORE
        return out

    def _supports(self, rng: np.random.Generator, pool: list[str], query: str, class_id: int) -> tuple[str, ...]:
        candidates = [n for n in pool if n != query]
        if len(candidates) < self.shots:
            raise ValueError(
                f"{self.benchmark}: class {class_id} has {len(candidates)} support candidates "
                f"besides {query}, fewer than {self.shots} shots"
            )
        return tuple(str(n) for n in rng.choice(candidates, self.shots, replace=False).tolist())


def _require_dirs(root: Path, dirs: list[str], benchmark: str, layout: str) -> None:
    if not root.is_dir():
        raise DatasetLayoutError(f"{benchmark}: data root {root} does not exist\nexpected layout under it:\n{layout}")
    for d in dirs:
        if not (root / d).is_dir():
            raise DatasetLayoutError(f"{benchmark}: {root / d} is missing\nexpected layout under {root}:\n{layout}")


class _ListedDataset(FewShotDataset):
    """PASCAL-5i / COCO-20i: split lists of image names per fold, per-class name lists."""

    list_prefix: str
    folds: tuple[int, ...] = (0, 1, 2, 3)

    def __init__(
        self,
        root: str | Path,
        fold: int,
        split: Split,
        shots: int,
        seed: int = 42,
        num_episodes: int | None = None,
        lists_dir: Path | None = None,
    ):
        super().__init__(split, shots, seed, num_episodes)
        if fold not in self.folds:
            raise ValueError(f"{self.benchmark}: fold must be one of {self.folds}, got {fold}")
        if split != "test" and fold >= 10:
            raise ValueError(f"{self.benchmark}: fold {fold} is a test-only (cross-domain) fold")
        self.root, self.fold = Path(root), fold
        test_ids = self.test_classes(fold)
        self.class_ids = test_ids if split == "test" else [c for c in range(self.num_classes) if c not in test_ids]
        which = "val" if split == "test" else "train"
        names = read_names(f"{self.list_prefix}/{which}/data_list_{fold}.txt", lists_dir)
        classwise = read_classwise(f"{self.list_prefix}/{which}/sub_class_file_list_{fold}.txt", lists_dir)
        if split == "trn":
            names = [n for n in names if not held_out(n)]
            classwise = {c: [n for n in v if not held_out(n)] for c, v in classwise.items()}
        elif split == "val":
            names = [n for n in names if held_out(n)]
        if not names:
            raise ValueError(f"{self.benchmark} fold {fold}: the {split} split has no images")
        self.names, self.classwise = names, classwise
        self.val_queries = {c: [n for n in v if held_out(n)] for c, v in classwise.items()} if split == "val" else {}
        self.check_layout(names[:1])

    @staticmethod
    @abstractmethod
    def test_classes(fold: int) -> list[int]: ...

    @abstractmethod
    def check_layout(self, sample_names: list[str]) -> None: ...

    def default_length(self) -> int:
        return len(self.names) if self.split == "trn" else DEFAULT_TEST_EPISODES

    def support_pool(self, class_id: int) -> list[str]:
        return self.classwise.get(class_id, [])


PASCAL_LAYOUT = """  VOC2012/JPEGImages/<name>.jpg
  VOC2012/SegmentationClassAug/<name>.png   (class index per pixel: 0 background, 1..20 classes, 255 ignore)"""


class PascalDataset(_ListedDataset):
    """PASCAL-5i: 20 classes, fold i tests labels 5i+1..5i+5; folds 10-13 are COCO->PASCAL test groups."""

    benchmark, num_classes, layout, list_prefix = "pascal", 20, PASCAL_LAYOUT, "pascal/fss_list"
    folds = (0, 1, 2, 3, 10, 11, 12, 13)
    CROSS_DOMAIN = {10: [0, 3, 8, 10, 11, 14], 11: [12, 17, 1, 5], 12: [2, 6, 15, 16, 18, 19], 13: [4, 7, 9, 13]}

    @staticmethod
    def test_classes(fold: int) -> list[int]:
        return PascalDataset.CROSS_DOMAIN[fold] if fold >= 10 else [5 * fold + i for i in range(5)]

    def check_layout(self, sample_names: list[str]) -> None:
        _require_dirs(self.root, ["VOC2012/JPEGImages", "VOC2012/SegmentationClassAug"], self.benchmark, self.layout)
        for n in sample_names:
            for path in (self._image_path(n), self._label_path(n)):
                if not path.is_file():
                    raise DatasetLayoutError(
                        f"pascal: {path} (listed in the fold-{self.fold} split) is missing\n"
                        f"expected layout under {self.root}:\n{self.layout}"
                    )

    def _image_path(self, name: str) -> Path:
        return self.root / "VOC2012" / "JPEGImages" / f"{name}.jpg"

    def _label_path(self, name: str) -> Path:
        return self.root / "VOC2012" / "SegmentationClassAug" / f"{name}.png"

    def read_image(self, name: str) -> np.ndarray:
        return _read_rgb(self._image_path(name), self.layout)

    def read_label(self, name: str) -> np.ndarray:
        return _read_label(self._label_path(name), self.layout)

    def binary(self, label: np.ndarray, class_id: int, ignore: bool) -> np.ndarray:
        mask = (label == class_id + 1).astype(np.uint8)
        if ignore:
            mask[label == IGNORE] = IGNORE
        return mask

    def sample(self, index: int, rng: np.random.Generator) -> EpisodeSpec:
        query = self.names[index % len(self.names)]
        present = [int(v) - 1 for v in np.unique(self.read_label(query)) if v not in (0, IGNORE)]
        candidates = [c for c in present if c in self.class_ids]
        if not candidates:
            raise DatasetLayoutError(
                f"pascal: {self._label_path(query)} shows none of the split's classes "
                f"{[c + 1 for c in self.class_ids]}; does SegmentationClassAug match the lists?"
            )
        class_id = int(rng.choice(candidates))
        return EpisodeSpec(index, class_id, query, self._supports(rng, self.classwise[class_id], query, class_id))


COCO_LAYOUT = """  COCO2014/train2014/<name>.jpg, COCO2014/val2014/<name>.jpg
  COCO2014/annotations/train2014/<name>.png, COCO2014/annotations/val2014/<name>.png
      (class index per pixel: 0 background, 1..80 classes)"""


class CocoDataset(_ListedDataset):
    """COCO-20i: 80 classes, fold i tests labels {4k + i + 1}; episodes sample a class uniformly, then a query."""

    benchmark, num_classes, layout, list_prefix = "coco", 80, COCO_LAYOUT, "coco/fss_list"

    @staticmethod
    def test_classes(fold: int) -> list[int]:
        return [fold + 4 * k for k in range(20)]

    @staticmethod
    def _subset(name: str) -> str:
        return "val2014" if "val2014" in name else "train2014"

    def check_layout(self, sample_names: list[str]) -> None:
        subsets = sorted({self._subset(n) for n in sample_names}) or ["train2014", "val2014"]
        dirs = [f"COCO2014/{s}" for s in subsets] + [f"COCO2014/annotations/{s}" for s in subsets]
        _require_dirs(self.root, dirs, self.benchmark, self.layout)

    def read_image(self, name: str) -> np.ndarray:
        return _read_rgb(self.root / "COCO2014" / self._subset(name) / f"{name}.jpg", self.layout)

    def read_label(self, name: str) -> np.ndarray:
        return _read_label(self.root / "COCO2014" / "annotations" / self._subset(name) / f"{name}.png", self.layout)

    def sample(self, index: int, rng: np.random.Generator) -> EpisodeSpec:
        if self.split == "val":  # held-out queries of the training classes
            class_id = int(rng.choice([c for c in self.class_ids if self.val_queries.get(c)]))
            query = str(rng.choice(self.val_queries[class_id]))
        else:
            class_id = int(rng.choice(self.class_ids))
            query = str(rng.choice(self.classwise[class_id]))
        return EpisodeSpec(index, class_id, query, self._supports(rng, self.classwise[class_id], query, class_id))


FSS_LAYOUT = """  FSS-1000/<category>/<n>.jpg and <n>.png, n = 1..10   (mask: object >= 128 on a dark background)"""


class FssDataset(FewShotDataset):
    """FSS-1000: 520 / 240 / 240 categories for trn / val / test (class ids offset 0 / 520 / 760); every image
    of the split is a query (test: all 2400), supports are other images of its category."""

    benchmark, num_classes, layout = "fss", 1000, FSS_LAYOUT
    OFFSETS = {"trn": 0, "val": 520, "test": 760}

    def __init__(
        self,
        root: str | Path,
        fold: int,
        split: Split,
        shots: int,
        seed: int = 42,
        num_episodes: int | None = None,
        lists_dir: Path | None = None,
    ):
        super().__init__(split, shots, seed, num_episodes)
        if fold != 0:
            raise ValueError("fss: FSS-1000 has a single fold (0)")
        self.root = Path(root)
        _require_dirs(self.root, ["FSS-1000"], self.benchmark, self.layout)
        self.categories = sorted(read_names(f"fss/{split}.txt", lists_dir))
        offset = self.OFFSETS[split]
        self.class_ids = list(range(offset, offset + len(self.categories)))
        self.images: list[str] = []
        for cat in self.categories:
            folder = self.root / "FSS-1000" / cat
            if not folder.is_dir():
                raise DatasetLayoutError(
                    f"fss: category folder {folder} is missing\nexpected layout under {self.root}:\n{self.layout}"
                )
            paths = sorted(os.path.join(folder, f) for f in os.listdir(folder) if not f.startswith("."))
            self.images += [f"{cat}/{Path(p).stem}" for p in paths if Path(p).suffix == ".jpg"]
        if not self.images:
            raise DatasetLayoutError(
                f"fss: no <n>.jpg images under {self.root / 'FSS-1000'}\nexpected layout:\n{self.layout}"
            )

    def default_length(self) -> int:
        return len(self.images)

    def read_image(self, name: str) -> np.ndarray:
        return _read_rgb(self.root / "FSS-1000" / f"{name}.jpg", self.layout)

    def read_label(self, name: str) -> np.ndarray:
        path = self.root / "FSS-1000" / f"{name}.png"
        try:
            with Image.open(path) as im:
                return (np.asarray(im.convert("L")) >= 128).astype(np.uint8)
        except (OSError, ValueError) as e:
            raise DatasetLayoutError(f"cannot read mask {path}: {e}\nexpected layout:\n{self.layout}") from e

    def binary(self, label: np.ndarray, class_id: int, ignore: bool) -> np.ndarray:
        return label  # one object per image

    def support_pool(self, class_id: int) -> list[str]:
        cat = self.categories[class_id - self.OFFSETS[self.split]]
        return [f"{cat}/{i}" for i in range(1, 11)]

    def ways_label(self, label: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
        return label  # the query's object is its own category, class_ids[0]; other categories never appear

    def sample(self, index: int, rng: np.random.Generator) -> EpisodeSpec:
        query = self.images[index * len(self.images) // len(self)]  # all images, or evenly spread
        cat, qid = query.split("/")
        class_id = self.OFFSETS[self.split] + self.categories.index(cat)
        ids = rng.choice([i for i in range(1, 11) if i != int(qid)], self.shots, replace=False).tolist()
        return EpisodeSpec(index, class_id, query, tuple(f"{cat}/{i}" for i in ids))


class SyntheticDataset(FewShotDataset):
    """Generated in memory (runtime.tools.synthetic.class_image): 20 classes in 4 folds of 5 like PASCAL-5i,
    40 images per class, half of them with a second object of another class. `val` queries are images 36-39
    of the training classes (never used in `trn`); 100 test episodes by default."""

    benchmark, num_classes = "synthetic", 20
    IMAGES_PER_CLASS, VAL_IMAGES, TEST_EPISODES = 40, 4, 100

    def __init__(
        self,
        root: str | Path | None,
        fold: int,
        split: Split,
        shots: int,
        seed: int = 42,
        num_episodes: int | None = None,
        lists_dir: Path | None = None,
    ):
        super().__init__(split, shots, seed, num_episodes)
        if fold not in (0, 1, 2, 3):
            raise ValueError(f"synthetic: fold must be 0..3, got {fold}")
        self.fold = fold
        test_ids = [5 * fold + i for i in range(5)]
        self.class_ids = test_ids if split == "test" else [c for c in range(self.num_classes) if c not in test_ids]
        n_trn = self.IMAGES_PER_CLASS - self.VAL_IMAGES
        ids = range(self.IMAGES_PER_CLASS) if split == "test" else range(n_trn)
        self.pool = {c: [f"{c}/{i}" for i in ids] for c in self.class_ids}
        self.queries = (
            {c: [f"{c}/{i}" for i in range(n_trn, self.IMAGES_PER_CLASS)] for c in self.class_ids}
            if split == "val"
            else self.pool
        )

    def default_length(self) -> int:
        return sum(len(v) for v in self.pool.values()) if self.split == "trn" else self.TEST_EPISODES

    def _draw(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        c, i = (int(v) for v in name.split("/"))
        return class_image(c, i, self.num_classes)

    def read_image(self, name: str) -> np.ndarray:
        return self._draw(name)[0]

    def read_label(self, name: str) -> np.ndarray:
        return self._draw(name)[1]

    def support_pool(self, class_id: int) -> list[str]:
        return self.pool[class_id]

    def sample(self, index: int, rng: np.random.Generator) -> EpisodeSpec:
        class_id = int(rng.choice(self.class_ids))
        query = str(rng.choice(self.queries[class_id]))
        return EpisodeSpec(index, class_id, query, self._supports(rng, self.pool[class_id], query, class_id))


class ShapesDataset(FewShotDataset):
    """The `shapes` benchmark (runtime.tools.shapes): 20 classes, each a shape family x texture family with colours drawn
    per instance, in 4 folds of 5 like PASCAL-5i. `trn` images are unlimited (episode i of epoch e draws fresh image
    indices from its generator; an epoch is 4000 episodes); `val` and `test` draw from fixed pools of 40 / 60
    images per class (their own seed streams); 500 test episodes by default."""

    benchmark, num_classes = "shapes", shapes.NUM_CLASSES
    EPOCH, VAL_IMAGES, TEST_IMAGES, TEST_EPISODES, VAL_EPISODES = 4000, 40, 60, 500, 100

    def __init__(
        self,
        root: str | Path | None,
        fold: int,
        split: Split,
        shots: int,
        seed: int = 42,
        num_episodes: int | None = None,
        lists_dir: Path | None = None,
    ):
        super().__init__(split, shots, seed, num_episodes)
        novel = shapes.test_classes(fold)
        self.fold = fold
        self.class_ids = novel if split == "test" else [c for c in range(self.num_classes) if c not in novel]
        n = {"trn": 0, "val": self.VAL_IMAGES, "test": self.TEST_IMAGES}[split]
        self.pool = {c: [f"{split}/{c}/{i}" for i in range(n)] for c in self.class_ids}

    def default_length(self) -> int:
        return {"trn": self.EPOCH, "val": self.VAL_EPISODES, "test": self.TEST_EPISODES}[self.split]

    @functools.lru_cache(maxsize=64)  # noqa: B019 (a few images, read twice each: image and label)
    def _draw(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        split, c, i = name.split("/")
        return shapes.class_image(int(c), int(i), split, self.fold)

    def read_image(self, name: str) -> np.ndarray:
        return self._draw(name)[0]

    def read_label(self, name: str) -> np.ndarray:
        return self._draw(name)[1]

    def support_pool(self, class_id: int) -> list[str]:
        return self.pool[class_id]

    def sample(self, index: int, rng: np.random.Generator) -> EpisodeSpec:
        class_id = int(rng.choice(self.class_ids))
        if self.split == "trn":  # K + 1 distinct fresh images of the class
            ids = rng.choice(2**31, self.shots + 1, replace=False)
            names = [f"trn/{class_id}/{int(i)}" for i in ids]
            return EpisodeSpec(index, class_id, names[0], tuple(names[1:]))
        query = str(rng.choice(self.pool[class_id]))
        return EpisodeSpec(index, class_id, query, self._supports(rng, self.pool[class_id], query, class_id))


class InstancesDataset(FewShotDataset):
    """Class-agnostic pretraining episodes (runtime.tools.shapes.instance_image, the analogue of SAM2's video objects):
    the supports and the query are views of one object (a blob that is no class of `shapes`) in different scenes,
    among distractors that copy its outline or its look. One pseudo-class (0, "the object"); one fold (0).
    Objects of `trn` are unlimited, `val` and `test` have their own objects (100 episodes each by default)."""

    benchmark, num_classes = "shapes-instances", 1
    EPOCH, EPISODES = 4000, 100
    OFFSETS = {"trn": 0, "val": 2**31, "test": 2**31 + 2**20}

    def __init__(
        self,
        root: str | Path | None,
        fold: int,
        split: Split,
        shots: int,
        seed: int = 42,
        num_episodes: int | None = None,
        lists_dir: Path | None = None,
    ):
        super().__init__(split, shots, seed, num_episodes)
        if fold != 0:
            raise ValueError("shapes-instances: class-agnostic, a single fold (0)")
        self.fold, self.class_ids = 0, [0]

    def default_length(self) -> int:
        return self.EPOCH if self.split == "trn" else self.EPISODES

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def _draw(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        obj, view = name.split("/")
        return shapes.instance_image(int(obj), int(view))

    def read_image(self, name: str) -> np.ndarray:
        return self._draw(name)[0]

    def read_label(self, name: str) -> np.ndarray:
        return self._draw(name)[1]

    def support_pool(self, class_id: int) -> list[str]:
        return []

    def check_ways(self, ways: int) -> None:
        if ways != 1:
            raise ValueError("shapes-instances: one object per episode, --ways must be 1")

    def sample(self, index: int, rng: np.random.Generator) -> EpisodeSpec:
        obj = int(rng.integers(2**31)) if self.split == "trn" else self.OFFSETS[self.split] + index
        return EpisodeSpec(index, 0, f"{obj}/0", tuple(f"{obj}/{v}" for v in range(1, self.shots + 1)))


DATASETS: dict[str, type[FewShotDataset]] = {
    "pascal": PascalDataset,
    "coco": CocoDataset,
    "fss": FssDataset,
    "synthetic": SyntheticDataset,
    "shapes": ShapesDataset,
    "shapes-instances": InstancesDataset,
}

GENERATED = ("synthetic", "shapes", "shapes-instances")  # drawn in memory: no data root


def build_dataset(
    benchmark: str,
    root: str | Path | None,
    fold: int,
    split: Split,
    shots: int,
    seed: int = 42,
    num_episodes: int | None = None,
    lists_dir: Path | None = None,
) -> FewShotDataset:
    """The `split` episodes of `benchmark` (one of BENCHMARKS); `root` is unused for the GENERATED ones."""
    if benchmark not in DATASETS:
        raise ValueError(f"unknown dataset {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
    if benchmark not in GENERATED and root is None:
        raise ValueError(f"{benchmark} needs a data root (--data-root)")
    return DATASETS[benchmark](root, fold, split, shots, seed=seed, num_episodes=num_episodes, lists_dir=lists_dir)
