"""Calibration data from few-shot episodes: every graph's real inputs, captured through the runtime.

The FP32 artifacts run over seeded K-shot episodes (K drawn from a range) inside the runtime's own
`FewShotSegmenter`, with a recording backend injected: synthetic ones by default, or training episodes of a
real benchmark (PASCAL-5i, COCO-20i, FSS-1000) read by the training package's loaders; so memory attention sees the
concatenated memories of K real supports, exactly as at inference. Feeds are stored as float16 in a
compressed `.npz` (plenty for calibration ranges; a feed that would overflow float16 is kept float32),
at most `max_samples` calls per graph. The same calls' MinMax ranges are collected while they run (`RangeBackend`),
from the exact float32 feeds: a capture is also the MinMax calibration pass. A loaded file has feeds only (its
ranges are computed from them).
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader
from onnxruntime.quantization.calibrate import TensorsData
from tqdm import tqdm

from runtime.backends.ort import OrtBackend
from runtime.engine.files import write_atomic
from runtime.engine.manifest import GRAPH_NAMES, file_sha256, load_manifest
from runtime.tools.fidelity import recording_segmenter, run_episode
from runtime.tools.synthetic import CALIBRATION_STREAM, Episode, synthetic_episodes

from .ranges import RangeBackend

FP16_MAX = 65504.0


@dataclass(frozen=True)
class CalibrationInfo:
    episodes: int
    seed: int
    shots: tuple[int, int]  # K range, inclusive
    dataset: str
    image_size: int
    samples: dict[str, int]  # stored calls per graph
    memory_tokens: list[int]  # memory length of each stored memory_attention call


@dataclass
class CalibrationData:
    info: CalibrationInfo
    feeds: dict[str, list[dict[str, np.ndarray]]]  # graph -> calls -> input name -> array
    ranges: dict[str, TensorsData] = field(default_factory=dict)  # graph -> MinMax ranges of the captured calls

    def save(self, path: str | Path) -> str:
        """Write a compressed .npz atomically (a later run loads it as it is); returns its sha256."""
        arrays = {
            f"{g}/{i:05d}/{k}": v
            for g, calls in self.feeds.items()
            for i, feeds in enumerate(calls)
            for k, v in feeds.items()
        }
        arrays["__info__"] = np.frombuffer(json.dumps(asdict(self.info)).encode(), np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return file_sha256(write_atomic(path, buf.getbuffer()))

    @classmethod
    def load(cls, path: str | Path) -> CalibrationData:
        with np.load(path) as z:
            d = json.loads(z["__info__"].tobytes())
            info = CalibrationInfo(**(d | {"shots": tuple(d["shots"])}))
            feeds: dict[str, list[dict[str, np.ndarray]]] = {g: [] for g in GRAPH_NAMES}
            for key in sorted(k for k in z.files if k != "__info__"):
                graph, idx, name = key.split("/")
                calls = feeds[graph]
                if len(calls) <= int(idx):
                    calls.append({})
                calls[int(idx)][name] = z[key]
        return cls(info, feeds)

    def reader(self, graph: str) -> CalibrationDataReader:
        """An onnxruntime.quantization data reader over one graph's stored calls (as float32)."""
        return _Reader(self.feeds[graph])


class _Reader(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds, self._it = feeds, iter(feeds)

    def get_next(self):
        feeds = next(self._it, None)
        return None if feeds is None else {k: v.astype(np.float32) for k, v in feeds.items()}

    def rewind(self):
        self._it = iter(self._feeds)

    def __len__(self):
        return len(self._feeds)


def _compact(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16) if a.dtype == np.float32 and np.abs(a).max(initial=0.0) < FP16_MAX else a


@dataclass(frozen=True)
class EpisodeSource:
    """Where calibration episodes come from: `synthetic`, or a benchmark of `training.datasets` under `root`."""

    dataset: str = "synthetic"
    root: Path | None = None
    fold: int = 0

    def episodes(
        self, count: int, seed: int, shots: tuple[int, int], size: int, stream: int = CALIBRATION_STREAM
    ) -> list[Episode]:
        """`count` episodes of `stream` (CALIBRATION_STREAM, or CHECK_STREAM for the gate's held-out episodes)."""
        if self.dataset == "synthetic":
            return synthetic_episodes(count, seed, shots, size, stream=stream)
        from training.datasets import build_dataset  # numpy + Pillow; the loaders of the training stage

        # training episodes (never the benchmark's test episodes), K drawn per episode from `shots`; the gate's stream
        # samples the training split with another seed
        data_seed = seed if stream == CALIBRATION_STREAM else int(np.random.default_rng([stream, seed]).integers(2**31))
        data = build_dataset(self.dataset, self.root, self.fold, "trn", shots[1], seed=data_seed, num_episodes=count)
        rng = np.random.default_rng([stream, seed])
        out = []
        for i in range(count):
            ep, k = data.episode(i), int(rng.integers(shots[0], shots[1] + 1))
            out.append(Episode(ep.supports[:k], ep.query))
        return out


def capture(
    fp32_artifacts: str | Path,
    episodes: int,
    seed: int,
    shots: tuple[int, int] = (1, 4),
    max_samples: int = 32,
    progress: bool = True,
    source: EpisodeSource = EpisodeSource(),
) -> CalibrationData:
    """Run `episodes` episodes of `source` through the FP32 artifacts and keep each graph's feeds."""
    if episodes < 1:
        raise ValueError("calibration needs at least one episode")
    manifest = load_manifest(fp32_artifacts, verify_files=False)  # the segmenter below verifies the files
    size = manifest.preprocess.image_size
    ranges = RangeBackend(OrtBackend("cpu"), max_samples)
    seg, rec = recording_segmenter(fp32_artifacts, ranges)
    feeds: dict[str, list[dict[str, np.ndarray]]] = {g: [] for g in GRAPH_NAMES}
    for ep in tqdm(
        source.episodes(episodes, seed, shots, size), desc="calibration", unit="episode", disable=not progress
    ):
        rec.clear()
        run_episode(seg, ep)
        for graph, calls in rec.calls.items():
            room = max_samples - len(feeds[graph])
            feeds[graph] += [{k: _compact(v) for k, v in call.items()} for call in calls[:room]]
    info = CalibrationInfo(
        episodes=episodes,
        seed=seed,
        shots=tuple(shots),
        dataset=source.dataset,
        image_size=size,
        samples={g: len(c) for g, c in feeds.items()},
        memory_tokens=[int(c["memory"].shape[1]) for c in feeds["memory_attention"]],
    )
    ranged = {g: ranges.ranges[s.file] for g, s in manifest.graphs.items() if s.file in ranges.ranges}
    return CalibrationData(info, feeds, ranged)  # a graph without ranges (max_samples 0) gets a MinMax pass later
