"""GPU-provider logic that needs no GPU: profiles from the manifest, ORT provider options, engine
compatibility checks, support-set device copies, and ORT's IO-binding path (run on CPU)."""

import gc
import threading
import time
import warnings

import numpy as np
import onnxruntime as ort
import pytest
from cpu_device_backend import BoundCpuBackend

from runtime import FewShotSegmenter, ProviderUnavailableError, RuntimeOptions, create_backend
from runtime.backends import OrtBackend
from runtime.backends.device import DeviceCopies, DeviceTensor, is_support_array
from runtime.backends.ort import ORT_PROVIDERS
from runtime.backends.ort_gpu import ort_provider_list, tensorrt_ep_options
from runtime.backends.tensorrt import DeviceInfo, EngineMismatchError, check_engine_compat
from runtime.engine.manifest import Episode, GraphSpec, TensorSpec, load_manifest
from runtime.engine.profiles import MEMORY_AXIS, ShotLimitError, check_memory_length, input_profiles, memory_dim_ranges
from runtime.tools.fidelity import recording_segmenter, run_episode
from runtime.tools.synthetic import Episode as Episode_

EPISODE = Episode(20.0, -10.0, tokens_per_support=256, low_res_size=64)
ATTENTION = GraphSpec(
    "memory_attention.onnx",
    "0" * 64,
    inputs=[
        TensorSpec("image_embed", [1, 256, 16, 16], "float32"),
        TensorSpec("image_pos", [1, 256, 16, 16], "float32"),
        TensorSpec("memory", [1, MEMORY_AXIS, 64], "float32"),
        TensorSpec("memory_pos", [1, MEMORY_AXIS, 64], "float32"),
    ],
    outputs=[TensorSpec("conditioned_embed", [1, 256, 16, 16], "float32")],
)


def test_profiles_cover_one_to_max_shots_and_only_dynamic_inputs():
    dims = memory_dim_ranges(EPISODE, max_shots=8, opt_shots=3)
    assert (dims[MEMORY_AXIS].min, dims[MEMORY_AXIS].opt, dims[MEMORY_AXIS].max) == (256, 768, 2048)
    profiles = input_profiles(ATTENTION, dims)
    assert set(profiles) == {"memory", "memory_pos"}
    assert (
        profiles["memory"].min == (1, 256, 64)
        and profiles["memory"].opt == (1, 768, 64)
        and profiles["memory"].max == (1, 2048, 64)
    )
    assert memory_dim_ranges(EPISODE, max_shots=2)[MEMORY_AXIS].opt == 512  # default opt: min(5, max)
    static = GraphSpec("x.onnx", "0" * 64, [TensorSpec("image", [1, 3, 64, 64], "float32")], [])
    assert input_profiles(static, dims) == {}


def test_profile_errors_name_the_problem():
    with pytest.raises(ValueError, match="opt shots"):
        memory_dim_ranges(EPISODE, max_shots=4, opt_shots=5)
    with pytest.raises(ValueError, match="max shots"):
        memory_dim_ranges(EPISODE, max_shots=0)
    odd = GraphSpec("x.onnx", "0" * 64, [TensorSpec("x", [1, "batch_len", 3], "float32")], [])
    with pytest.raises(ValueError, match="batch_len"):
        input_profiles(odd, memory_dim_ranges(EPISODE))


def test_shot_limit_names_both_sides():
    profiles = input_profiles(ATTENTION, memory_dim_ranges(EPISODE, max_shots=4))
    check_memory_length("g", {"memory": np.zeros((1, 4 * 256, 64))}, profiles, "the engine", "rebuild")
    with pytest.raises(
        ShotLimitError, match=r"5 supports \(1280 memory tokens.*up to 4 supports \(1024 tokens\); rebuild"
    ):
        check_memory_length("g", {"memory": np.zeros((1, 5 * 256, 64))}, profiles, "the engine", "rebuild")


