"""The manifest: the only contract between the exporter and the runtime.

`manifest.json` sits beside the four graphs and says everything the runtime may know about the model:
graph files (with sha256), I/O names/shapes/dtypes, precision, image size, normalisation, episode
constants, model config, source checkpoint and tool versions. Dynamic dimensions are strings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
GRAPH_NAMES = ("image_encoder", "memory_encoder", "memory_attention", "mask_decoder")


class ManifestError(ValueError):
    """The artifacts directory does not hold a usable manifest or graph set."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: list[int | str]  # str = dynamic axis name
    dtype: str  # numpy dtype name, e.g. "float32"


@dataclass(frozen=True)
class GraphSpec:
    file: str
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclass(frozen=True)
class ModelInfo:
    name: str  # e.g. "sam2.1_hiera_t"
    config: str  # sam2 hydra config, e.g. "configs/sam2.1/sam2.1_hiera_t.yaml"
    random_init: bool
    seed: int | None
    checkpoint: str | None
    checkpoint_sha256: str | None


@dataclass(frozen=True)
class Preprocess:
    image_size: int  # square model input, multiple of 32
    mean: list[float]  # applied to RGB in [0, 1]
    std: list[float]
    image_resample: str  # Pillow filter used to resize images to image_size
    mask_resample: str  # how support masks are resized to image_size


@dataclass(frozen=True)
class Episode:
    mask_logit_scale: float  # support mask m in {0,1} enters the memory encoder as m*scale+bias
    mask_logit_bias: float
    tokens_per_support: int  # memory tokens one support adds to the memory bank
    low_res_size: int  # side of the decoder's mask logits


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    precision: str
    model: ModelInfo
    preprocess: Preprocess
    episode: Episode
    graphs: dict[str, GraphSpec]
    tools: dict[str, str]
    created: str
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ManifestError(
                f"manifest schema version {version!r} is not supported by this runtime "
                f"(expects {SCHEMA_VERSION}); re-export the artifacts with a matching fssam2"
            )
        try:
            graphs = {
                name: GraphSpec(
                    file=g["file"],
                    sha256=g["sha256"],
                    inputs=[TensorSpec(**t) for t in g["inputs"]],
                    outputs=[TensorSpec(**t) for t in g["outputs"]],
                )
                for name, g in d["graphs"].items()
            }
            manifest = cls(
                schema_version=version,
                precision=d["precision"],
                model=ModelInfo(**d["model"]),
                preprocess=Preprocess(**d["preprocess"]),
                episode=Episode(**d["episode"]),
                graphs=graphs,
                tools=dict(d["tools"]),
                created=d["created"],
                notes=list(d.get("notes", [])),
            )
        except (KeyError, TypeError) as e:
            raise ManifestError(f"manifest is malformed: {e!r}") from e
        missing = [n for n in GRAPH_NAMES if n not in manifest.graphs]
        if missing:
            raise ManifestError(f"manifest lacks graphs: {', '.join(missing)}")
        pre = manifest.preprocess
        if (pre.image_resample, pre.mask_resample) != ("bicubic", "nearest"):
            raise ManifestError(f"resampling {pre.image_resample}/{pre.mask_resample} is not implemented by this runtime (bicubic/nearest)")
        return manifest


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_manifest(artifacts_dir: str | Path, verify_files: bool = True) -> Manifest:
    """Read and validate `artifacts_dir/manifest.json`; with `verify_files`, check every graph's sha256."""
    root = Path(artifacts_dir)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_NAME} in {root} (is this an fssam2-export output directory?)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path} is not valid JSON: {e}") from e
    manifest = Manifest.from_dict(data)
    if verify_files:
        for name, g in manifest.graphs.items():
            gp = root / g.file
            if not gp.is_file():
                raise ManifestError(f"graph '{name}' is missing: {gp}")
            if file_sha256(gp) != g.sha256:
                raise ManifestError(f"graph '{name}' ({gp}) does not match its sha256 in the manifest: corrupt or replaced")
    return manifest
