"""Engine builds and the native TensorRT backend, with TensorRT/CUDA replaced by fakes (tests/trt_fakes.py).

What runs for real here: profile derivation, polygraphy's Profile/CreateConfig/Comparator/OnnxrtRunner,
the manifest records and refusals, and all of the backend's buffer/bank/stream logic. What a fake
stands in for: TensorRT's parser/builder/engines (an ONNX Runtime session on the fake device memory)
and CUDA (numpy). Real-TensorRT checks are `scripts/gpu_check.sh` on a GPU machine."""

import gc
import json
import shutil

import numpy as np
import pytest
from conftest import unavailable

try:
    import polygraphy  # noqa: F401
except ImportError:
    unavailable("engine builds are driven through polygraphy (pip install polygraphy)", "FSSAM2_REQUIRE_POLYGRAPHY")
from thread_checks import assert_threads_match_serial, mixed_jobs
from trt_fakes import DEVICE, TRT_VERSION, FakeCuda, FakeRuntime, install_fake_polygraphy

from fssam2_export.engines import (
    TIMING_CACHE,
    TOLERANCES,
    EngineBuildError,
    EngineSettings,
    build_engines,
    compare_engine,
    comparison_feeds,
    strongly_typed_flag,
)
from runtime import DelegatingGraph, FewShotSegmenter, ManifestError
from runtime.backends.device import DeviceTensor
from runtime.backends.tensorrt import DeviceInfo, EngineMismatchError, TensorRTBackend
from runtime.engine.manifest import GRAPH_NAMES, load_manifest
from runtime.engine.profiles import ShotLimitError, memory_dim_ranges

MAX_SHOTS = 3


@pytest.fixture(scope="module")
def engine_dir(artifacts, tmp_path_factory):
    """A copy of the artifacts with (fake) engines for K = 1..3, built through build_engines."""
    out = tmp_path_factory.mktemp("engines") / "art"
    shutil.copytree(artifacts, out)
    mp = pytest.MonkeyPatch()
    try:
        log = install_fake_polygraphy(mp)
        report = build_engines(
            out,
            EngineSettings(max_shots=MAX_SHOTS, opt_shots=2, workspace_gb=1, gate_episodes=2),
            progress=False,
            device=DEVICE,
            runtime_backend=fake_native_backend(),
        )
    finally:
        mp.undo()
    return out, log, report


def fake_native_backend(cuda=None):
    cuda = cuda or FakeCuda()
    return TensorRTBackend(runtime=FakeRuntime(cuda), cuda=cuda)


def native(root, cuda=None, version=TRT_VERSION):
    cuda = cuda or FakeCuda()
    return FewShotSegmenter(root, backend=TensorRTBackend(runtime=FakeRuntime(cuda, version), cuda=cuda)), cuda


def native_graphs(root, *names):
    """Some graphs loaded straight from the backend (as the segmenter would), with its fake device."""
    cuda = FakeCuda()
    backend = TensorRTBackend(runtime=FakeRuntime(cuda), cuda=cuda)
    manifest = load_manifest(root)
    graphs = {
        n: backend.load(root / manifest.graphs[n].artifact_for(backend.provider).file, manifest.graphs[n], n)
        for n in names
    }
    return graphs, manifest, cuda


