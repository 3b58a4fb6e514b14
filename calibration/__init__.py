"""Calibration data from few-shot episodes, INT8 (QDQ) / FP16 conversion and the accuracy gate. Not implemented yet: see the open issues."""
