"""fssam2 runtime: torch-free K-shot FS-SAM2 inference over exported ONNX graphs (numpy + onnxruntime)."""

from .backends import PROVIDERS, Backend, Graph, OrtBackend, ProviderUnavailableError, create_backend
from .image import InputError
from .manifest import Flavour, GraphSpec, Manifest, ManifestError, load_manifest
from .memory_bank import MemoryBank
from .segmenter import FewShotSegmenter, ModuleTiming, Segmentation

__all__ = [
    "PROVIDERS",
    "Backend",
    "FewShotSegmenter",
    "Flavour",
    "Graph",
    "GraphSpec",
    "InputError",
    "Manifest",
    "ManifestError",
    "MemoryBank",
    "ModuleTiming",
    "OrtBackend",
    "ProviderUnavailableError",
    "Segmentation",
    "create_backend",
    "load_manifest",
]
