"""Calibration room: INT8 Q/DQ ONNX graphs calibrated on normal images only."""
