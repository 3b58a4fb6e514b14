"""The inference backends, each registering its providers with the engine (`runtime.engine.backend.register_backend`)
when imported: ONNX Runtime `cpu`, `cuda`, `tensorrt` (ort, with its model cache, GPU path and device copies),
`tensorrt-native` (tensorrt) and `openvino` (openvino, its graph surgery in openvino_tuning). A new provider is a
module here that registers itself, imported below. Heavy dependencies (onnxruntime, openvino, tensorrt, cuda-python)
are imported only when a backend is made."""

# Import order = registration order = the order `registered_providers()` lists the providers in.
# isort: off
from .ort import OrtBackend, gpu_install_hint
from .tensorrt import TensorRTBackend
from .openvino import OpenVinoBackend

# isort: on

__all__ = ["OpenVinoBackend", "OrtBackend", "TensorRTBackend", "gpu_install_hint"]
