"""Export room: a trained artifact becomes one ONNX graph (FP32/FP16/INT8 Q/DQ) and a TensorRT engine."""
