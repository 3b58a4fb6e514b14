"""One options value: `RuntimeOptions` is checked when made, the segmenter takes it (or a provider, or a backend, never
two of them), and every `fssam2` command that runs graphs builds it from the same argument group."""

import pytest

from runtime import FewShotSegmenter, InputError, RuntimeOptions, registered_providers
from runtime.cli import options_from_args, parser

RUNTIME_FLAGS = {"--threads", "--ov-precision", "--device-id", "--no-cache", "--cache-dir"}
RUNS_GRAPHS = {"support", "segment", "check", "bench", "label", "serve"}


def test_options_are_checked_when_made():
    assert RuntimeOptions() == RuntimeOptions("cpu", None, {}, 0, 8, True, None)
    cases = [
        (dict(provider="gpu0"), "unknown provider 'gpu0'"),
        (dict(threads=0), "threads must be"),
        (dict(device_id=-1), "device_id must be"),
        (dict(max_shots=0), "max_shots must be"),
        (dict(precision={"decoder": "bf16"}), "unknown graph(s) ['decoder']"),
        (dict(precision={"*": ""}), "precision values"),
    ]
    for fields, message in cases:
        with pytest.raises(InputError) as e:
            RuntimeOptions(**fields)
        assert message in str(e.value), fields
    source = {"*": "bf16"}
    made = RuntimeOptions("openvino", precision=source)
    source["*"] = "fp32"
    assert made.precision == {"*": "bf16"}, "the value keeps what it was made with"
    assert set(registered_providers()) == {"cpu", "cuda", "tensorrt", "tensorrt-native", "openvino"}


def test_segmenter_takes_options_a_provider_or_a_backend_never_two(tmp_path):
    class Backend:
        name = provider = "fake"

    nowhere = tmp_path / "nowhere"  # refused before the artifacts are read
    for kwargs, message in [
        (dict(backend=Backend(), provider="cpu"), "not both"),
        (dict(backend=Backend(), options=RuntimeOptions()), "not both"),
        (dict(options=RuntimeOptions(), provider="cpu"), "not both"),
        (dict(options="cpu"), "provider='cpu'"),
    ]:
        with pytest.raises(InputError, match=message):
            FewShotSegmenter(nowhere, **kwargs)


def test_every_command_that_runs_graphs_shares_the_runtime_options_group():
    commands = {a.dest: a for a in parser()._actions if a.dest == "command"}["command"].choices
    for name, sub in commands.items():
        flags = {s for a in sub._actions for s in a.option_strings}
        if name in RUNS_GRAPHS:
            assert RUNTIME_FLAGS <= flags and ("--providers" if name == "bench" else "--provider") in flags, name
        else:
            assert not RUNTIME_FLAGS & flags, name


def test_the_group_builds_one_options_value():
    args = parser().parse_args(
        ["label", "--artifacts", "a", "--class", "c=c.fssam2", "--images", "i", "--out", "o"]
        + ["--provider", "openvino", "--threads", "3", "--ov-precision", "bf16,mask_decoder=fp32"]
        + ["--device-id", "1", "--no-cache", "--cache-dir", "cache"]
    )
    assert options_from_args(args, max_shots=5) == RuntimeOptions(
        "openvino", 3, {"*": "bf16", "mask_decoder": "fp32"}, 1, 5, False, "cache"
    )
    sweep = parser().parse_args(
        ["bench", "--artifacts", "a", "--providers", "cpu", "openvino", "--ov-precision", "bf16"]
    )
    runs = [options_from_args(sweep, p) for p in sweep.providers]
    assert [(o.provider, o.precision) for o in runs] == [("cpu", {}), ("openvino", {"*": "bf16"})]
