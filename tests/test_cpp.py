"""libfssam2 (runtime/cpp): built once per session with CMake, driven through its C API with ctypes.

The C++ runtime must equal the Python runtime on the same artifacts and pixels (images decoded by Pillow
here and passed as raw RGB): preprocessing, mask resizing and logit upsampling bit for bit, episodes
within float tolerance. Bad input gives status codes + messages (fssam2_capi_check, also under
ASan/UBSan). Needs cmake, a C++17 compiler, nlohmann-json3-dev, libstb-dev and third_party/onnxruntime
(scripts/setup.sh installs them); without them these tests skip, or fail when FSSAM2_REQUIRE_CPP=1 (CI).
"""

from __future__ import annotations

import ctypes as C
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import PIL
import pytest
import support_set_files
from conftest import unavailable
from image_fakes import blocky_grey, oriented_jpeg
from PIL import Image

from bench.libfssam2 import (
    INVALID,
    MANIFEST,
    OK,
    PROVIDER,
    RUNTIME,
    SUPPORT_SET,
    CppError,
    CppSegmenter,
    Options,
    OptionsV1,
    load,
    view,
)
from runtime import SupportSet
from runtime.engine.image import load_image, load_mask, postprocess_logits, preprocess_image, resize_mask
from runtime.engine.results import label_map

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "runtime" / "cpp"
ORT_ROOT = Path(os.environ.get("FSSAM2_ONNXRUNTIME_ROOT", ROOT / "third_party" / "onnxruntime"))
BUILD = ROOT / "build" / "cpp"
BUILD_ASAN = ROOT / "build" / "cpp-asan"
BUILD_TSAN = ROOT / "build" / "cpp-tsan"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _unavailable(reason: str):
    unavailable(f"C++ runtime: {reason}", "FSSAM2_REQUIRE_CPP")