def test_build_records_engines_as_flavours(engine_dir, artifacts, capsys):
    out, log, report = engine_dir
    manifest = load_manifest(out)  # verifies every engine's sha256
    tokens = manifest.episode.tokens_per_support
    for name in GRAPH_NAMES:
        g = manifest.graphs[name]
        (f,) = [f for f in g.flavours if f.kind == "tensorrt-engine"]  # beside the ORT fused-attention flavours
        assert (f.kind, f.file, f.providers, f.precision, f.source_sha256) == (
            "tensorrt-engine",
            f"{name}.engine",
            ["tensorrt-native"],
            g.precision,
            g.sha256,
        )
        assert (f.meta["tensorrt"], f.meta["gpu"], f.meta["compute_capability"]) == (
            TRT_VERSION,
            DEVICE.name,
            DEVICE.compute_capability,
        )
        assert f.meta["builder"]["strongly_typed"] and f.meta["builder"]["workspace_bytes"] == 1 << 30
        assert (
            f.meta["comparison"]["inputs"] >= 1
            and max(o["max_over_spread"] for o in f.meta["comparison"]["outputs"].values()) < 1e-5
        )
        assert g.artifact_for("tensorrt-native") is f and g.artifact_for("tensorrt").file == g.file
    memory = manifest.graphs["memory_attention"].artifact_for("tensorrt-native").meta
    assert memory["profiles"]["memory"] == {
        "min": [1, tokens, 64],
        "opt": [1, 2 * tokens, 64],
        "max": [1, MAX_SHOTS * tokens, 64],
    }
    assert memory["shots"] == {"min": 1, "opt": 2, "max": MAX_SHOTS, "tokens_per_support": tokens}
    assert manifest.graphs["image_encoder"].artifact_for("tensorrt-native").meta["profiles"] == {}
    assert manifest.tools["tensorrt"] == TRT_VERSION
    # polygraphy was driven as intended: strongly typed networks, one shared timing cache, workspace limit
    assert [n["strongly_typed"] for n in log.networks] == [True] * 4
    assert (
        len({c.timing_cache_path for c in log.configs} | set(log.saved_timing_caches)) == 1
    )  # one cache for all graphs
    assert (out / TIMING_CACHE).read_bytes() == b"tttt"  # kept: each fake build appended a byte
    assert all(c.memory_pool_limits == {"WORKSPACE": 1 << 30} and not c.fp16 and not c.int8 for c in log.configs)
    (attention_config,) = [c for c in log.configs if c.profiles and list(c.profiles[0].items())]
    assert [n for n, _ in attention_config.profiles[0].items()] == ["memory", "memory_pos"]
    assert not list(out.glob(".*partial*")) and (out / TIMING_CACHE).is_file()
    assert all(
        f.kind != "tensorrt-engine" for f in load_manifest(artifacts).graphs["image_encoder"].flavours
    )  # the source directory is untouched
    from runtime import cli

    assert cli.main(["info", "--artifacts", str(out)]) == 0
    assert (
        f"flavour tensorrt-engine memory_attention.engine for tensorrt-native (fp32, TensorRT {TRT_VERSION} on {DEVICE.name}"
        in capsys.readouterr().out
    )


def test_failed_comparison_fails_the_build_and_changes_nothing(artifacts, tmp_path, monkeypatch):
    out = tmp_path / "art"
    shutil.copytree(artifacts, out)
    before = (out / "manifest.json").read_bytes()
    install_fake_polygraphy(monkeypatch, perturb=lambda name, v: v + np.float32(0.5))
    with pytest.raises(
        EngineBuildError, match="image_encoder: the engine differs from image_encoder.onnx beyond the fp32 tolerance"
    ):
        build_engines(out, EngineSettings(max_shots=2), progress=False, device=DEVICE)
    assert (out / "manifest.json").read_bytes() == before
    assert not list(out.glob("*.engine")) and not list(out.glob(".*partial*")) and not (out / TIMING_CACHE).exists()


@pytest.fixture(scope="module")
def decoder_case(artifacts):
    """The mask decoder's comparison inputs and its ONNX outputs on them (ORT CPU), for perturbing engines."""
    import onnxruntime as ort

    manifest = load_manifest(artifacts)
    feeds = comparison_feeds(artifacts, memory_dim_ranges(manifest.episode, 2))["mask_decoder"]
    path = artifacts / manifest.graphs["mask_decoder"].file
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = [dict(zip([o.name for o in session.get_outputs()], session.run(None, f))) for f in feeds]
    return path, feeds, outputs


