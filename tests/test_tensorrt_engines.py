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

pytest.importorskip("polygraphy", reason="engine builds are driven through polygraphy (pip install polygraphy)")
from trt_fakes import DEVICE, TRT_VERSION, FakeCuda, FakeRuntime, assert_threads_match_serial, install_fake_polygraphy

from fssam2_export.engines import TIMING_CACHE, EngineBuildError, EngineSettings, build_engines, strongly_typed_flag
from runtime import FewShotSegmenter, ManifestError, OrtBackend
from runtime.device import DeviceTensor
from runtime.manifest import GRAPH_NAMES, load_manifest
from runtime.profiles import ShotLimitError
from runtime.trt_backend import DeviceInfo, EngineMismatchError, TensorRTBackend

MAX_SHOTS = 3


@pytest.fixture(scope="module")
def engine_dir(artifacts, tmp_path_factory):
    """A copy of the artifacts with (fake) engines for K = 1..3, built through build_engines."""
    out = tmp_path_factory.mktemp("engines") / "art"
    shutil.copytree(artifacts, out)
    mp = pytest.MonkeyPatch()
    try:
        log = install_fake_polygraphy(mp)
        report = build_engines(out, EngineSettings(max_shots=MAX_SHOTS, opt_shots=2, workspace_gb=1), progress=False, device=DEVICE)
    finally:
        mp.undo()
    return out, log, report


def native(root, cuda=None, version=TRT_VERSION):
    cuda = cuda or FakeCuda()
    return FewShotSegmenter(root, backend=TensorRTBackend(runtime=FakeRuntime(cuda, version), cuda=cuda)), cuda


def native_graphs(root, *names):
    """Some graphs loaded straight from the backend (as the segmenter would), with its fake device."""
    cuda = FakeCuda()
    backend = TensorRTBackend(runtime=FakeRuntime(cuda), cuda=cuda)
    manifest = load_manifest(root)
    graphs = {n: backend.load(root / manifest.graphs[n].artifact_for(backend.provider).file, manifest.graphs[n]) for n in names}
    return graphs, manifest, cuda


def test_build_records_engines_as_flavours(engine_dir, artifacts, capsys):
    out, log, report = engine_dir
    manifest = load_manifest(out)  # verifies every engine's sha256
    tokens = manifest.episode.tokens_per_support
    for name in GRAPH_NAMES:
        g = manifest.graphs[name]
        (f,) = [f for f in g.flavours if f.kind == "tensorrt-engine"]  # beside the ORT fused-attention flavours
        assert (f.kind, f.file, f.providers, f.precision, f.source_sha256) == ("tensorrt-engine", f"{name}.engine", ["tensorrt-native"], g.precision, g.sha256)
        assert (f.meta["tensorrt"], f.meta["gpu"], f.meta["compute_capability"]) == (TRT_VERSION, DEVICE.name, DEVICE.compute_capability)
        assert f.meta["builder"]["strongly_typed"] and f.meta["builder"]["workspace_bytes"] == 1 << 30
        assert f.meta["comparison"]["inputs"] >= 1 and max(f.meta["comparison"]["max_abs"].values()) < 1e-5
        assert g.artifact_for("tensorrt-native") is f and g.artifact_for("tensorrt").file == g.file
    memory = manifest.graphs["memory_attention"].artifact_for("tensorrt-native").meta
    assert memory["profiles"]["memory"] == {"min": [1, tokens, 64], "opt": [1, 2 * tokens, 64], "max": [1, MAX_SHOTS * tokens, 64]}
    assert memory["shots"] == {"min": 1, "opt": 2, "max": MAX_SHOTS, "tokens_per_support": tokens}
    assert manifest.graphs["image_encoder"].artifact_for("tensorrt-native").meta["profiles"] == {}
    assert manifest.tools["tensorrt"] == TRT_VERSION
    # polygraphy was driven as intended: strongly typed networks, one shared timing cache, workspace limit
    assert [n["strongly_typed"] for n in log.networks] == [True] * 4
    assert len({c.timing_cache_path for c in log.configs} | set(log.saved_timing_caches)) == 1  # one cache for all graphs
    assert (out / TIMING_CACHE).read_bytes() == b"tttt"  # kept: each fake build appended a byte
    assert all(c.memory_pool_limits == {"WORKSPACE": 1 << 30} and not c.fp16 and not c.int8 for c in log.configs)
    (attention_config,) = [c for c in log.configs if c.profiles and list(c.profiles[0].items())]
    assert [n for n, _ in attention_config.profiles[0].items()] == ["memory", "memory_pos"]
    assert not list(out.glob(".*partial*")) and (out / TIMING_CACHE).is_file()
    assert all(f.kind != "tensorrt-engine" for f in load_manifest(artifacts).graphs["image_encoder"].flavours)  # the source directory is untouched
    from runtime import cli

    assert cli.main(["info", "--artifacts", str(out)]) == 0
    assert f"flavour tensorrt-engine memory_attention.engine for tensorrt-native (fp32, TensorRT {TRT_VERSION} on {DEVICE.name}" in capsys.readouterr().out


