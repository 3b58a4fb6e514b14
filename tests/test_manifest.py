"""Manifest schema 2: v1 artifacts still load, flavours are picked per provider and checked."""

import json
import shutil

import pytest

from runtime import FewShotSegmenter, ManifestError, load_manifest
from runtime.engine.manifest import file_sha256


@pytest.fixture
def copied(artifacts, tmp_path):
    dst = tmp_path / "art"
    shutil.copytree(artifacts, dst)
    return dst


def _edit(path, fn):
    data = json.loads((path / "manifest.json").read_text())
    fn(data)
    (path / "manifest.json").write_text(json.dumps(data))


def test_export_writes_schema_3_with_per_graph_precision(artifacts):
    m = load_manifest(artifacts)
    assert m.schema_version == 3 and m.model.stability_fallback  # a random-init model: SAM2's default
    assert {g.precision for g in m.graphs.values()} == {"fp32"}
    for g in m.graphs.values():
        assert g.artifact_for("tensorrt").file == g.file and g.artifact_for("tensorrt").sha256 == g.sha256
        # ONNX Runtime's cpu/cuda providers get the fused-attention flavour where the graph has attention
        assert g.artifact_for("cpu") == g.artifact_for("cuda") == (g.flavours[0] if g.flavours else g.standard)


def test_schema_1_manifest_still_loads_and_runs(copied, episode):
    def to_v1(d):
        d["schema_version"] = 1
        d["model"].pop("stability_fallback")
        for k in ("calibration", "fidelity"):
            d.pop(k, None)
        for g in d["graphs"].values():
            g.pop("precision"), g.pop("flavours")

    _edit(copied, to_v1)
    seg = FewShotSegmenter(copied)
    assert (
        seg.manifest.schema_version == 1
        and seg.manifest.model.stability_fallback
        and seg.manifest.graphs["image_encoder"].precision == "fp32"
    )
    assert seg.segment(episode.query, seg.encode_supports(episode.supports[:1])).mask.any()


def test_flavour_is_picked_per_provider(copied):
    shutil.copy(copied / "mask_decoder.onnx", copied / "mask_decoder.cpu.onnx")
    sha = file_sha256(copied / "mask_decoder.onnx")

    def add(d):
        d["graphs"]["mask_decoder"]["flavours"] = [
            {
                "kind": "onnx",
                "file": "mask_decoder.cpu.onnx",
                "sha256": sha,
                "providers": ["cpu"],
                "precision": "fp32",
                "source_sha256": sha,
                "meta": {"made_by": "test"},
            }
        ]

    _edit(copied, add)
    loaded = []

    class Recording:
        name, provider = "recording", "cpu"

        def precision_for(self, graph, spec):
            return spec.precision

        def load(self, path, spec, graph):
            from runtime.backends import OrtBackend

            loaded.append(path.name)
            return OrtBackend("cpu").load(path, spec, graph)

    FewShotSegmenter(copied, backend=Recording())
    assert "mask_decoder.cpu.onnx" in loaded and "mask_decoder.onnx" not in loaded
    spec = load_manifest(copied).graphs["mask_decoder"]
    assert spec.artifact_for("cuda").file == "mask_decoder.onnx"
    assert spec.artifact_for("cpu").meta == {"made_by": "test"}


def test_stale_or_corrupt_flavour_is_refused(copied):
    shutil.copy(copied / "mask_decoder.onnx", copied / "mask_decoder.cpu.onnx")
    sha = file_sha256(copied / "mask_decoder.onnx")
    flavour = {
        "kind": "onnx",
        "file": "mask_decoder.cpu.onnx",
        "sha256": sha,
        "providers": ["cpu"],
        "precision": "fp32",
        "source_sha256": "0" * 64,
    }
    _edit(copied, lambda d: d["graphs"]["mask_decoder"].update(flavours=[flavour]))
    with pytest.raises(ManifestError, match="stale"):
        load_manifest(copied)
    flavour.update(source_sha256=sha, sha256="1" * 64)
    _edit(copied, lambda d: d["graphs"]["mask_decoder"].update(flavours=[flavour]))
    with pytest.raises(ManifestError, match="mask_decoder.cpu.onnx.*sha256"):
        load_manifest(copied)
    with pytest.raises(ManifestError, match="mask_decoder.cpu.onnx.*sha256"):
        FewShotSegmenter(copied)  # the cpu provider runs this flavour
    flavour.update(providers=["cuda"])
    _edit(copied, lambda d: d["graphs"]["mask_decoder"].update(flavours=[flavour]))
    FewShotSegmenter(copied)  # a segmenter reads only the files its provider runs