def test_tensorrt_ep_options(tmp_path):
    profiles = input_profiles(ATTENTION, memory_dim_ranges(EPISODE, max_shots=8))
    opts = tensorrt_ep_options(profiles, tmp_path, workspace_bytes=1 << 30, device_id=1)
    assert opts["trt_profile_min_shapes"] == "memory:1x256x64,memory_pos:1x256x64"
    assert opts["trt_profile_opt_shapes"] == "memory:1x1280x64,memory_pos:1x1280x64"
    assert opts["trt_profile_max_shapes"] == "memory:1x2048x64,memory_pos:1x2048x64"
    assert opts["trt_engine_cache_enable"] == "True" and opts["trt_engine_cache_path"] == str(tmp_path)
    assert opts["trt_timing_cache_enable"] == "True" and opts["trt_max_workspace_size"] == str(1 << 30)
    assert opts["device_id"] == "1"
    assert not any("fp16" in k or "int8" in k for k in opts)  # precision comes from the graph
    assert all(isinstance(v, str) for v in opts.values())
    assert not any(k.startswith("trt_profile") for k in tensorrt_ep_options({}, tmp_path))


def test_provider_lists_put_tensorrt_before_cuda_and_never_cpu(tmp_path):
    trt = ort_provider_list(ORT_PROVIDERS["tensorrt"], {}, tmp_path)
    assert [p[0] for p in trt] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    assert trt[1][1]["do_copy_in_default_stream"] == "1"
    assert [p if isinstance(p, str) else p[0] for p in ort_provider_list(ORT_PROVIDERS["cuda"], {}, tmp_path)] == [
        "CUDAExecutionProvider"
    ]
    assert ort_provider_list(ORT_PROVIDERS["cpu"], {}, tmp_path) == ["CPUExecutionProvider"]


class _CapturedSession:
    """Stands in for ort.InferenceSession: keeps what the backend passed; runs on `active` providers."""

    made: list = []
    active: list[str] = []

    def __init__(self, path, sess_options=None, providers=None):
        self.options, self.providers = sess_options, providers
        _CapturedSession.made.append(self)

    def get_providers(self):
        return list(self.active)


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_gpu_providers_disable_cpu_fallback_in_the_options_passed(artifacts, tmp_path, monkeypatch, provider):
    """The SessionOptions handed to ORT forbid the CPU EP and list no CPUExecutionProvider; `cpu` keeps its defaults;
    a session missing any requested EP (not only the first) is refused."""
    eps = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: eps)
    monkeypatch.setattr(ort, "InferenceSession", _CapturedSession)
    manifest = load_manifest(artifacts)
    spec = manifest.graphs["image_encoder"]
    wanted = ORT_PROVIDERS[provider]
    _CapturedSession.made, _CapturedSession.active = [], [*wanted, "CPUExecutionProvider"]
    backend = OrtBackend(
        provider, dims=memory_dim_ranges(manifest.episode, max_shots=2), trt_cache_dir=tmp_path, cache=False
    )
    backend.load(artifacts / spec.file, spec, "image_encoder")  # IO bindings are per call: the fake session loads
    session = _CapturedSession.made[-1]
    assert session.options.get_session_config_entry("session.disable_cpu_ep_fallback") == "1"
    assert "CPUExecutionProvider" not in [p if isinstance(p, str) else p[0] for p in session.providers]
    for dropped in wanted:  # each requested EP missing from the session in turn
        _CapturedSession.active = [ep for ep in wanted if ep != dropped] + ["CPUExecutionProvider"]
        with pytest.raises(ProviderUnavailableError, match=f"missing \\['{dropped}'\\]"):
            backend.load(artifacts / spec.file, spec, "image_encoder")
    _CapturedSession.active = ["CPUExecutionProvider"]
    OrtBackend("cpu", cache=False).load(artifacts / spec.file, spec, "image_encoder")
    with pytest.raises(RuntimeError):
        _CapturedSession.made[-1].options.get_session_config_entry("session.disable_cpu_ep_fallback")  # not set


