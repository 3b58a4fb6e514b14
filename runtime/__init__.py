"""fssam2 runtime: torch-free K-shot FS-SAM2 inference over exported ONNX graphs (numpy + onnxruntime)."""

from .backends.ort import PROVIDERS, Backend, Graph, OrtBackend, create_backend
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
from .engine.segmenter import FewShotSegmenter, ModuleTiming, MultiClassSegmentation, Segmentation
from .engine.support_set import Fingerprint, SupportSet

__all__ = [
    "PROVIDERS",
    "Backend",
    "BackendError",
    "CudaError",
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
    "OrtBackend",
    "ProviderUnavailableError",
    "Segmentation",
    "ShotLimitError",
    "SupportSet",
    "SupportSetError",
    "create_backend",
    "load_manifest",
]
