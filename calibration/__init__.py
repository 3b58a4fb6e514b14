"""Calibration and reduced precision: episode calibration capture, FP16 with FP32 islands, INT8 QDQ,
the fidelity gate wiring and the CPU speed comparison; and the `fssam2-export` command (export_cli), which needs
them. The top stage: it may import runtime, fssam2_export and training; none of them imports it."""

import onnxruntime as _ort

_ort.set_default_logger_severity(3)  # the calibrator's sessions warn about every unfoldable node
