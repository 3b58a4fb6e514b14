"""fssam2 runtime: torch-free K-shot FS-SAM2 inference over exported ONNX graphs (numpy + onnxruntime)."""

from .backends import Backend, Graph, OrtBackend, ProviderUnavailableError
from .image import InputError
from .manifest import Flavour, GraphSpec, Manifest, ManifestError, load_manifest
from .memory_bank import MemoryBank
from .segmenter import FewShotSegmenter, ModuleTiming, Segmentation

__all__ = [
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
    "load_manifest",
]
