"""Shape ranges for the graphs' dynamic axes: what TensorRT profiles (engines and ORT's TensorRT EP) are built for.

The only dynamic axis in the graph set is the memory length `num_memory_tokens` = K x
`episode.tokens_per_support`; every other dimension is static in the manifest. A profile covers
K = 1..max_shots supports, tuned for `opt_shots`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError, ShotLimitError
from .manifest import Episode, GraphSpec

MEMORY_AXIS = "num_memory_tokens"
DEFAULT_MAX_SHOTS = 8
DEFAULT_OPT_SHOTS = 5

Shape = tuple[int, ...]


@dataclass(frozen=True)
class DimRange:
    min: int
    opt: int
    max: int


@dataclass(frozen=True)
class InputProfile:
    min: Shape
    opt: Shape
    max: Shape


def memory_dim_ranges(
    episode: Episode, max_shots: int = DEFAULT_MAX_SHOTS, opt_shots: int | None = None
) -> dict[str, DimRange]:
    """{dynamic axis name: range} for K = 1..max_shots supports, opt at `opt_shots` (default min(5, max))."""
    opt = min(DEFAULT_OPT_SHOTS, max_shots) if opt_shots is None else opt_shots
    if max_shots < 1:
        raise InputError(f"max shots must be >= 1, got {max_shots}")
    if not 1 <= opt <= max_shots:
        raise InputError(f"opt shots must be within 1..{max_shots} (max shots), got {opt}")
    t = episode.tokens_per_support
    return {MEMORY_AXIS: DimRange(t, opt * t, max_shots * t)}


def input_profiles(spec: GraphSpec, dims: dict[str, DimRange]) -> dict[str, InputProfile]:
    """Min/opt/max shape of every dynamic input of `spec` (static inputs are left out)."""
    out = {}
    for t in spec.inputs:
        if all(isinstance(d, int) for d in t.shape):
            continue
        unknown = [d for d in t.shape if isinstance(d, str) and d not in dims]
        if unknown:
            raise InputError(f"input '{t.name}' has dynamic axis {unknown[0]!r} with no range (known: {sorted(dims)})")
        out[t.name] = InputProfile(
            *(tuple(getattr(dims[d], k) if isinstance(d, str) else d for d in t.shape) for k in ("min", "opt", "max"))
        )
    return out


def check_memory_length(graph: str, feeds, profiles: dict[str, InputProfile], built: str, remedy: str) -> None:
    """Raise ShotLimitError if a memory input is longer than its profile's max (K beyond the profile)."""
    for name, p in profiles.items():
        if name in feeds and feeds[name].shape[1] > p.max[1]:
            tokens, per = feeds[name].shape[1], p.min[1]
            raise ShotLimitError(
                f"{graph}: {tokens // per} supports ({tokens} memory tokens in '{name}') exceed {built}: "
                f"up to {p.max[1] // per} supports ({p.max[1]} tokens); {remedy}"
            )
