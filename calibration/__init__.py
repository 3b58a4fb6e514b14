"""Calibration and reduced precision: episode calibration capture, FP16 with FP32 islands, INT8 QDQ,
the fidelity gate wiring and the CPU speed comparison. Used by fssam2_export; never by the runtime."""

import onnxruntime as _ort

_ort.set_default_logger_severity(3)  # the calibrator's sessions warn about every unfoldable node
