"""The backend contract and the provider registry: what the segmenter asks of a backend, and how one is made.

A `Backend` turns one graph's file + its manifest spec into a `Graph` (`load(path, spec, graph)`, told the graph's
name); `Graph.run(feeds)` maps input names to arrays and returns output names to arrays. Both also say what callers
report: which execution providers really run a graph, the precision it computes in, whether it came from a cache, and
(before loading) the precision a graph will run in (`precision_for`). `provider` names the manifest flavours the
segmenter hands the backend (`GraphSpec.artifact_for`).

The contract lives here, in the engine, because the segmenter makes a backend from `RuntimeOptions` without knowing
any backend: each backend module under `runtime/backends/` registers a factory for its providers
(`register_backend`), and importing `runtime` imports them all. Any object with the same attributes (a remote
server, a test fake, a wrapper deriving from `DelegatingGraph`) can be handed to the segmenter instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import InputError
from .manifest import GraphSpec, Manifest
from .options import RuntimeOptions

CACHE_STATES = ("hit", "built", "off")  # a graph loaded from a cached copy, one saved now, or no cache


class Graph(Protocol):
    providers: Sequence[str]  # what actually runs it, e.g. ["CPUExecutionProvider"], ["OpenVINO-CPU"]
    precision: str  # what it computes in: "fp32", "fp16", "bf16", "int8", "int8+fp32", ...
    cache: str  # one of CACHE_STATES

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Backend(Protocol):
    name: str  # says what runs the graphs, e.g. "onnxruntime-cpu"
    provider: str  # picks each graph's flavour in the manifest (GraphSpec.artifact_for)

    def load(self, path: Path, spec: GraphSpec, graph: str) -> Graph:
        """Load graph `graph` (one of GRAPH_NAMES) from `path`: its standard file or the flavour for `provider`."""
        ...

    def precision_for(self, graph: str, spec: GraphSpec) -> str:
        """The precision `load` will run `graph` in, known before loading it (the loaded `Graph.precision` may say
        more: an INT8 graph on OpenVINO reports "int8+<the precision of the rest>")."""
        ...


class DelegatingGraph:
    """A `Graph` that runs and describes itself as `inner`: the base of wrappers that watch or change a graph's calls
    (override `run`)."""

    def __init__(self, inner: Graph):
        self.inner = inner

    @property
    def providers(self) -> Sequence[str]:
        return self.inner.providers

    @property
    def precision(self) -> str:
        return self.inner.precision

    @property
    def cache(self) -> str:
        return self.inner.cache

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.inner.run(feeds)


BackendFactory = Callable[[RuntimeOptions, "Manifest | None"], Backend]
_FACTORIES: dict[str, BackendFactory] = {}


def register_backend(*providers: str) -> Callable[[BackendFactory], BackendFactory]:
    """Decorator: `factory(options, manifest)` makes the backend for each of `providers` (a backend module registers
    itself when imported; it imports its heavy dependencies only when a backend is made)."""

    def register(factory: BackendFactory) -> BackendFactory:
        for provider in providers:
            if _FACTORIES.get(provider, factory) is not factory:
                raise InputError(f"provider {provider!r} is registered twice")
            _FACTORIES[provider] = factory
        return factory

    return register


def registered_providers() -> tuple[str, ...]:
    """The providers `create_backend` can make, in registration order."""
    return tuple(_FACTORIES)


def create_backend(options: RuntimeOptions, manifest: Manifest | None = None) -> Backend:
    """The backend for `options.provider`, configured by `options`; `manifest` sizes what needs the model's shapes
    (the TensorRT EP's profiles, for K = 1..options.max_shots)."""
    factory = _FACTORIES.get(options.provider)
    if factory is None:
        raise InputError(f"unknown provider {options.provider!r}; choose one of {list(registered_providers())}")
    return factory(options, manifest)
