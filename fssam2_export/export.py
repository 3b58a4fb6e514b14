"""Export a loaded SAM2 model to the four ONNX graphs + manifest.json, atomically.

Everything is written into a temporary sibling directory and renamed onto `out_dir` only when every
graph exported and validated; a failed export leaves no partial artifacts behind.
"""

from __future__ import annotations

import dataclasses
import platform
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import onnx
import torch
from tqdm import tqdm

from runtime.engine.files import create_temp_dir, recover_dir, replace_dir
from runtime.engine.manifest import (
    GRAPH_NAMES,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    Episode,
    GraphSpec,
    Manifest,
    ModelInfo,
    Preprocess,
    TensorSpec,
    file_sha256,
)
from runtime.engine.versions import dist_version

from .engines import EngineSettings, build_engines
from .graphs import ImageEncoderGraph, MaskDecoderGraph, MemoryAttentionGraph, MemoryEncoderGraph
from .models import LoadedModel
from .onnx_passes import simplify_and_validate
from .ort_fusion import add_ort_flavours
from .reference import IMAGENET_MEAN, IMAGENET_STD

FP32_REFERENCE_DIR = "fp32-reference"  # inside the temp dir: the gate's reference, not kept
DEFAULT_OPSET = 17
MASK_LOGIT_SCALE, MASK_LOGIT_BIAS = 20.0, -10.0  # FS-SAM2: support mask {0,1} -> logits {-10, 10}


@dataclass(frozen=True)
class ExportReport:
    out_dir: Path
    manifest: Manifest
    seconds: dict[str, float]  # per graph export + validation time (+ calibration, conversion, gate)
    fidelity_table: str | None = None  # the gate's printed report, for reduced precision


class Conversion(Protocol):
    """What a converter returns (calibration.pipeline.ConversionResult)."""

    manifest: Manifest
    reports: dict  # per file set: an object with .table()
    seconds: dict[str, float]


# (fp32_dir, out_dir, progress) -> Conversion: writes reduced-precision graphs + manifest into out_dir, gated
Converter = Callable[[Path, Path, bool], Conversion]


def _tensor_specs(values) -> list[TensorSpec]:
    return [
        TensorSpec(
            v.name,
            [d.dim_param if d.dim_param else d.dim_value for d in v.type.tensor_type.shape.dim],
            onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
        )
        for v in values
    ]


def tool_versions(opset: int) -> dict[str, str]:
    versions = {d: dist_version(d) or "not installed" for d in ("fssam2", "torch", "sam2", "onnx", "onnxruntime")}
    return versions | {"python": platform.python_version(), "opset": str(opset), "exporter": "torch.onnx (TorchScript)"}


@torch.no_grad()
def _examples(loaded: LoadedModel, graphs: dict[str, torch.nn.Module]) -> dict[str, tuple[tuple, tuple]]:
    """(inputs, outputs) per graph, from running the wrappers on a fixed random image. The memory
    holds two supports so the exporter cannot specialise its length."""
    s = loaded.image_size
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, s, s, generator=g)
    mask_logits = torch.where(
        torch.rand(1, 1, s, s, generator=g) > 0.5, MASK_LOGIT_SCALE + MASK_LOGIT_BIAS, MASK_LOGIT_BIAS
    )
    ex = {"image_encoder": ((image,), graphs["image_encoder"](image))}
    f0, f1, embed, pos = ex["image_encoder"][1]
    ex["memory_encoder"] = ((embed, mask_logits), graphs["memory_encoder"](embed, mask_logits))
    memory, memory_pos = ex["memory_encoder"][1]
    args = (embed, pos, torch.cat([memory, -memory], 1), torch.cat([memory_pos, memory_pos], 1))
    ex["memory_attention"] = (args, (graphs["memory_attention"](*args),))
    args = (ex["memory_attention"][1][0], f0, f1)
    ex["mask_decoder"] = (args, graphs["mask_decoder"](*args))
    return ex


def build_graphs(loaded: LoadedModel) -> dict[str, torch.nn.Module]:
    sam = loaded.model
    graphs = {
        "image_encoder": ImageEncoderGraph(sam),
        "memory_encoder": MemoryEncoderGraph(sam),
        "memory_attention": MemoryAttentionGraph(sam, loaded.embed_size),
        "mask_decoder": MaskDecoderGraph(sam),
    }
    return {k: v.eval() for k, v in graphs.items()}


DYNAMIC_AXES = {"memory_attention": {"memory": {1: "num_memory_tokens"}, "memory_pos": {1: "num_memory_tokens"}}}