def _cmake_build(build_dir: Path, *options: str, target: str | None = None) -> None:
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    steps = [
        ["cmake", "-S", str(SOURCE), "-B", str(build_dir), *generator, f"-DONNXRUNTIME_ROOT={ORT_ROOT}", *options],
        ["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 2), *(["--target", target] if target else [])],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            pytest.fail(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")


@pytest.fixture(scope="session")
def cpp_build() -> Path:
    missing = [tool for tool in ("cmake", "c++") if not shutil.which(tool)]
    if missing:
        _unavailable(f"{', '.join(missing)} not found (scripts/setup.sh installs the toolchain)")
    if not (ORT_ROOT / "include" / "onnxruntime_cxx_api.h").is_file():
        _unavailable(f"no ONNX Runtime in {ORT_ROOT}: run bash scripts/get_onnxruntime.sh")
    for header in ("/usr/include/nlohmann/json.hpp", "/usr/include/stb/stb_image.h"):
        if not Path(header).is_file():
            _unavailable(f"{header} missing: apt-get install nlohmann-json3-dev libstb-dev")
    _cmake_build(BUILD)
    return BUILD


@pytest.fixture(scope="session")
def lib(cpp_build) -> C.CDLL:
    return load(cpp_build / "libfssam2.so")


@pytest.fixture(scope="session")
def cpp_seg(lib, artifacts):
    seg = CppSegmenter(lib, artifacts)
    yield seg
    seg.close()


def _test_images(episode) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    images = {p.name: load_image(p) for p, _ in episode.supports}
    images["query"] = load_image(episode.query)
    for h, w in [
        (37, 53),
        (1000, 300),
        (300, 1000),
        (300, 260),
        (300, 280),
        (768, 512),
        (256, 256),
        (256, 400),
        (120, 256),
        (400, 256),
        (1, 1),
        (600, 257),
    ]:
        images[f"random{h}x{w}"] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return images


def test_preprocess_equals_pillow_numpy(cpp_seg, episode):
    """Pillow BICUBIC (up- and antialiased downscaling, one pass or two, either pass order) + normalisation:
    bit-exact with Pillow >= 13. Pillow <= 12 always resamples horizontally first, so where Pillow 13 goes
    vertical first (the height shrinks by more than twice as many pixels as the width) a pixel may differ
    by one 8-bit level."""
    pillow13 = int(PIL.__version__.split(".")[0]) >= 13
    for name, rgb in _test_images(episode).items():
        expected = preprocess_image(rgb, 256, MEAN, STD)
        h, w = rgb.shape[:2]
        if pillow13 or not (h - 256 > 0 and h - 256 > (w - 256) * 2):
            np.testing.assert_array_equal(cpp_seg.preprocess(rgb, 256), expected, err_msg=name)
        else:
            np.testing.assert_allclose(cpp_seg.preprocess(rgb, 256), expected, rtol=0, atol=1.01 / 255 / min(STD))


def test_mask_resize_equals_python(lib):
    rng = np.random.default_rng(4)
    for h, w in [(240, 320), (333, 97), (1000, 1000), (256, 256), (31, 64), (1, 1)]:
        m = (rng.random((h, w)) > 0.5).astype(np.uint8) * 255
        out = np.zeros((256, 256), np.uint8)
        assert lib.fssam2_resize_mask(view(m), 256, out.ctypes.data, out.size) == OK
        np.testing.assert_array_equal(out.astype(bool), resize_mask(m != 0, 256), err_msg=f"{h}x{w}")


def test_postprocess_equals_python(lib):
    """Two-step bilinear upsampling (align_corners False, then True), float32 separable: bit-exact."""
    low = np.random.default_rng(5).normal(0, 4, (64, 64)).astype(np.float32)
    for h, w in [(240, 320), (333, 97), (1000, 1000), (256, 256), (1, 7)]:
        out = np.zeros((h, w), np.float32)
        assert lib.fssam2_postprocess_logits(low.ctypes.data, 64, 64, 256, h, w, out.ctypes.data, out.size) == OK
        np.testing.assert_array_equal(out, postprocess_logits(low, 256, (h, w)), err_msg=f"{h}x{w}")


@pytest.mark.parametrize("shots", [1, 5])
def test_episode_matches_python_runtime(cpp_seg, seg, episode, shots, record_metric):
    cpp_seg.lib.fssam2_reset(cpp_seg.handle)
    for image, mask in episode.supports[:shots]:
        cpp_seg.add_support(load_image(image), load_mask(mask))
    expected = seg.segment(episode.query, seg.encode_supports(episode.supports[:shots]))
    mask, logits, res = cpp_seg.segment(load_image(episode.query))
    assert res.num_supports == shots
    iou = (mask & expected.mask).sum() / max((mask | expected.mask).sum(), 1)
    max_abs = float(np.abs(logits - expected.logits).max())
    record_metric(f"cpp vs python K={shots} mask IoU", iou)
    record_metric(f"cpp vs python K={shots} logits max-abs", max_abs)
    assert iou >= 0.999 and max_abs <= 1e-4, (iou, max_abs)
    assert abs(res.score - expected.score) <= 1e-4 and abs(res.object_score - expected.object_score) <= 1e-4
    np.testing.assert_array_equal(mask, logits > 0)


def _variant(artifacts: Path, dest: Path, edit) -> Path:
    """A copy of the artifacts directory (graphs symlinked) whose manifest dict goes through `edit`."""
    dest.mkdir(parents=True)
    for f in artifacts.glob("*.onnx"):
        (dest / f.name).symlink_to(f)
    manifest = json.loads((artifacts / "manifest.json").read_text())
    edit(manifest, dest)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def test_schema_1_manifest_loads(lib, seg, artifacts, episode, tmp_path):
    """A schema-1 manifest (no precisions, no flavours: the standard graphs) segments as the schema-2 one does: the
    C++ runtime on the schema-1 copy against the Python runtime on the artifacts themselves."""

    def to_v1(m, _):
        m["schema_version"] = 1
        for key in ("calibration", "fidelity"):
            m.pop(key, None)
        for g in m["graphs"].values():
            g.pop("precision", None), g.pop("flavours", None)

    v1 = CppSegmenter(lib, _variant(artifacts, tmp_path / "v1", to_v1))
    v1.add_support(load_image(episode.supports[0][0]), load_mask(episode.supports[0][1]))
    mask, logits, res = v1.segment(load_image(episode.query))
    v1.close()
    expected = seg.segment(episode.query, seg.encode_supports(episode.supports[:1]))
    assert res.num_supports == 1 and abs(res.score - expected.score) <= 1e-4
    assert np.abs(logits - expected.logits).max() <= 1e-4, np.abs(logits - expected.logits).max()
    _same_masks(mask, expected.mask, expected.logits)


def test_flavour_selection(lib, artifacts, tmp_path):
    """The first ONNX flavour for the provider (or "*") is loaded; engines and other providers' flavours are not."""

    def with_flavours(providers: list[str], kind: str = "onnx", stale: bool = False):
        def edit(m, dest):
            (dest / "decoder_flavour.onnx").write_bytes(b"not a graph")  # loading it fails: proves it was picked
            g = m["graphs"]["mask_decoder"]
            flavour = dict(
                kind=kind,
                file="decoder_flavour.onnx",
                sha256="0" * 64,
                providers=providers,
                precision="fp32",
                source_sha256="f" * 64 if stale else g["sha256"],
                meta={},
            )
            g["flavours"] = [flavour]

        return edit

    def create(name, edit):
        try:
            CppSegmenter(lib, _variant(artifacts, tmp_path / name, edit), verify_sha256=False).close()
        except CppError as e:
            return e
        return None

    picked = create("cpu", with_flavours(["cpu"]))
    assert picked and picked.status == RUNTIME and "decoder_flavour.onnx" in picked.message
    picked = create("star", with_flavours(["*"]))
    assert picked and picked.status == RUNTIME and "decoder_flavour.onnx" in picked.message
    assert create("cuda_only", with_flavours(["cuda"])) is None
    assert create("engine", with_flavours(["*"], kind="tensorrt-engine")) is None
    stale = create("stale", with_flavours(["cpu"], stale=True))
    assert stale and stale.status == MANIFEST and "stale" in stale.message


@pytest.mark.parametrize("provider", ["cuda", "tensorrt", "gpu"])
def test_absent_provider_is_an_error(lib, artifacts, provider):
    with pytest.raises(CppError) as e:
        CppSegmenter(lib, artifacts, provider=provider)
    assert e.value.status == PROVIDER and provider in e.value.message


def test_support_mask_that_vanishes(cpp_seg):
    rgb = np.zeros((1024, 1024, 3), np.uint8)
    mask = np.zeros((1024, 1024), np.uint8)
    mask[1, 1] = 1  # nearest-resizing 1024 -> 256 samples rows/columns 0, 4, 8, ...
    with pytest.raises(CppError) as e:
        cpp_seg.add_support(rgb, mask)
    assert e.value.status == INVALID and "vanishes" in e.value.message


@pytest.fixture(scope="session")
def bad_artifacts(artifacts, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_artifacts")
    (root / "no_manifest").mkdir()
    _variant(artifacts, root / "not_json", lambda m, d: None)
    (root / "not_json" / "manifest.json").write_text("{oops")
    _variant(artifacts, root / "schema99", lambda m, d: m.update(schema_version=99))
    _variant(artifacts, root / "missing_graph", lambda m, d: (d / "mask_decoder.onnx").unlink())

    def corrupt(m, d):
        (d / "memory_encoder.onnx").unlink()
        (d / "memory_encoder.onnx").write_bytes(b"not an onnx file" * 8)

    _variant(artifacts, root / "corrupt_graph", corrupt)
    return root


def _run_check(binary: Path, artifacts: Path, bad: Path, env=None) -> str:
    proc = subprocess.run([str(binary), str(artifacts), str(bad)], capture_output=True, text=True, env=env, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "passed:" in out, out[-6000:]
    return out


def test_c_api_contract(cpp_build, artifacts, bad_artifacts):
    """Null pointers, zero sizes, mask size mismatch, segment before support, broken artifacts, unknown
    provider: status + message, no crash; two handles in two threads equal serial runs (bitwise)."""
    out = _run_check(cpp_build / "fssam2_capi_check", artifacts, bad_artifacts)
    for case in ("segment before support", "mask size mismatch", "schema99", "corrupt_graph", "provider quantum"):
        assert case in out


def test_c_api_contract_under_asan_ubsan(cpp_build, artifacts, bad_artifacts):
    if (
        not shutil.which("c++")
        or subprocess.run(
            ["c++", "-fsanitize=address", "-x", "c++", "-", "-o", os.devnull],
            input="int main(){}",
            text=True,
            capture_output=True,
        ).returncode
    ):
        _unavailable("the C++ compiler cannot build with -fsanitize=address")
    _cmake_build(
        BUILD_ASAN,
        "-DFSSAM2_SANITIZE=ON",
        "-DFSSAM2_BUILD_TOOLS=OFF",
        "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
        target="fssam2_capi_check",
    )
    env = dict(
        os.environ,
        ASAN_OPTIONS="detect_leaks=1:abort_on_error=1",
        UBSAN_OPTIONS="print_stacktrace=1",
        LSAN_OPTIONS=f"suppressions={SOURCE / 'tests' / 'lsan.supp'}",
    )
    out = _run_check(BUILD_ASAN / "fssam2_capi_check", artifacts, bad_artifacts, env=env)
    assert "ERROR: AddressSanitizer" not in out and "runtime error" not in out


@pytest.mark.slow
def test_c_api_contract_under_tsan(cpp_build, artifacts, bad_artifacts):
    """The threading contract under ThreadSanitizer: one handle from 4 threads with mixed sets, two handles in two
    threads. libonnxruntime itself is not instrumented (its internal synchronisation is invisible to TSan), so
    this checks libfssam2's own state and the caller-visible buffers."""
    if (
        not shutil.which("c++")
        or subprocess.run(
            ["c++", "-fsanitize=thread", "-x", "c++", "-", "-o", os.devnull],
            input="int main(){}",
            text=True,
            capture_output=True,
        ).returncode
    ):
        _unavailable("the C++ compiler cannot build with -fsanitize=thread")
    _cmake_build(
        BUILD_TSAN,
        "-DFSSAM2_SANITIZE=thread",
        "-DFSSAM2_BUILD_TOOLS=OFF",
        "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
        target="fssam2_capi_check",
    )
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 report_signal_unsafe=0")
    out = _run_check(BUILD_TSAN / "fssam2_capi_check", artifacts, bad_artifacts, env=env)
    assert "ThreadSanitizer" not in out


def test_tools_and_example(cpp_build, artifacts, seg, episode, tmp_path):
    out = tmp_path / "pred.png"
    supports = [a for image, mask in episode.supports[:2] for a in ("--support", str(image), str(mask))]
    proc = subprocess.run(
        [
            str(cpp_build / "fssam2_segment"),
            "--artifacts",
            str(artifacts),
            *supports,
            "--query",
            str(episode.query),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    expected = seg.segment(episode.query, seg.encode_supports(episode.supports[:2])).mask
    got = np.asarray(Image.open(out)) > 0
    assert got.shape == expected.shape
    assert (got & expected).sum() / max((got | expected).sum(), 1) >= 0.999

    # a saved set gives the same mask; N-way with the same set twice labels it 1 (ties to the lower index)
    tool = [str(cpp_build / "fssam2_segment"), "--artifacts", str(artifacts), "--query", str(episode.query)]
    set_path, again, labels = tmp_path / "s.fssam2", tmp_path / "again.png", tmp_path / "labels.png"
    for args in (
        [*supports, "--save-set", str(set_path), "--out", str(again)],
        ["--support-set", str(set_path), "--out", str(again)],
        ["--class", f"a={set_path}", "--class", f"b={set_path}", "--out", str(labels)],
    ):
        proc = subprocess.run([*tool, *args], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert (np.asarray(Image.open(again)) > 0).tolist() == got.tolist()
    label_map = np.asarray(Image.open(labels))
    assert set(np.unique(label_map)) == {0, 1} and ((label_map == 1) == got).all() and "a " in proc.stdout
    bad_set = subprocess.run(
        [*tool, "--support-set", str(tmp_path / "none.fssam2"), "--out", str(again)], capture_output=True, text=True
    )
    assert bad_set.returncode == 2 and "none.fssam2" in bad_set.stderr

    proc = subprocess.run(
        [
            str(cpp_build / "fssam2_bench"),
            "--artifacts",
            str(artifacts),
            "--shots",
            "1",
            "2",
            "--queries",
            "2",
            "--warmup",
            "0",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["shots"] for r in rows] == [1, 2] and all(r["query_ms_mean"] > 0 for r in rows)

    bad = subprocess.run(
        [
            str(cpp_build / "fssam2_segment"),
            "--artifacts",
            str(tmp_path),
            "--support",
            "a",
            "b",
            "--query",
            "q",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "error" in bad.stderr

    for example in ("fssam2_example", "fssam2_example_c"):
        proc = subprocess.run([str(cpp_build / example), str(artifacts)], capture_output=True, text=True)
        assert proc.returncode == 0 and "px foreground" in proc.stdout, proc.stderr
    assert (SOURCE / "examples" / "minimal.cpp").read_text() in (ROOT / "README.md").read_text(), (
        "README example is stale"
    )


def test_exif_orientation_gives_the_python_masks(cpp_build, seg, episode, artifacts, tmp_path):
    """A phone JPEG stores its pixels sideways and an EXIF Orientation tag (1-8): the C++ tool turns them upright as
    the Python runtime does, so both segment the same pixels (flat 8x8 blocks: both JPEG decoders give them back
    exactly) and give the same mask; a PNG's eXIf chunk too."""
    upright = blocky_grey(load_image(episode.query))
    rgb = np.repeat(upright[..., None], 3, axis=2)
    support_set = seg.encode_supports(episode.supports[:2])
    support_set.save(tmp_path / "s.fssam2")
    expected = seg.segment(rgb, support_set)
    tool = [
        str(cpp_build / "fssam2_segment"),
        "--artifacts",
        str(artifacts),
        "--support-set",
        str(tmp_path / "s.fssam2"),
    ]
    files = {f"o{o}.jpg": oriented_jpeg(upright, o) for o in range(1, 9)}
    sideways = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # ROTATE_270 turns it upright
    buf = io.BytesIO()
    sideways.save(buf, format="PNG", exif=exif.tobytes())
    files["o6.png"] = buf.getvalue()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        np.testing.assert_array_equal(load_image(tmp_path / name), rgb, err_msg=name)  # Python reads it upright
        proc = subprocess.run(
            [*tool, "--query", str(tmp_path / name), "--out", str(tmp_path / f"{name}.mask.png")],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        mask = np.asarray(Image.open(tmp_path / f"{name}.mask.png")) > 0
        assert mask.shape == expected.mask.shape, name
        _same_masks(mask, expected.mask, expected.logits)


# Support sets across languages (docs/support-sets.md): Python's SupportSet against libfssam2's.


def _same_masks(a: np.ndarray, b: np.ndarray, logits: np.ndarray, tol: float = 1e-4) -> None:
    """Masks identical except where the logit is within the runtimes' float tolerance of 0 (ORT versions differ)."""
    differ = a != b
    assert not differ.any() or np.abs(logits[differ]).max() <= tol, (differ.sum(), np.abs(logits[differ]).max())
    assert 0.05 < a.mean() < 0.95, f"degenerate mask ({a.mean():.3f} foreground): the comparison would not see errors"


def test_support_set_written_by_python_loads_in_cpp(cpp_seg, seg, artifacts, episode, tmp_path, record_metric):
    """A set written by Python gives C++ the Python masks, and C++ writes it back unchanged."""
    py, support_set = seg, seg.encode_supports(episode.supports[:2])
    path = tmp_path / "py.fssam2"
    support_set.save(path)
    handle = cpp_seg.load_set(path)
    try:
        mask, logits, res = cpp_seg.segment_set(handle, load_image(episode.query))
        expected = py.segment(episode.query, support_set)
        _same_masks(mask, expected.mask, expected.logits)
        record_metric("cpp(python set) vs python logits max-abs", float(np.abs(logits - expected.logits).max()))
        assert np.abs(logits - expected.logits).max() <= 1e-4 and res.num_supports == 2
        again = tmp_path / "again.fssam2"
        cpp_seg.save_set(handle, again)
    finally:
        cpp_seg.free_set(handle)
    (ours, our_meta), (theirs, their_meta) = support_set_files.read_set(path), support_set_files.read_set(again)
    assert our_meta == their_meta
    for name, value in ours.items():
        assert theirs[name].dtype == value.dtype, name
        np.testing.assert_array_equal(theirs[name], value, err_msg=name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.fssam2", "py.fssam2"], "temporary files left behind"
    assert again.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_written_files_take_the_umask_mode(cpp_build, cpp_seg, seg, episode, artifacts, tmp_path, mask):
    """libfssam2's set writer and the tool's mask PNG make files with 0666 less the umask, as Python's writes do
    (not mkstemp's 0600, nor a fixed 0644 that ignores a stricter umask)."""
    path = seg.encode_supports(episode.supports[:1]).save(tmp_path / "py.fssam2")
    handle = cpp_seg.load_set(path)
    old = os.umask(mask)
    try:
        cpp_seg.save_set(handle, tmp_path / "cpp.fssam2")
    finally:
        os.umask(old)
        cpp_seg.free_set(handle)
    tool = [str(cpp_build / "fssam2_segment"), "--artifacts", str(artifacts), "--support-set", str(path)]
    proc = subprocess.run(
        [*tool, "--query", str(episode.query), "--out", str(tmp_path / "mask.png")],
        capture_output=True,
        text=True,
        umask=mask,
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("cpp.fssam2", "mask.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cpp.fssam2", "mask.png", "py.fssam2"]


def test_support_set_written_by_cpp_loads_in_python(cpp_seg, seg, artifacts, episode, tmp_path):
    """C++ encodes and writes the spec's file: its metadata, per-support facts and tokens are Python's, and Python
    segments with it as C++ does."""
    py, support_set = seg, seg.encode_supports(episode.supports[:3])
    handle = cpp_seg.encode([(load_image(i), load_mask(m)) for i, m in episode.supports[:3]])
    path = tmp_path / "cpp.fssam2"
    try:
        cpp_seg.save_set(handle, path)
        mask, _, _ = cpp_seg.segment_set(handle, load_image(episode.query))
    finally:
        cpp_seg.free_set(handle)
    tensors, meta = support_set_files.read_set(path)
    version = "fssam2_version"  # the writer's own version: libfssam2's, or the Python package's
    assert {k: v for k, v in meta.items() if k != version} == {
        k: v for k, v in support_set.metadata().items() if k != version
    }
    np.testing.assert_array_equal(tensors["image_sizes"], support_set.image_sizes)
    np.testing.assert_array_equal(tensors["mask_areas"], support_set.mask_areas)
    assert tensors["memory"].dtype == np.float32 and tensors["memory"].shape == support_set.memory.shape
    np.testing.assert_allclose(tensors["memory"], support_set.memory, rtol=0, atol=1e-4)
    np.testing.assert_allclose(tensors["memory_pos"], support_set.memory_pos, rtol=0, atol=1e-4)
    expected = py.segment(episode.query, SupportSet.load(path, py))
    _same_masks(mask, expected.mask, expected.logits)


def test_support_set_from_other_artifacts_is_refused(cpp_seg, seg, artifacts, episode, tmp_path):
    support_set = seg.encode_supports(episode.supports[:1])
    memory = support_set.memory

    def refused(name: str, **kw) -> str:
        support_set_files.write_set(tmp_path / name, support_set, **kw)
        with pytest.raises(CppError) as e:
            cpp_seg.load_set(tmp_path / name)
        assert e.value.status == SUPPORT_SET, e.value
        return e.value.message

    message = refused("other.fssam2", weights="sha256:" + "ab" * 32, image_size="512")
    assert f"weights: set sha256:{'ab' * 32} != artifacts random-init:seed=0" in message
    assert "image_size: set 512 != artifacts 256" in message and "model" not in message.split(":", 1)[1]
    assert "memory_dtype: set float16" in refused("fp16.fssam2", memory_dtype="float16")
    assert "format_version '2'" in refused("v2.fssam2", format_version="2")
    assert "not a support-set file" in refused("format.fssam2", format="something-else")
    message = refused("channels.fssam2", tensors={"memory": np.ascontiguousarray(memory[..., :32])})
    assert "memory: set F32[1, 256, 32] != expected F32[1, 256, 64]" in message, message
    assert "shots" in refused("shots.fssam2", shots="2")


def test_nway_label_map_and_classes(cpp_seg, artifacts, episode, tmp_path):
    """N-way: each class's logits are its 1-way call's (bitwise); the label map is the Python rule's (including
    ties: the same set twice never labels 3)."""
    rgb = load_image(episode.query)
    supports = [(load_image(i), load_mask(m)) for i, m in episode.supports]
    sets = [cpp_seg.encode(supports[:2]), cpp_seg.encode(supports[4:])]
    try:
        labels, masks, logits = cpp_seg.segment_sets([*sets, sets[0]], rgb)
        single = [cpp_seg.segment_set(h, rgb)[1] for h in sets]
    finally:
        for h in sets:
            cpp_seg.free_set(h)
    for c, expected in enumerate([*single, single[0]]):
        np.testing.assert_array_equal(logits[c], expected, err_msg=f"class {c}")
        np.testing.assert_array_equal(masks[c], expected > 0)
    np.testing.assert_array_equal(labels, label_map(list(logits)))
    assert 3 not in labels and {0, 1, 2} <= set(np.unique(labels)), np.unique(labels, return_counts=True)


def test_one_handle_from_python_threads(cpp_seg, artifacts, episode):
    """ctypes releases the GIL: 4 threads x 4 queries on one handle with two sets and the default set at once,
    each result bit-identical to the serial one."""
    from concurrent.futures import ThreadPoolExecutor

    supports = [(load_image(i), load_mask(m)) for i, m in episode.supports]
    queries = [load_image(episode.query), supports[3][0]]
    sets = [cpp_seg.encode(supports[:2]), cpp_seg.encode(supports[2:3])]
    cpp_seg.lib.fssam2_reset(cpp_seg.handle)
    cpp_seg.add_support(*supports[4])

    def run(job: tuple[int, int]) -> np.ndarray:
        which, q = job
        return cpp_seg.segment(queries[q])[1] if which == 2 else cpp_seg.segment_set(sets[which], queries[q])[1]

    jobs = [(w, q) for w in range(3) for q in range(2)]
    try:
        serial = {job: run(job) for job in jobs}
        with ThreadPoolExecutor(4) as pool:
            parallel = list(pool.map(run, jobs * 3))
    finally:
        for h in sets:
            cpp_seg.free_set(h)
        cpp_seg.lib.fssam2_reset(cpp_seg.handle)
    assert len({serial[j].tobytes() for j in jobs}) == len(jobs), "the jobs must give different results"
    for job, got in zip(jobs * 3, parallel):
        np.testing.assert_array_equal(got, serial[job], err_msg=str(job))


def _provider_options(lib, artifacts: Path, options, graph: str) -> list:
    """fssam2_provider_options parsed into runtime.backends.ort_gpu.ort_provider_list's shape."""
    needed = C.c_size_t()
    lib.fssam2_provider_options(str(artifacts).encode(), C.byref(options), graph.encode(), None, 0, C.byref(needed))
    buf = C.create_string_buffer(needed.value)
    assert (
        lib.fssam2_provider_options(str(artifacts).encode(), C.byref(options), graph.encode(), buf, len(buf), None)
        == OK
    ), lib.fssam2_last_error()
    eps: dict[str, dict] = {}
    for line in buf.value.decode().splitlines():
        ep, *kv = line.split("\t")
        eps.setdefault(ep, {}).update([kv] if kv else [])
    return [(ep, opts) if opts else ep for ep, opts in eps.items()]


# every ONNX Runtime provider, and every option of the C struct that reaches ORT, away from its default at least once
PROVIDER_OPTION_CASES = [
    ("tensorrt", 0, 8, None, None),
    ("tensorrt", 1, 3, "/var/cache/x", 1 << 28),
    ("cuda", 2, 8, None, None),
    ("cpu", 0, 8, None, None),
]


def test_provider_option_cases_cover_every_ort_provider():
    from runtime.backends.ort import ORT_PROVIDERS

    assert {case[0] for case in PROVIDER_OPTION_CASES} == set(ORT_PROVIDERS)


@pytest.mark.parametrize("provider,device_id,max_shots,cache,workspace", PROVIDER_OPTION_CASES)
def test_provider_options_equal_python(lib, artifacts, provider, device_id, max_shots, cache, workspace):
    """The C options give ORT the same providers, TensorRT EP caches, workspace and memory-axis profiles as the
    Python backend (runtime.backends.ort_gpu / runtime.engine.profiles), per graph; written, not run on a GPU."""
    from runtime.backends.ort import ORT_PROVIDERS
    from runtime.backends.ort_gpu import ORT_TRT_CACHE_DIR, ort_provider_list
    from runtime.engine.manifest import load_manifest
    from runtime.engine.profiles import input_profiles, memory_dim_ranges

    manifest = load_manifest(artifacts, verify_files=False)
    opts = Options()
    lib.fssam2_options_init_sized(C.byref(opts), C.sizeof(Options))
    opts.provider, opts.device_id, opts.max_shots = provider.encode(), device_id, max_shots
    opts.trt_cache_dir = cache.encode() if cache else None
    opts.trt_workspace_bytes = workspace or 0  # 0: the default
    for name, spec in manifest.graphs.items():
        profiles = (
            input_profiles(spec, memory_dim_ranges(manifest.episode, max_shots)) if provider == "tensorrt" else {}
        )
        expected = ort_provider_list(
            ORT_PROVIDERS[provider],
            profiles,
            Path(cache or artifacts / ORT_TRT_CACHE_DIR),
            device_id=device_id,
            **({"workspace_bytes": workspace} if workspace else {}),
        )
        assert _provider_options(lib, artifacts, opts, name) == expected, name
    assert not (artifacts / ORT_TRT_CACHE_DIR).exists()


def test_older_callers_options_struct(lib, artifacts):
    """A 0.1 caller's smaller struct (its own fssam2_options_init, struct_size 24) gets the new fields' defaults."""

    class OldCaller(C.Structure):  # the 0.1 struct, and the caller's memory right after it
        _fields_ = [("options", OptionsV1), ("after", C.c_uint8 * 32)]

    caller, new = OldCaller(), Options()
    C.memset(C.byref(caller), 0xAB, C.sizeof(caller))
    old = caller.options
    lib.fssam2_options_init(C.byref(old))
    lib.fssam2_options_init_sized(C.byref(new), C.sizeof(Options))
    assert bytes(caller.after) == b"\xab" * 32, "fssam2_options_init wrote past the 0.1 struct"
    assert old.struct_size == C.sizeof(OptionsV1) and new.struct_size == C.sizeof(Options) and new.max_shots == 8
    old.provider = new.provider = b"tensorrt"
    assert _provider_options(lib, artifacts, old, "memory_attention") == _provider_options(
        lib, artifacts, new, "memory_attention"
    )
    old.provider = b"cpu"
    handle = C.c_void_p()
    assert lib.fssam2_create(str(artifacts).encode(), C.byref(old), C.byref(handle)) == OK, lib.fssam2_last_error()
    lib.fssam2_destroy(handle)