@pytest.mark.parametrize(
    "kind, factor, passes",
    [
        ("spike", 0.9, True),
        ("spike", 1.1, False),  # one logit off by just under / over the max tolerance
        ("shift", 0.9, True),
        ("shift", 1.1, False),  # every logit off by just under / over the 99.9 % tolerance
        ("nan", 0.0, False),
        ("object_score", 1.1, False),
        ("object_score", 0.9, True),
    ],
)
def test_engine_comparison_near_its_thresholds(decoder_case, monkeypatch, kind, factor, passes):
    """Errors are judged in units of the ONNX output's spread (std over the inputs): max and 99.9th percentile."""
    path, feeds, outputs = decoder_case
    tol = TOLERANCES["fp32"]
    logits = np.concatenate([o["low_res_logits"].ravel() for o in outputs])
    scores = np.concatenate([o["object_score_logits"].ravel() for o in outputs])
    assert logits.std() > 0 and (logits > 0).mean() not in (0.0, 1.0)  # a real spread, not a constant map
    score_scale = scores.std() or np.abs(scores).max()  # one scalar per call: its magnitude where the std is 0

    def perturb(name, v):
        v = v.copy()
        if name == "low_res_logits" and kind == "spike":
            v.flat[v.size // 2] += factor * tol.max * logits.std()
        elif name == "low_res_logits" and kind == "shift":
            v += np.float32(factor * tol.quantile * logits.std())
        elif name == "low_res_logits" and kind == "nan":
            v.flat[0] = np.nan
        elif name == "object_score_logits" and kind == "object_score":
            v += np.float32(factor * tol.max * score_scale)
        return v

    install_fake_polygraphy(monkeypatch, perturb=perturb)
    failures, figures = compare_engine(b'{"onnx": "%s"}' % str(path).encode(), path, feeds, "fp32")
    assert (not failures) == passes, failures
    if not passes:
        assert any(
            f.startswith("object_score_logits" if kind == "object_score" else "low_res_logits") for f in failures
        )
    if kind == "nan":
        assert figures["outputs"]["low_res_logits"]["non_finite"] == 1 and "non-finite" in failures[0]


class _FlippedDecoder:
    """A runtime backend whose mask decoder returns negated logits (every mask decision flipped)."""

    def __init__(self, inner):
        self.inner, self.name, self.provider = inner, "flipped", inner.provider

    def precision_for(self, graph, spec):
        return self.inner.precision_for(graph, spec)

    def load(self, path, spec, graph):
        loaded = self.inner.load(path, spec, graph)
        return _Flipped(loaded) if graph == "mask_decoder" else loaded


class _Flipped(DelegatingGraph):
    def run(self, feeds):
        out = self.inner.run(feeds)
        return out | {"low_res_logits": -np.asarray(out["low_res_logits"])}


def test_end_to_end_gate_fails_engines_that_flip_masks(artifacts, tmp_path, monkeypatch):
    """Each engine alone may pass its comparison; the engines run together through the runtime must pass the ONNX
    gate too, or nothing is written."""
    out = tmp_path / "art"
    shutil.copytree(artifacts, out)
    before = (out / "manifest.json").read_bytes()
    install_fake_polygraphy(monkeypatch)
    with pytest.raises(EngineBuildError, match="end-to-end fidelity gate") as err:
        build_engines(
            out,
            EngineSettings(max_shots=2, gate_episodes=2),
            progress=False,
            device=DEVICE,
            runtime_backend=_FlippedDecoder(fake_native_backend()),
        )
    assert "FAIL" in str(err.value)
    assert (out / "manifest.json").read_bytes() == before
    assert not list(out.glob("*.engine")) and not list(out.glob(".*partial*")) and not list(out.glob(".engines*"))


def test_strongly_typed_flag_follows_tensorrt_version():
    from trt_fakes import fake_tensorrt_module

    assert strongly_typed_flag(fake_tensorrt_module("10.3.0")) is True
    assert strongly_typed_flag(fake_tensorrt_module("11.0.0", strongly_typed_flag=False)) is None


def test_native_backend_matches_cpu_runtime(engine_dir, episode):
    out, _, _ = engine_dir
    cpu = FewShotSegmenter(out)
    seg, cuda = native(out)
    assert seg.backend.name == "tensorrt-native"
    mallocs = cuda.mallocs
    want = cpu.segment(episode.query, cpu.encode_supports(episode.supports[:MAX_SHOTS]))
    supports = seg.encode_supports(episode.supports[:MAX_SHOTS])
    got = seg.segment(episode.query, supports)
    np.testing.assert_allclose(got.low_res_logits, want.low_res_logits, atol=1e-5)
    assert np.array_equal(got.mask, want.mask) and got.score == pytest.approx(want.score, abs=1e-5)
    assert (
        cuda.mallocs == mallocs + 2
    )  # graph buffers were allocated at load; the support set's memory + memory_pos now
    # a second query allocates nothing and copies to the host only what nobody on the device consumes: the decoder's three outputs
    cuda.dtoh_sizes.clear()
    seg.segment(episode.query, supports)
    assert cuda.mallocs == mallocs + 2
    dec = seg.manifest.graphs["mask_decoder"].outputs
    assert sorted(cuda.dtoh_sizes) == sorted(int(np.prod(t.shape)) * 4 for t in dec)
    other = [episode.supports[MAX_SHOTS]]  # another set reaches the device: the same K with another support
    np.testing.assert_allclose(
        seg.segment(episode.query, seg.encode_supports(other)).low_res_logits,
        cpu.segment(episode.query, cpu.encode_supports(other)).low_res_logits,
        atol=1e-5,
    )


def test_feature_maps_stay_on_device_and_are_spilled_before_reuse(engine_dir):
    graphs, manifest, _ = native_graphs(engine_dir[0], "image_encoder", "memory_attention", "mask_decoder")
    size = manifest.preprocess.image_size
    encoder = graphs["image_encoder"]
    a = encoder.run({"image": np.ones((1, 3, size, size), np.float32)})
    assert all(isinstance(v, DeviceTensor) and v.handle is not None for v in a.values())
    kept = np.asarray(a["image_embed"]).copy()
    b = encoder.run({"image": np.zeros((1, 3, size, size), np.float32)})  # overwrites the output buffers
    assert a["image_embed"].handle is None  # the earlier result was copied out first
    np.testing.assert_array_equal(np.asarray(a["image_embed"]), kept)
    assert not np.array_equal(np.asarray(b["image_embed"]), kept)


def test_native_support_sets_get_their_own_device_buffers(engine_dir, episode):
    out = engine_dir[0]
    seg, cuda = native(out)
    cpu = FewShotSegmenter(out)
    a, b = seg.encode_supports(episode.supports[:2]), seg.encode_supports(episode.supports[2:4])  # same K

    def sent(s):
        before = cuda.htod_bytes
        return seg.segment(episode.query, s), cuda.htod_bytes - before

    first, with_upload = sent(a)
    again, without = sent(a)
    assert with_upload - without == a.memory.nbytes + a.memory_pos.nbytes  # the set went up once
    assert again.low_res_logits.tobytes() == first.low_res_logits.tobytes()
    got, _ = sent(b)  # its own buffer: a cache keyed by K or shape would run on a's tokens here
    np.testing.assert_allclose(got.low_res_logits, cpu.segment(episode.query, b).low_res_logits, atol=1e-5)
    assert np.abs(got.low_res_logits - first.low_res_logits).max() > 1e-3
    blocks = len(cuda.blocks)
    del a, b
    gc.collect()
    assert len(cuda.blocks) == blocks - 4  # both sets' memory + memory_pos buffers freed with the sets


def test_native_backend_from_threads_gives_serial_results(engine_dir, episode):
    """Shared buffers and one stream: threads are serialised per backend, and an output another thread's run is
    about to overwrite is copied out first, so results stay bit-identical to serial calls."""
    seg, _ = native(engine_dir[0])
    assert assert_threads_match_serial(seg, mixed_jobs(seg, episode)) == 12


def test_k_beyond_the_profile_is_refused(engine_dir):
    graphs, manifest, _ = native_graphs(engine_dir[0], "memory_attention")
    feeds = {
        t.name: np.zeros(
            [d if isinstance(d, int) else (MAX_SHOTS + 1) * manifest.episode.tokens_per_support for d in t.shape],
            np.float32,
        )
        for t in manifest.graphs["memory_attention"].inputs
    }
    with pytest.raises(
        ShotLimitError,
        match=rf"memory_attention.engine.*{MAX_SHOTS + 1} supports.*up to {MAX_SHOTS} supports.*--max-shots",
    ):
        graphs["memory_attention"].run(feeds)


@pytest.mark.parametrize(
    "version,device,match",
    [
        ("10.8.0", DEVICE, r"TensorRT 10\.3\.0 \(this machine has TensorRT 10\.8\.0\)"),
        (
            TRT_VERSION,
            DeviceInfo("NVIDIA H100", "9.0"),
            r"compute capability 8\.7, Fake Orin \(this GPU: compute capability 9\.0, NVIDIA H100\)",
        ),
    ],
)
def test_engine_for_another_machine_is_refused(engine_dir, version, device, match):
    out, _, _ = engine_dir
    with pytest.raises(EngineMismatchError, match=match):
        native(out, FakeCuda(device), version)


def test_artifacts_without_engines_are_refused(artifacts):
    with pytest.raises(ManifestError, match="no TensorRT engine.*fssam2_export.engines"):
        native(artifacts)


def test_stale_engine_is_refused(engine_dir, tmp_path):
    out = tmp_path / "art"
    shutil.copytree(engine_dir[0], out)
    path = out / "manifest.json"
    data = json.loads(path.read_text())
    data["graphs"]["mask_decoder"]["flavours"][0]["source_sha256"] = "0" * 64
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="mask_decoder.*stale"):
        load_manifest(out)


