"""fssam2 runtime: torch-free K-shot FS-SAM2 inference over exported ONNX graphs (numpy + onnxruntime).

The package face: what callers import. Inside, one-way rooms (docs/architecture.md): engine <- backends <- tools <-
apps <- cli. Importing `runtime` imports `runtime.backends`, so every provider is registered.
"""

from . import backends  # noqa: F401  (registers every provider with the engine)
from .engine.backend import Backend, DelegatingGraph, Graph, create_backend, register_backend, registered_providers
from .engine.errors import (
    BackendError,
    CudaError,
    EngineMismatchError,
    Error,
    FidelityError,
    InputError,
    ManifestError,
    ProviderUnavailableError,
    ShotLimitError,
    SupportSetError,
)
from .engine.manifest import Flavour, GraphSpec, Manifest, load_manifest
from .engine.options import RuntimeOptions
from .engine.results import MultiClassSegmentation, Segmentation
from .engine.segmenter import FewShotSegmenter, ModuleTiming
from .engine.support_set import Fingerprint, SupportSet

__all__ = [
    "Backend",
    "BackendError",
    "CudaError",
    "DelegatingGraph",
    "EngineMismatchError",
    "Error",
    "FewShotSegmenter",
    "FidelityError",
    "Fingerprint",
    "Flavour",
    "Graph",
    "GraphSpec",
    "InputError",
    "Manifest",
    "ManifestError",
    "ModuleTiming",
    "MultiClassSegmentation",
    "ProviderUnavailableError",
    "RuntimeOptions",
    "Segmentation",
    "ShotLimitError",
    "SupportSet",
    "SupportSetError",
    "create_backend",
    "load_manifest",
    "register_backend",
    "registered_providers",
]