def export_artifacts(
    loaded: LoadedModel,
    out_dir: str | Path,
    *,
    convert: Converter | None = None,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    progress: bool = True,
    ort_optimize: bool = True,
    engines: EngineSettings | None = None,
) -> ExportReport:
    """Export `loaded` to `out_dir` (graphs + manifest.json). Refuses to replace a non-empty
    directory unless `overwrite`; the replacement happens only after a complete, valid export.

    Without `convert` the graphs are FP32. With it (reduced precision: `calibration.pipeline.converter`), the FP32
    graphs are exported into the temp dir first and `convert` writes the converted, gated graphs from them; the FP32
    reference is not kept and a failing gate raises and writes nothing.
    `ort_optimize` adds fused-attention flavours for ONNX Runtime (`ort_fusion`) to FP32 graphs (a converter adds
    its own, before its gate, so the gate judges them),
    and `engines` builds TensorRT engines from the final graphs (`engines.build_engines`)."""
    if not 9 <= opset <= 20:
        raise ValueError(f"opset {opset} is outside TensorRT 10's range 9-20")
    out = Path(out_dir)
    recover_dir(out)  # an earlier replace interrupted between its renames: its old copy is `out` again
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = create_temp_dir(out.parent, f".{out.name}.partial-")  # the umask's mode: artifacts are meant to be shared
    table = None
    try:
        if convert is None:
            manifest, seconds = _export_into(loaded, tmp, opset, progress)
        else:
            reference = tmp / FP32_REFERENCE_DIR
            reference.mkdir()
            _, seconds = _export_into(loaded, reference, opset, progress)
            result = convert(reference, tmp, progress)
            shutil.rmtree(reference)
            manifest, seconds = result.manifest, seconds | result.seconds
            table = "\n\n".join(f"[{k}]\n{r.table()}" for k, r in result.reports.items())
        if ort_optimize and convert is None:  # reduced precisions: made before their gate, which judges them
            t0 = time.perf_counter()
            graphs = add_ort_flavours(
                tmp, manifest.graphs, {"num_memory_tokens": manifest.episode.tokens_per_support}, progress
            )
            manifest = dataclasses.replace(manifest, graphs=graphs)
            (tmp / MANIFEST_NAME).write_text(manifest.to_json())
            seconds["ort_flavours"] = time.perf_counter() - t0
        if engines is not None:
            manifest = build_engines(tmp, engines, progress=progress).manifest
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportReport(out, manifest, seconds, table)


def _export_into(loaded: LoadedModel, tmp: Path, opset: int, progress: bool):
    graphs = build_graphs(loaded)
    examples = _examples(loaded, graphs)
    specs, seconds = {}, {}
    for name in tqdm(GRAPH_NAMES, desc="export", unit="graph", disable=not progress):
        t0 = time.perf_counter()
        module, path = graphs[name], tmp / f"{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about python-side shape arithmetic
            torch.onnx.export(
                module,
                examples[name][0],
                str(path),
                input_names=module.input_names,
                output_names=module.output_names,
                opset_version=opset,
                dynamic_axes=DYNAMIC_AXES.get(name),
                dynamo=False,
            )
        shapes = {n: list(t.shape) for n, t in zip(module.output_names, examples[name][1])}
        model = simplify_and_validate(path, shapes)
        specs[name] = GraphSpec(
            path.name, file_sha256(path), _tensor_specs(model.graph.input), _tensor_specs(model.graph.output)
        )
        seconds[name] = time.perf_counter() - t0
    src = loaded.source
    s, e = loaded.image_size, loaded.embed_size
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        precision="fp32",
        model=ModelInfo(
            name=src.name,
            config=src.config,
            random_init=src.random_init,
            seed=src.seed,
            checkpoint=str(src.checkpoint) if src.checkpoint else None,
            checkpoint_sha256=src.checkpoint_sha256,
            training=src.training_record,
            stability_fallback=src.stability_fallback,
        ),
        preprocess=Preprocess(s, list(IMAGENET_MEAN), list(IMAGENET_STD), "bicubic", "nearest"),
        episode=Episode(MASK_LOGIT_SCALE, MASK_LOGIT_BIAS, tokens_per_support=e * e, low_res_size=s // 4),
        graphs=specs,
        tools=tool_versions(opset),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        notes=["random-init weights: numerically valid, masks are not meaningful"] if src.random_init else [],
    )
    (tmp / MANIFEST_NAME).write_text(manifest.to_json())
    return manifest, seconds