def test_real_onnxruntime_refuses_cpu_nodes_with_the_gpu_options(artifacts, monkeypatch):
    """The real (CPU-only) ORT with the options the `cuda` backend passes: the CUDA EP is absent, so every node
    would land on the CPU EP, and ORT refuses the session instead of running it there."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    spec = load_manifest(artifacts).graphs["mask_decoder"]
    with warnings.catch_warnings(), pytest.raises(ProviderUnavailableError, match="CPU fallback is disabled"):
        warnings.simplefilter("ignore")  # onnxruntime warns that it lacks the provider
        OrtBackend("cuda", cache=False).load(artifacts / spec.file, spec, "mask_decoder")


def test_engine_compat_refuses_other_tensorrt_or_gpu():
    meta = {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}
    check_engine_compat("a.engine", meta, "10.3.0", DeviceInfo("Orin", "8.7"))
    with pytest.raises(EngineMismatchError, match=r"TensorRT 10\.3\.0 \(this machine has TensorRT 10\.8\.0\)"):
        check_engine_compat("a.engine", meta, "10.8.0", DeviceInfo("Orin", "8.7"))
    with pytest.raises(
        EngineMismatchError, match=r"compute capability 8\.7, Orin \(this GPU: compute capability 9\.0, H100\)"
    ):
        check_engine_compat("a.engine", meta, "10.3.0", DeviceInfo("H100", "9.0"))


def test_device_copies_are_keyed_by_array_identity_and_dropped_with_it():
    released = []
    copies = DeviceCopies(upload=lambda a: ("device", float(a.sum())), release=released.append)
    a = np.ones((1, 4, 3), np.float32)
    a.flags.writeable = False
    b = 2 * a
    b.flags.writeable = False
    assert copies.get(a) is copies.get(a) and copies.uploads == 1
    assert copies.get(b) == ("device", 24.0) and copies.uploads == 2  # equal shape, other identity: its own copy
    del a
    gc.collect()
    assert released == [("device", 12.0)] and len(copies) == 1
    copies.clear()
    assert len(copies) == 0 and len(released) == 2
    assert (
        is_support_array(b) and not is_support_array(np.ones(3)) and not is_support_array(b[:, :2])
    )  # writable; a view


def test_device_tensor_is_array_like_and_spills():
    calls = []
    t = DeviceTensor(
        (1, 2), "float32", owner=None, handle=123, fetch=lambda: calls.append(1) or np.ones((1, 2), np.float32)
    )
    assert (t.shape, t.dtype, t.ndim) == ((1, 2), np.float32, 2)
    assert np.asarray(t).sum() == 2 and np.concatenate([t, t], axis=1).shape == (1, 4)
    assert len(calls) == 1  # copied to host once
    t.spill()
    assert t.handle is None and "host" in repr(t)


def test_device_tensor_read_racing_a_spill_gets_its_own_values():
    """Thread A reads a tensor while thread B, running a graph under the backend lock, spills it and
    overwrites its buffer: A must get the values from before the overwrite (B's spill), not B's."""
    lock, device = threading.RLock(), {"buffer": np.array([1.0], np.float32)}

    def download():
        with lock:  # as TensorRTBackend.download
            return device["buffer"].copy()

    t = DeviceTensor((1,), "float32", owner=None, handle=1, fetch=download, lock=lock)
    got = []
    with lock:  # B's graph run
        reader = threading.Thread(target=lambda: got.append(t.numpy()[0]))
        reader.start()
        time.sleep(0.2)  # A is now waiting for the lock
        t.spill()  # B is about to overwrite the buffer: the tensor gets a host copy first
        device["buffer"][0] = 2.0
    reader.join()
    assert got == [1.0]


def test_create_backend_names_every_provider(artifacts, episode, tmp_path, capsys):
    assert create_backend(RuntimeOptions("cpu")).provider == "cpu"
    with pytest.raises(ValueError, match="unknown provider"):
        RuntimeOptions("gpu0")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        from runtime import cli

        with pytest.raises(ProviderUnavailableError, match="tensorrt-native.*tensorrt"):
            create_backend(RuntimeOptions("tensorrt-native"))
        rc = cli.main(
            [
                "segment",
                "--artifacts",
                str(artifacts),
                "--support",
                *map(str, episode.supports[0]),
                "--query",
                str(episode.query),
                "--out",
                str(tmp_path / "m.png"),
                "--provider",
                "tensorrt-native",
            ]
        )
        assert (
            rc == 2
            and "provider 'tensorrt-native' needs the tensorrt and cuda-python packages" in capsys.readouterr().err
        )


def test_ort_io_binding_path_matches_plain_cpu(artifacts, episode):
    backend = BoundCpuBackend()
    plain, bound = FewShotSegmenter(artifacts), FewShotSegmenter(artifacts, backend=backend)
    size = bound.manifest.preprocess.image_size
    feats = backend.graphs["image_encoder"].run({"image": np.zeros((1, 3, size, size), np.float32)})
    assert isinstance(feats["image_embed"], DeviceTensor) and isinstance(feats["high_res_feat0"], DeviceTensor)
    assert backend.graphs["image_encoder"].providers == ["CPUExecutionProvider"]  # reported as OrtGraph does
    a, b = (s.segment(episode.query, s.encode_supports(episode.supports[:1])) for s in (plain, bound))
    assert isinstance(b.low_res_logits, np.ndarray)  # outputs no graph consumes come back as host arrays
    np.testing.assert_allclose(b.low_res_logits, a.low_res_logits, atol=1e-5)
    assert b.score == pytest.approx(a.score, abs=1e-5)


def test_ort_support_sets_are_uploaded_once_and_dropped_with_the_set(artifacts, episode):
    backend = BoundCpuBackend()
    seg, plain = FewShotSegmenter(artifacts, backend=backend), FewShotSegmenter(artifacts)
    copies = backend.graphs["memory_attention"].support_copies
    a, b = (seg.encode_supports([s]) for s in episode.supports[:2])  # same K, other tokens
    first = seg.segment(episode.query, a)
    assert seg.segment(episode.query, a).low_res_logits.tobytes() == first.low_res_logits.tobytes()
    assert copies.uploads == 2 and len(copies) == 2  # memory + memory_pos, once for both queries
    got = seg.segment(episode.query, b)  # a copy keyed by anything but the set's identity would reuse a's here
    want = plain.segment(episode.query, b)
    np.testing.assert_allclose(got.low_res_logits, want.low_res_logits, atol=1e-5)
    assert np.abs(got.low_res_logits - first.low_res_logits).max() > 1e-3  # the two sets do differ
    assert copies.uploads == 4 and len(copies) == 4
    del a, b
    gc.collect()
    assert len(copies) == 0  # dropped with the sets
    one = seg.encode_supports(episode.supports[:1])
    seg.segment(episode.query, one)
    two = one + seg.encode_support(*episode.supports[1])  # a new set; `one`'s copies go when it does
    seg.segment(episode.query, two)
    assert len(copies) == 4
    del one
    gc.collect()
    assert len(copies) == 2


def test_recorded_device_graphs_run_each_episode_on_its_own_set(artifacts, episode):
    """Through the fidelity gate's recording wrapper, a second episode of the same K on the device path
    must not run on the first episode's device copy."""
    seg, rec = recording_segmenter(artifacts, BoundCpuBackend())
    plain = FewShotSegmenter(artifacts)
    first = Episode_(episode.supports[:1], episode.query)
    second = Episode_(episode.supports[1:2], episode.query)
    run_episode(seg, first)
    got, want = run_episode(seg, second), run_episode(plain, second)
    np.testing.assert_allclose(got.low_res_logits, want.low_res_logits, atol=1e-5)


def test_gpu_check_reports_parity_latency_and_failures(artifacts, tmp_path, capsys):
    import shutil

    from graph_edits import edit_outputs, rerecord

    from fssam2_export import gpu_check

    assert gpu_check.main(["--artifacts", str(artifacts), "--providers", "cpu", "--shots", "1", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("cpu "))
    assert row.split()[1:6] == ["1", "1.0000", "1.00000", "0.00e+00", "0.00e+00"] and len(row.split()) == 6 + len(
        gpu_check.MODULES
    )
    assert "all checks passed" in out
    # a candidate whose logits are shifted (half the mask flips, correlation stays 1) must fail against the reference
    shifted = tmp_path / "shifted"
    shutil.copytree(artifacts, shifted)
    edit_outputs(shifted / "mask_decoder.onnx", {"low_res_logits": -3.0})
    rerecord(shifted, "mask_decoder")
    assert (
        gpu_check.main(
            [
                "--artifacts",
                str(shifted),
                "--reference",
                str(artifacts),
                "--providers",
                "cpu",
                "--shots",
                "1",
                "--repeats",
                "1",
            ]
        )
        == 1
    )
    out = capsys.readouterr().out
    assert "PARITY FAIL" in out and "gpu check: FAILED" in out
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert (
            gpu_check.main(
                ["--artifacts", str(artifacts), "--providers", "tensorrt-native", "--shots", "1", "--repeats", "1"]
            )
            == 1
        )
        out = capsys.readouterr().out
        assert "tensorrt-native   1  FAILED: ProviderUnavailableError" in out and "gpu check: FAILED" in out


def test_tensorrt_ep_load_path_without_the_ep(artifacts, tmp_path, monkeypatch):
    """The TensorRT EP load path as far as a CPU-only onnxruntime goes: profiles, cache dir, no silent fallback."""
    monkeypatch.setattr(
        ort,
        "get_available_providers",
        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    manifest = load_manifest(artifacts)
    spec = manifest.graphs["memory_attention"]
    with pytest.raises(ValueError, match="num_memory_tokens.*create_backend"):
        create_backend(RuntimeOptions("tensorrt")).load(artifacts / spec.file, spec, "memory_attention")
    backend = OrtBackend(
        "tensorrt", dims=memory_dim_ranges(manifest.episode, max_shots=3), trt_cache_dir=tmp_path / "cache"
    )
    with warnings.catch_warnings(), pytest.raises(ProviderUnavailableError, match="tensorrt.*CPU fallback is disabled"):
        warnings.simplefilter("ignore")  # onnxruntime warns that it lacks the provider
        backend.load(artifacts / spec.file, spec, "memory_attention")
    assert (tmp_path / "cache").is_dir()


@pytest.mark.parametrize(
    "installed, says",
    [
        ({"onnxruntime"}, "pip uninstall -y onnxruntime && pip install onnxruntime-gpu"),
        (
            {"onnxruntime", "onnxruntime-gpu"},
            "onnxruntime and onnxruntime-gpu are installed together and overwrite each "
            "other's `onnxruntime` module; keep only the GPU build: "
            "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu",
        ),
        ({"onnxruntime-gpu"}, "onnxruntime-gpu is installed but does not offer it"),
        ({"onnxruntime-openvino"}, "pip uninstall -y onnxruntime-openvino && pip install onnxruntime-gpu"),
    ],
)
def test_missing_cuda_provider_says_what_to_uninstall(monkeypatch, installed, says):
    """The hint follows the installed ONNX Runtime distributions (metadata faked); it never suggests adding
    onnxruntime-gpu beside another build."""
    import runtime.engine.versions as versions

    def version(dist):
        if dist not in installed:
            raise versions.metadata.PackageNotFoundError(dist)
        return "1.0"

    monkeypatch.setattr(versions.metadata, "version", version)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ProviderUnavailableError) as err:
        OrtBackend("cuda")
    assert says in str(err.value) and "fssam2[gpu]" not in str(err.value)
