"""The manifest: the only contract between the exporter and the runtime.

`manifest.json` sits beside the four graphs and says everything the runtime may know about the model:
graph files (with sha256), I/O names/shapes/dtypes, precision, image size, normalisation, episode
constants, model config, source checkpoint and tool versions. Dynamic dimensions are strings.

Schema 2 adds, per graph, its `precision` and `flavours`: alternative files of the same graph for
particular providers (an ORT-fused or CPU-quantised ONNX copy, a TensorRT engine). Precision variants,
ORT-optimised copies and engines are all flavours; the runtime picks one per graph and provider with
`GraphSpec.artifact_for` and runs it through the same backend interface. Schema 1 manifests still load
(all graphs fp32, no flavours).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ManifestError

SCHEMA_VERSION = 3
SUPPORTED_SCHEMAS = (1, 2, 3)
MANIFEST_NAME = "manifest.json"
GRAPH_NAMES = ("image_encoder", "memory_encoder", "memory_attention", "mask_decoder")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: list[int | str]  # str = dynamic axis name
    dtype: str  # numpy dtype name, e.g. "float32"


@dataclass(frozen=True)
class Flavour:
    """One file that implements a graph, and the providers it is meant for.

    `kind` is "onnx" or "tensorrt-engine"; `providers` lists runtime provider names ("cpu", "cuda",
    "tensorrt", "tensorrt-native") or "*" for any; `source_sha256` is the sha256 of the graph's standard
    ONNX it was derived from (a flavour whose source changed is stale and refused); `meta` holds what is
    specific to the kind (ORT version and fusions, TensorRT version, GPU, profiles, builder settings)."""

    kind: str
    file: str
    sha256: str
    providers: list[str]
    precision: str
    source_sha256: str
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class GraphSpec:
    file: str  # the standard ONNX graph: TensorRT-parsable, runs on every ORT provider
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    precision: str = "fp32"  # of the standard graph: fp32 | fp16 | int8 (QDQ)
    flavours: list[Flavour] = field(default_factory=list)  # provider-specific alternatives, preferred in order

    @property
    def standard(self) -> Flavour:
        """The standard graph, as a flavour for any provider."""
        return Flavour("onnx", self.file, self.sha256, ["*"], self.precision, self.sha256)

    def artifact_for(self, provider: str) -> Flavour:
        """The file to run on `provider`: the first flavour made for it, else the standard graph."""
        return next((f for f in self.flavours if provider in f.providers or "*" in f.providers), self.standard)


@dataclass(frozen=True)
class ModelInfo:
    name: str  # e.g. "sam2.1_hiera_t"
    config: str  # sam2 hydra config, e.g. "configs/sam2.1/sam2.1_hiera_t.yaml"
    random_init: bool
    seed: int | None
    checkpoint: str | None
    checkpoint_sha256: str | None
    training: dict | None = None  # schema 2: a merged FS-SAM2 checkpoint's record (base model, adapters, run), if any
    stability_fallback: bool = True  # schema 3: SAM2's stability fallback in mask_decoder (absent: on)


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
    calibration: dict | None = None  # schema 2: how reduced-precision graphs were calibrated
    fidelity: dict | None = None  # schema 2: the accuracy gate's figures against FP32

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        version = d.get("schema_version")
        if version not in SUPPORTED_SCHEMAS:
            raise ManifestError(
                f"manifest schema version {version!r} is not supported by this runtime "
                f"(reads {', '.join(map(str, SUPPORTED_SCHEMAS))}); re-export the artifacts with a matching fssam2"
            )
        try:
            graphs = {
                name: GraphSpec(
                    file=g["file"],
                    sha256=g["sha256"],
                    inputs=[TensorSpec(**t) for t in g["inputs"]],
                    outputs=[TensorSpec(**t) for t in g["outputs"]],
                    precision=g.get("precision", d["precision"]),
                    flavours=[Flavour(**f) for f in g.get("flavours", [])],
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
                calibration=d.get("calibration"),
                fidelity=d.get("fidelity"),
            )
        except (KeyError, TypeError) as e:
            raise ManifestError(f"manifest is malformed: {e!r}") from e
        missing = [n for n in GRAPH_NAMES if n not in manifest.graphs]
        if missing:
            raise ManifestError(f"manifest lacks graphs: {', '.join(missing)}")
        pre = manifest.preprocess
        if (pre.image_resample, pre.mask_resample) != ("bicubic", "nearest"):
            raise ManifestError(
                f"resampling {pre.image_resample}/{pre.mask_resample} is not implemented by this runtime (bicubic/nearest)"
            )
        return manifest


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def source_sha256(path: Path, spec: GraphSpec) -> str:
    """The manifest's sha256 of the file at `path` (one of the graph's files; hashed only if the manifest lacks it)."""
    return next((f.sha256 for f in [spec.standard, *spec.flavours] if f.file == Path(path).name), None) or file_sha256(
        path
    )


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
    for name, g in manifest.graphs.items():
        for f in g.flavours:
            if f.source_sha256 != g.sha256:
                raise ManifestError(
                    f"graph '{name}': flavour {f.file} was made from another version of {g.file} (stale); re-export"
                )
        if verify_files:
            for f in [g.standard, *g.flavours]:
                verify_file(root, name, f.file, f.sha256)
    return manifest


def verify_file(root: Path, graph: str, file: str, sha256: str) -> None:
    """Raise ManifestError if `root/file` is missing or its contents are not `sha256`."""
    path = root / file
    if not path.is_file():
        raise ManifestError(f"graph '{graph}' is missing: {path}")
    if file_sha256(path) != sha256:
        raise ManifestError(f"graph '{graph}' ({path}) does not match its sha256 in the manifest: corrupt or replaced")
