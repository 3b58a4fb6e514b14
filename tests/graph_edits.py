"""Broken conversions for the gate tests: a graph whose outputs are scaled and shifted after the fact, and the
manifest entry of an edited graph."""

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from runtime.engine.manifest import MANIFEST_NAME, file_sha256


def rerecord(artifacts: Path, graph: str, **fields) -> None:
    """Record `graph`'s edited file in the manifest of `artifacts`: its sha256, no flavours (made from the old file),
    and `fields` (e.g. precision)."""
    manifest = json.loads((artifacts / MANIFEST_NAME).read_text())
    spec = manifest["graphs"][graph]
    spec |= {"sha256": file_sha256(artifacts / spec["file"]), "flavours": [], **fields}
    (artifacts / MANIFEST_NAME).write_text(json.dumps(manifest))


def edit_outputs(path, add: dict[str, np.ndarray | float], scale: dict[str, float] | None = None) -> None:
    """Make the graph at `path` multiply each named output by `scale[output]` (default 1) and add `add[output]` to it."""
    model = onnx.load(str(path))
    shapes = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    for out, value in add.items():
        tag = f"{out}_edit{len(model.graph.node)}"  # unique when a graph is edited twice
        producer = next(n for n in model.graph.node if out in n.output)
        producer.output[list(producer.output).index(out)] = tag
        const = np.broadcast_to(np.asarray(value, np.float32), shapes[out]).copy()
        factor = np.float32((scale or {}).get(out, 1.0))
        model.graph.initializer.extend(
            [numpy_helper.from_array(const, f"{tag}_add"), numpy_helper.from_array(np.asarray(factor), f"{tag}_scale")]
        )
        model.graph.node.extend(
            [
                helper.make_node("Mul", [tag, f"{tag}_scale"], [f"{tag}_scaled"]),
                helper.make_node("Add", [f"{tag}_scaled", f"{tag}_add"], [out], name=f"/edit/{tag}"),
            ]
        )
    onnx.save(model, str(path))
