"""Inference backends behind one small interface.

A backend turns a graph file + its manifest spec into a `Graph` whose `run(feeds)` maps input names
to arrays and returns output names to arrays; its `provider` names which of the graph's flavours
(manifest schema 2) the segmenter hands it. The ONNX Runtime backend is the default; any object with
the same `load` method (TensorRT engines, a remote server, a mock) can be injected instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Protocol

import numpy as np

from .manifest import GraphSpec

ORT_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    # TensorRT EP with CUDA for any node TensorRT declines; CPU is deliberately not listed.
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
}


class ProviderUnavailableError(RuntimeError):
    """The requested execution provider cannot be used; there is no silent CPU fallback."""


class Graph(Protocol):
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Backend(Protocol):
    name: str
    provider: str  # picks each graph's flavour in the manifest (GraphSpec.artifact_for)

    def load(self, path: Path, spec: GraphSpec) -> Graph: ...


class OrtGraph:
    def __init__(self, session, output_names: list[str]):
        self._session = session
        self._outputs = output_names

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self._session.run(self._outputs, dict(feeds))))


class OrtBackend:
    """ONNX Runtime with provider `cpu`, `cuda` or `tensorrt`; refuses to run elsewhere than asked."""

    def __init__(self, provider: str = "cpu", intra_op_threads: int | None = None):
        if provider not in ORT_PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}; choose one of {sorted(ORT_PROVIDERS)}")
        import onnxruntime as ort

        self._ort = ort
        self.name = f"onnxruntime-{provider}"
        self.provider = provider
        self._providers = ORT_PROVIDERS[provider]
        wanted = self._providers[0]
        available = ort.get_available_providers()
        if wanted not in available:
            hint = {"cuda": "pip install 'fssam2[gpu]' (onnxruntime-gpu)", "tensorrt": "onnxruntime-gpu built with TensorRT"}
            raise ProviderUnavailableError(
                f"provider {provider!r} needs {wanted}, but this onnxruntime offers {available}; "
                f"install {hint.get(provider, 'a build that has it')}"
            )
        self._options = ort.SessionOptions()
        if intra_op_threads:
            self._options.intra_op_num_threads = intra_op_threads

    def load(self, path: Path, spec: GraphSpec) -> Graph:
        try:
            session = self._ort.InferenceSession(str(path), sess_options=self._options, providers=self._providers)
        except Exception as e:  # ORT raises its own exception types for corrupt files / bad graphs
            raise RuntimeError(f"onnxruntime could not load {path}: {e}") from e
        active = session.get_providers()
        if self._providers[0] not in active:
            raise ProviderUnavailableError(
                f"{path.name}: requested {self._providers[0]} but the session runs on {active}"
            )
        return OrtGraph(session, [o.name for o in spec.outputs])
