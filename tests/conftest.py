"""Shared fixtures: a random-init tiny model at a small image size, its exported artifacts (made
through the real CLI) and synthetic episodes written to disk. Parity figures are collected with
`record_metric` and printed at the end of the run (and written to $FSSAM2_METRICS if set)."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest


def unavailable(reason: str, require_env: str) -> None:
    """Skip what needs a missing dependency, or fail when `require_env` is set (.ci/run sets it: CI must run it)."""
    if os.environ.get(require_env):
        pytest.fail(f"{reason}; {require_env} is set, so this must run here, not skip", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require(module: str, reason: str, require_env: str):
    """`module` imported, else `unavailable(reason, require_env)`."""
    try:
        return importlib.import_module(module)
    except ImportError:
        unavailable(reason, require_env)


def require_openvino():
    """openvino imported, else `unavailable` (.ci/run sets FSSAM2_REQUIRE_OPENVINO)."""
    return require(
        "openvino", "the openvino provider needs OpenVINO (pip install 'fssam2[openvino]')", "FSSAM2_REQUIRE_OPENVINO"
    )


SMALL = 256  # image size for most tests (multiple of 32); the slow test runs 1024
SEED = 0
_METRICS: dict[str, float] = {}


@pytest.fixture(scope="session")
def tiny_model():
    from fssam2_export.models import build_model

    return build_model("sam2.1_hiera_t", random_init=True, seed=SEED, image_size=SMALL)


def _export(tmp_path_factory, size: int) -> Path:
    """The random-init tiny model exported at `size` through the real CLI."""
    from calibration.export_cli import main

    out = tmp_path_factory.mktemp(f"export{size}") / "artifacts"
    args = ["--model", "sam2.1_hiera_t", "--random-init", "--seed", str(SEED), "--image-size", str(size)]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    return _export(tmp_path_factory, SMALL)


@pytest.fixture(scope="session")
def episode(tmp_path_factory):
    from runtime.tools.synthetic import write_episode

    return write_episode(tmp_path_factory.mktemp("episode"), shots=5, seed=1)


@pytest.fixture(scope="session")
def record_metric():
    def record(name: str, value: float) -> None:
        _METRICS[name] = float(value)

    return record


def pytest_terminal_summary(terminalreporter):
    if not _METRICS:
        return
    terminalreporter.section("fssam2 parity figures")
    for name, value in sorted(_METRICS.items()):
        terminalreporter.write_line(f"{name:<48} {value:.3e}")
    if path := os.environ.get("FSSAM2_METRICS"):
        Path(path).write_text(json.dumps(_METRICS, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="session")
def artifacts_128(tmp_path_factory) -> Path:
    """The tiny model at 128x128 (FP32, ORT flavours, as the CLI exports it by default): label / serve / Ray tests,
    where many queries run, and the precision and gate tests' FP32 reference."""
    return _export(tmp_path_factory, 128)


@pytest.fixture(scope="session")
def seg(artifacts):
    """A segmenter over `artifacts` (ONNX Runtime CPU), shared: it holds no support state, only its sessions."""
    from runtime import FewShotSegmenter

    return FewShotSegmenter(artifacts)


@pytest.fixture(scope="session")
def seg_128(artifacts_128):
    """A segmenter over `artifacts_128`, shared like `seg`."""
    from runtime import FewShotSegmenter

    return FewShotSegmenter(artifacts_128)


def _patch_capabilities(patch: pytest.MonkeyPatch, edit) -> None:
    """OpenVINO's CPU reports `edit(capabilities)` as its OPTIMIZATION_CAPABILITIES."""
    import openvino

    real = openvino.Core.get_property

    def get_property(self, device, name):
        value = real(self, device, name)
        return edit(value) if name == "OPTIMIZATION_CAPABILITIES" else value

    patch.setattr(openvino.Core, "get_property", get_property)


def _runs_bf16(core) -> bool:
    """Whether OpenVINO's CPU plugin compiles a matmul to BF16 under the bf16 hint (it converts on AVX-512 CPUs that
    do not list BF16: slow, the same BF16 rounding)."""
    import numpy as np
    import openvino
    import openvino.opset13 as ops

    from runtime.backends.openvino_tuning import runtime_precisions

    x = ops.parameter([1, 32, 32], np.float32, name="x")
    model = openvino.Model([ops.matmul(x, ops.constant(np.ones((32, 32), np.float32)), False, False)], [x])
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    return "bf16" in runtime_precisions(compiled).values()


@pytest.fixture(scope="module")
def openvino_bf16():
    """The openvino provider's BF16 paths under test on any CPU OpenVINO runs BF16 on: where its CPU does not list
    BF16 (no AMX / AVX512_BF16) but converts to it, BF16 is reported as offered for the module. Where OpenVINO runs no
    BF16 (AVX2 only) nothing changes: the FP32 tests run, those taking `needs_bf16` skip."""
    import openvino

    core = openvino.Core()
    if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") or not _runs_bf16(core):
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        _patch_capabilities(patch, lambda caps: [*caps, "BF16"])
        yield


def bf16_offered() -> bool:
    """Whether OpenVINO's CPU offers BF16 (as `openvino_bf16` reports it)."""
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(scope="module")
def needs_bf16(openvino_bf16):
    """Skips where OpenVINO runs no BF16 on this CPU."""
    if not bf16_offered():
        pytest.skip("OpenVINO runs no BF16 on this CPU (no AMX / AVX512_BF16, and no AVX-512 to convert on)")


@pytest.fixture
def no_bf16(monkeypatch):
    """OpenVINO's devices report no BF16 capability, as on a CPU without AMX / AVX512_BF16."""
    _patch_capabilities(monkeypatch, lambda caps: [c for c in caps if c != "BF16"])