def test_export_cli_without_tensorrt_fails_before_exporting(tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    from calibration.export_cli import main

    rc = main(
        [
            "--random-init",
            "--seed",
            "0",
            "--image-size",
            "64",
            "--engine",
            "tensorrt",
            "--out",
            str(tmp_path / "a"),
            "--quiet",
        ]
    )
    assert rc == 2 and "needs TensorRT" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    from fssam2_export.engines import main as engines_main

    assert engines_main(["--artifacts", str(tmp_path), "--max-shots", "2", "--opt-shots", "3"]) == 2
    assert "opt shots" in capsys.readouterr().err


def test_outputs_outliving_their_graph_are_copied_out_first(engine_dir):
    graphs, manifest, cuda = native_graphs(engine_dir[0], "image_encoder", "memory_attention")
    size = manifest.preprocess.image_size
    out = graphs.pop("image_encoder").run({"image": np.ones((1, 3, size, size), np.float32)})
    blocks = len(cuda.blocks)
    del graphs

    gc.collect()
    assert len(cuda.blocks) < blocks and out["image_embed"].handle is None  # buffers freed, value kept on the host
    assert np.isfinite(np.asarray(out["image_embed"])).all()


def _gpu_stack_missing() -> str | None:
    from runtime.backends.tensorrt import CudaRuntime

    try:
        import tensorrt  # noqa: F401

        CudaRuntime(0)
    except (ImportError, RuntimeError) as e:
        return f"needs TensorRT, cuda-python and a GPU ({e}); on a GPU machine scripts/gpu_check.sh checks the rest"
    return None


GPU_MISSING = _gpu_stack_missing()


@pytest.mark.skipif(GPU_MISSING is not None, reason=str(GPU_MISSING))
def test_real_tensorrt_engines_match_cpu(artifacts, episode, tmp_path):
    """On a GPU machine: real engines, built and compared by polygraphy, run natively as the CPU runtime does."""
    out = tmp_path / "art"
    shutil.copytree(artifacts, out)
    build_engines(out, EngineSettings(max_shots=2), progress=False)
    cpu, gpu = FewShotSegmenter(out), FewShotSegmenter(out, provider="tensorrt-native")
    want, got = (s.segment(episode.query, s.encode_supports(episode.supports[:2])) for s in (cpu, gpu))
    assert (want.mask == got.mask).mean() > 0.99
    np.testing.assert_allclose(got.low_res_logits, want.low_res_logits, atol=1e-2)
