"""How a segmenter runs its graphs: one value, `RuntimeOptions`, for every provider.

`FewShotSegmenter(artifacts, RuntimeOptions(...))` makes its backend from it (`runtime.engine.backend.create_backend`);
the `fssam2` commands build it from one shared argument group (`runtime.cli.common`). A field a provider has no use
for is ignored by it (threads by `tensorrt-native`, the cache by the TensorRT EP and engines); a precision is refused
by every provider but `openvino`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError
from .manifest import GRAPH_NAMES
from .profiles import DEFAULT_MAX_SHOTS

ALL_GRAPHS = "*"  # a precision key for every graph without its own


@dataclass(frozen=True)
class RuntimeOptions:
    """Provider and its settings; checked when made (InputError naming the field)."""

    provider: str = "cpu"  # cpu | cuda | tensorrt | tensorrt-native | openvino (`registered_providers()`)
    threads: int | None = None  # inference threads: ONNX Runtime intra-op, OpenVINO's; None = the library's choice
    precision: Mapping[str, str] = field(default_factory=dict)  # per graph name, "*" for all (openvino only today)
    device_id: int = 0  # the GPU (cuda, tensorrt, tensorrt-native)
    max_shots: int = DEFAULT_MAX_SHOTS  # the largest K ONNX Runtime's TensorRT EP builds its profile for
    cache: bool = True  # pre-optimised ONNX Runtime models (cpu, cuda) and compiled OpenVINO blobs
    cache_dir: str | Path | None = None  # where (default `<artifacts>/.<kind>_cache`, else the user cache)

    def __post_init__(self):
        from .backend import registered_providers  # the registry imports this module

        if self.provider not in registered_providers():
            raise InputError(f"unknown provider {self.provider!r}; choose one of {list(registered_providers())}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise InputError(
                f"threads must be a whole number >= 1 (or None: the library's choice), got {self.threads!r}"
            )
        if not isinstance(self.device_id, int) or self.device_id < 0:
            raise InputError(f"device_id must be a whole number >= 0, got {self.device_id!r}")
        if not isinstance(self.max_shots, int) or self.max_shots < 1:
            raise InputError(f"max_shots must be a whole number >= 1, got {self.max_shots!r}")
        precision = dict(self.precision or {})
        if bad := [g for g in precision if g not in (*GRAPH_NAMES, ALL_GRAPHS)]:
            raise InputError(f"unknown graph(s) {bad} in precision; graphs are {GRAPH_NAMES} (or {ALL_GRAPHS!r}: all)")
        if bad := [p for p in precision.values() if not isinstance(p, str) or not p]:
            raise InputError(f"precision values must be names such as bf16 or fp32, got {bad}")
        object.__setattr__(self, "precision", precision)  # a private copy: the value stays what it was made with
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))

    def precision_by_graph(self) -> tuple[str | None, dict[str, str]]:
        """(the precision for every graph ("*", None if not given), {graph: its own precision})."""
        return self.precision.get(ALL_GRAPHS), {g: p for g, p in self.precision.items() if g != ALL_GRAPHS}
