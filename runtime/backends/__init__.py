"""The inference backends: ONNX Runtime (CPU, CUDA, TensorRT EP), OpenVINO and TensorRT engines."""