def test_failed_comparison_fails_the_build_and_changes_nothing(artifacts, tmp_path, monkeypatch):
    out = tmp_path / "art"
    shutil.copytree(artifacts, out)
    before = (out / "manifest.json").read_bytes()
    install_fake_polygraphy(monkeypatch, output_offset=0.5)
    with pytest.raises(EngineBuildError, match="image_encoder: the engine differs from image_encoder.onnx beyond the fp32 tolerance"):
        build_engines(out, EngineSettings(max_shots=2), progress=False, device=DEVICE)
    assert (out / "manifest.json").read_bytes() == before
    assert not list(out.glob("*.engine")) and not list(out.glob(".*partial*")) and not (out / TIMING_CACHE).exists()


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
    for s in (cpu, seg):
        for image, mask in episode.supports[:MAX_SHOTS]:
            s.add_support(image, mask)
    want, got = cpu.segment(episode.query), seg.segment(episode.query)
    np.testing.assert_allclose(got.low_res_logits, want.low_res_logits, atol=1e-5)
    assert np.array_equal(got.mask, want.mask) and got.score == pytest.approx(want.score, abs=1e-5)
    assert cuda.mallocs == mallocs + 2  # graph buffers were allocated at load; the support set's memory + memory_pos now
    # a second query allocates nothing and copies to the host only what nobody on the device consumes: the decoder's three outputs
    cuda.dtoh_sizes.clear()
    seg.segment(episode.query)
    assert cuda.mallocs == mallocs + 2
    dec = seg.manifest.graphs["mask_decoder"].outputs
    assert sorted(cuda.dtoh_sizes) == sorted(int(np.prod(t.shape)) * 4 for t in dec)
    for s in (cpu, seg):  # reset reaches the device bank: the same K with another support
        s.reset()
        s.add_support(*episode.supports[MAX_SHOTS])
    np.testing.assert_allclose(seg.segment(episode.query).low_res_logits, cpu.segment(episode.query).low_res_logits, atol=1e-5)


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
    cats, dogs = seg.encode_supports(episode.supports[:2]), seg.encode_supports(episode.supports[2:3])
    other = episode.supports[4][0]
    jobs = [(episode.query, cats), (other, dogs), (episode.query, {"cat": cats, "dog": dogs}), (other, episode.supports[3:4])]
    assert assert_threads_match_serial(seg, jobs) == 12


def test_k_beyond_the_profile_is_refused(engine_dir):
    graphs, manifest, _ = native_graphs(engine_dir[0], "memory_attention")
    feeds = {t.name: np.zeros([d if isinstance(d, int) else (MAX_SHOTS + 1) * manifest.episode.tokens_per_support for d in t.shape], np.float32)
             for t in manifest.graphs["memory_attention"].inputs}
    with pytest.raises(ShotLimitError, match=rf"memory_attention.engine.*{MAX_SHOTS + 1} supports.*up to {MAX_SHOTS} supports.*--max-shots"):
        graphs["memory_attention"].run(feeds)


@pytest.mark.parametrize("version,device,match", [
    ("10.8.0", DEVICE, r"TensorRT 10\.3\.0 \(this machine has TensorRT 10\.8\.0\)"),
    (TRT_VERSION, DeviceInfo("NVIDIA H100", "9.0"), r"compute capability 8\.7, Fake Orin \(this GPU: compute capability 9\.0, NVIDIA H100\)"),
])
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
    from fssam2_export.cli import main

    rc = main(["--random-init", "--seed", "0", "--image-size", "64", "--engine", "tensorrt", "--out", str(tmp_path / "a"), "--quiet"])
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
    from runtime.trt_backend import CudaRuntime

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
    for s in (cpu, gpu):
        for image, mask in episode.supports[:2]:
            s.add_support(image, mask)
    want, got = cpu.segment(episode.query), gpu.segment(episode.query)
    assert (want.mask == got.mask).mean() > 0.99
    np.testing.assert_allclose(got.low_res_logits, want.low_res_logits, atol=1e-2)
