"""Bad input gets a clear error that names the problem, and leaves nothing half-written."""

import json
import shutil

import numpy as np
import pytest

from runtime import FewShotSegmenter, InputError, ManifestError, ProviderUnavailableError, load_manifest
from runtime.backends import OrtBackend
from runtime.engine.image import load_image, nearest_indices


@pytest.fixture
def copied(artifacts, tmp_path):
    dst = tmp_path / "art"
    shutil.copytree(artifacts, dst)
    return dst


@pytest.fixture(scope="module")
def rgb(episode):
    return load_image(episode.query)


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros((32, 32, 3), np.float32), "uint8"),
        (np.zeros((32, 32), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((32, 32, 4), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((1, 32, 32, 3), np.uint8), r"\(H, W, 3\)"),
        ("no/such/image.png", "cannot read image"),
        (12, "path, PIL image or numpy array"),
    ],
)
def test_bad_images(seg, bad, match):
    with pytest.raises(InputError, match=match):
        seg.encode_support(bad, np.ones((32, 32), bool))


def test_segment_needs_a_support_set(seg, rgb):
    with pytest.raises(InputError, match="a SupportSet or a mapping"):
        seg.segment(rgb, None)


def test_mask_must_match_its_image(seg, rgb):
    with pytest.raises(InputError, match="mask is"):
        seg.encode_support(rgb, np.ones((rgb.shape[0] + 1, rgb.shape[1]), bool))
    with pytest.raises(InputError, match="2-D"):
        seg.encode_support(rgb, np.ones(rgb.shape, bool))
    with pytest.raises(InputError, match="bool or integer"):
        seg.encode_support(rgb, np.ones(rgb.shape[:2], np.float32))


def test_empty_mask_is_an_error_and_full_mask_a_warning(seg, rgb):
    with pytest.raises(InputError, match="empty"):
        seg.encode_support(rgb, np.zeros(rgb.shape[:2], bool))
    tiny = np.zeros(rgb.shape[:2], bool)
    row = min(set(range(rgb.shape[0])) - set(nearest_indices(rgb.shape[0], 256)))
    tiny[row, :] = True  # a row that nearest resizing to the model size skips
    with pytest.raises(InputError, match="vanishes"):
        seg.encode_support(rgb, tiny)
    with pytest.warns(UserWarning, match="whole image"):
        assert seg.encode_support(rgb, np.ones(rgb.shape[:2], bool)).shots == 1


def test_missing_graph_file(copied):
    (copied / load_manifest(copied, verify_files=False).graphs["mask_decoder"].artifact_for("cpu").file).unlink()
    with pytest.raises(ManifestError, match="mask_decoder.*missing"):
        FewShotSegmenter(copied)


def test_corrupt_graph_file(copied):
    with open(copied / "memory_encoder.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00garbage\x00")
    with pytest.raises(ManifestError, match="memory_encoder.*sha256"):
        FewShotSegmenter(copied)


def test_other_schema_version(copied):
    path = copied / "manifest.json"
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="schema version 99"):
        FewShotSegmenter(copied)


def test_unknown_resampling_is_refused(copied):
    path = copied / "manifest.json"
    data = json.loads(path.read_text())
    data["preprocess"]["image_resample"] = "lanczos"
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="lanczos"):
        FewShotSegmenter(copied)


def test_malformed_and_missing_manifest(copied, tmp_path):
    (copied / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        FewShotSegmenter(copied)
    (copied / "manifest.json").write_text(json.dumps({"schema_version": 1, "graphs": {}}))
    with pytest.raises(ManifestError, match="malformed"):
        FewShotSegmenter(copied)
    with pytest.raises(ManifestError, match="no manifest.json"):
        FewShotSegmenter(tmp_path / "nowhere")


def test_providers_never_fall_back_silently():
    import onnxruntime as ort

    with pytest.raises(ValueError, match="unknown provider"):
        OrtBackend("gpu0")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the refusal path needs a CPU-only build")
    with pytest.raises(ProviderUnavailableError, match="CUDAExecutionProvider"):
        OrtBackend("cuda")
    with pytest.raises(ProviderUnavailableError, match="TensorrtExecutionProvider"):
        OrtBackend("tensorrt")


def test_every_runtime_error_derives_from_one_exported_base():
    """One `except runtime.Error` catches everything the runtime raises on purpose; no bare built-in raises."""
    import ast
    import inspect
    from pathlib import Path

    import runtime
    from runtime.engine import errors

    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert len(classes) >= 9 and all(issubclass(c, runtime.Error) and c.__name__ in runtime.__all__ for c in classes)
    builtin = {"Exception", "RuntimeError", "ValueError", "TypeError", "KeyError", "OSError"}
    for path in Path(runtime.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
                assert node.exc.func.id not in builtin, f"{path.name}:{node.lineno} raises a bare {node.exc.func.id}"
            if isinstance(node, ast.ClassDef) and any(getattr(b, "id", "") in builtin for b in node.bases):
                assert path.name == "errors.py", f"{path.name} defines {node.name} outside runtime.engine.errors"
