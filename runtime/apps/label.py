"""`fssam2 label`: segment every image of a collection with one or more support sets, resumably.

Outputs under `--out`: `masks/<relative path>.png` per image (0/255 for one class; for N classes a palette
PNG whose pixel values are the labels 1..N, 0 background), optionally `overlays/<relative path>.png`,
`results.jsonl` (one record per image, the job's journal), `results.parquet` with `--table parquet`, and
`job.json` (the classes and sets the outputs belong to).

Resuming: a record is appended to the journal only after the image's outputs were renamed into place, and
on start the journal is compacted to the records of images still in the job, unchanged (their fingerprint:
size and mtime, or sha256) and with their outputs present, so the table never lists an image whose mask is
missing or stale; a re-run skips those images and redoes the rest (failed images included). `job.json` holds
what the outputs depend on (the ordered classes and their sets, the model, its graphs, the provider,
`--overlay`): another job's `--out` is refused, naming what differs. The one-machine path (`run_local`) and the
Ray Data path (`label_ray.run_ray`) share `Labeler` (one image -> outputs + record) and `Journal`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import takewhile
from pathlib import Path

import numpy as np

from ..engine.errors import InputError
from ..engine.files import write_atomic
from ..engine.manifest import Manifest, file_sha256
from ..engine.progress import progress as progress_bar
from ..engine.support_set import Fingerprint, SupportSet
from .guard import ImageLimits, decode_image, read_bytes
from .render import overlay as draw_overlay
from .render import save_png
from .store import set_digest

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}
JOURNAL, JOB_FILE, PARQUET = "results.jsonl", "job.json", "results.parquet"


FINGERPRINTS = ("stat", "sha256")  # how an input is known to be unchanged: size + mtime, or its bytes' hash


@dataclass(frozen=True)
class Item:
    path: str  # the image as found (absolute)
    key: str  # its path relative to the `--images` base (posix); outputs are named after it


@dataclass(frozen=True)
class LabelJob:
    out: Path
    classes: tuple[str, ...]  # class names in label order (label i + 1)
    overlay: bool = False
    limits: ImageLimits = field(default_factory=ImageLimits)
    fingerprint: str = "stat"  # one of FINGERPRINTS

    def mask_path(self, key: str) -> Path:
        return self.out / "masks" / Path(key).with_suffix(".png")

    def overlay_path(self, key: str) -> Path:
        return self.out / "overlays" / Path(key).with_suffix(".png")

    def complete(self, record: Mapping) -> bool:
        """A record whose image is done: status ok and every output present."""
        key = record.get("key") if isinstance(record, dict) else None
        return (
            isinstance(key, str)
            and record.get("status") == "ok"
            and self.mask_path(key).exists()
            and (not self.overlay or self.overlay_path(key).exists())
        )


def collect_inputs(spec: str) -> list[Item]:
    """Images from a directory (recursively), a list file (`.txt`/`.lst`, one path a line, relative to the
    file's directory; blank lines and `#` comments skipped) or a glob (`**` recurses); sorted, no duplicates.
    Keys are the paths relative to the spec's base: the directory, the list file's directory, the glob's
    leading directories (an image outside it: its absolute path without the leading '/'), so adding an image
    never renames another's outputs. Two images may not share an output name."""
    p = Path(spec)
    if p.is_dir():
        base = p
        paths = [q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES]
    elif p.is_file() and p.suffix.lower() in {".txt", ".lst"}:
        base = p.parent
        lines = [s.strip() for s in p.read_text().splitlines()]
        paths = [(p.parent / s) for s in lines if s and not s.startswith("#")]
    elif p.is_file():
        base, paths = p.parent, [p]
    else:
        fixed = list(takewhile(lambda part: not glob.has_magic(part), p.parts))
        base = Path(*fixed) if fixed else Path(".")
        paths = [Path(q) for q in glob.glob(spec, recursive=True) if Path(q).is_file()]
    if not paths:
        raise InputError(f"no images found for {spec!r} (a directory, a .txt/.lst list file or a glob)")
    root = Path(os.path.abspath(base))
    paths = sorted({Path(os.path.abspath(q)) for q in paths})
    items = [
        Item(str(q), (q.relative_to(root) if q.is_relative_to(root) else q.relative_to("/")).as_posix()) for q in paths
    ]
    seen: dict[str, str] = {}
    for it in items:
        name = Path(it.key).with_suffix("").as_posix()
        if name in seen:
            raise InputError(f"{seen[name]} and {it.path} would write the same mask {name}.png")
        seen[name] = it.path
    return items


class Labeler:
    """Segments one image with the job's sets and writes its outputs; returns the image's record."""

    def __init__(self, segmenter, sets: Mapping[str, SupportSet], job: LabelJob):
        if tuple(sets) != job.classes:
            raise InputError(f"sets {list(sets)} do not match the job's classes {list(job.classes)}")
        self.seg, self.sets, self.job = segmenter, dict(sets), job

    def __call__(self, item: Item) -> dict:
        t0 = time.perf_counter()
        record: dict = {
            "path": item.path,
            "key": item.key,
            "mask": None,
            "width": None,
            "height": None,
            "fingerprint": None,
            "status": "ok",
            "error": None,
            "fg_area": None,
        }
        for name in self.job.classes:
            record.update({f"score.{name}": None, f"object_score.{name}": None, f"area.{name}": None})
        try:
            if self.job.fingerprint == "stat":  # before reading: a file changed meanwhile is redone next time
                record["fingerprint"] = input_fingerprint(item.path, "stat")
            data = read_bytes(item.path, self.job.limits)
            if self.job.fingerprint == "sha256":
                record["fingerprint"] = "sha256:" + hashlib.sha256(data).hexdigest()
            rgb = decode_image(data, item.path, self.job.limits)
            record["height"], record["width"] = rgb.shape[:2]
            result = self.seg.segment(rgb, self.sets)
            labels = result.label_map
            areas = np.bincount(labels.ravel(), minlength=len(self.job.classes) + 1)
            for i, (name, r) in enumerate(result.items(), 1):
                record.update(
                    {f"score.{name}": r.score, f"object_score.{name}": r.object_score, f"area.{name}": int(areas[i])}
                )
            record["fg_area"] = int(areas[1:].sum())
            if self.job.overlay:
                save_png(draw_overlay(rgb, labels, list(self.job.classes)), self.job.overlay_path(item.key))
            one = len(self.job.classes) == 1
            save_png(labels * np.uint8(255) if one else labels, self.job.mask_path(item.key), palette=not one)
            record["mask"] = self.job.mask_path(item.key).relative_to(self.job.out).as_posix()
        except Exception as e:  # any failure on one image (a backend's own error, MemoryError) is its failed record
            record.update(status="failed", error=f"{type(e).__name__}: {e}")
            for stale in (self.job.mask_path(item.key), self.job.overlay_path(item.key)):
                stale.unlink(missing_ok=True)  # an earlier version of the image's outputs
        record["ms"] = round((time.perf_counter() - t0) * 1e3, 3)
        return record


def input_fingerprint(path: str, kind: str) -> str | None:
    """What says an input is unchanged: `stat:<size>:<mtime_ns>` or `sha256:<hex>` (reads the file); None if it
    cannot be read."""
    try:
        if kind == "sha256":
            return "sha256:" + file_sha256(Path(path))
        st = os.stat(path)
        return f"stat:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return None


def model_identity(manifest: Manifest, provider: str) -> dict:
    """The model half of `job.json`: name, weights, size, precision, the graphs' sha256 and the provider."""
    graphs = hashlib.sha256("".join(f"{n}:{g.sha256};" for n, g in sorted(manifest.graphs.items())).encode())
    fingerprint = Fingerprint.of(manifest)
    return {
        "model": fingerprint.model,
        "weights": fingerprint.weights,
        "image_size": fingerprint.image_size,
        "precision": manifest.precision,
        "graphs": "sha256:" + graphs.hexdigest(),
        "provider": provider,
    }


def job_description(sets: Mapping[str, SupportSet], overlay: bool, model: Mapping) -> dict:
    """What `job.json` holds: the outputs of a re-run are interchangeable only if this is equal."""
    return {
        "format": 2,
        "classes": [[name, set_digest(s)] for name, s in sets.items()],  # in label order
        **model,
        "overlay": overlay,
    }


def _differences(old: dict, new: dict) -> list[str]:
    def short(v):
        return re.sub(r"([0-9a-f]{12})[0-9a-f]{52}", r"\1...", json.dumps(v))

    return [
        f"{k}: {short(old.get(k))} -> {short(new.get(k))}"
        for k in dict.fromkeys([*old, *new])
        if old.get(k) != new.get(k)
    ]


class Journal:
    """The results table as a JSON-lines journal, appended (and fsynced) one record per finished image; opening it
    compacts it to the records of `items` that are complete and current (`done`)."""

    def __init__(self, job: LabelJob, description: dict, items: list[Item]):
        import fcntl

        self.job = job
        job.out.mkdir(parents=True, exist_ok=True)
        self._lock = open(job.out / ".lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise InputError(f"another fssam2 label job is writing to {job.out}") from None
        for stale in [*job.out.glob("masks/**/.*.tmp"), *job.out.glob("overlays/**/.*.tmp")]:
            stale.unlink()  # cut short by a killed job
        self.path = job.out / JOURNAL
        desc_path = job.out / JOB_FILE
        if desc_path.exists():
            old = json.loads(desc_path.read_text())
            if old != description:
                self._lock.close()
                raise InputError(
                    f"{job.out} holds the outputs of another job ({'; '.join(_differences(old, description))}); "
                    "use another --out, or delete it to start over"
                )
        else:
            write_atomic(desc_path, (json.dumps(description, indent=2) + "\n").encode())
        (job.out / PARQUET).unlink(missing_ok=True)  # rewritten at the end: never a table of another run
        paths = {it.key: it.path for it in items}
        self.done = {
            r["key"]: r
            for r in self._read()
            if job.complete(r)
            and paths.get(r["key"]) == r.get("path")
            and r.get("fingerprint") is not None
            and r.get("fingerprint") == input_fingerprint(r["path"], job.fingerprint)
        }  # images gone from the job, changed or incomplete are dropped (and redone if still in it)
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.done.values()).encode())  # compacted
        self._file = open(self.path, "a")

    def _read(self) -> Iterator[dict]:
        if not self.path.exists():
            return
        for line in self.path.read_text().splitlines():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a killed job: the image is redone

    def append(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
        self._lock.close()

    def records(self) -> list[dict]:
        """The table: the last record of each image, in journal order."""
        last = {r["key"]: r for r in self._read()}
        return list(last.values())


def write_parquet(records: list[dict], path: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("--table parquet needs pyarrow: pip install 'fssam2[label]'") from None
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(records), sink)
    write_atomic(path, sink.getvalue().to_pybytes())


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    ms: list[float] = field(default_factory=list, repr=False)

    def add(self, record: dict) -> None:
        self.ms.append(record["ms"])
        if record["status"] == "ok":
            self.done += 1
        else:
            self.failed += 1

    def line(self) -> str:
        n = self.done + self.failed
        rate = n / self.seconds if self.seconds > 0 else 0.0
        p50, p99 = np.percentile(self.ms, [50, 99]) if self.ms else (0.0, 0.0)
        return (
            f"{self.done} done, {self.skipped} skipped (complete), {self.failed} failed; "
            f"{rate:.2f} images/s; per image p50 {p50:.0f} ms, p99 {p99:.0f} ms"
        )


def run_job(
    items: list[Item],
    job: LabelJob,
    sets: Mapping[str, SupportSet],
    process: Callable[[list[Item]], Iterable[dict]],
    model: Mapping,
    progress: bool = True,
    table: str = "jsonl",
) -> Summary:
    """Open the journal, skip complete images, feed the rest to `process` (which yields records as images
    finish, in any order), journal each record, write the table; the summary of this run. `model`: what
    `model_identity` says of the artifacts and provider the images are segmented with."""
    journal = Journal(job, job_description(sets, job.overlay, model), items)
    todo = [it for it in items if it.key not in journal.done]
    summary = Summary(skipped=len(items) - len(todo))
    bar = progress_bar(
        total=len(items), initial=summary.skipped, unit="img", desc="label", dynamic_ncols=True, enabled=progress
    )
    t0 = time.perf_counter()
    try:
        for record in process(todo):
            journal.append(record)
            summary.add(record)
            bar.update(1)
            bar.set_postfix(failed=summary.failed, refresh=False)
    finally:
        summary.seconds = time.perf_counter() - t0
        journal.close()
        bar.close()
    if table == "parquet":
        write_parquet(journal.records(), job.out / PARQUET)
    return summary


def run_local(labeler: Labeler, items: list[Item], **kwargs) -> Summary:
    """The one-machine path: images one after another through one segmenter."""
    model = model_identity(labeler.seg.manifest, labeler.seg.backend.provider)
    return run_job(items, labeler.job, labeler.sets, lambda todo: map(labeler, todo), model, **kwargs)
