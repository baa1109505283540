"""protospect: few-shot visual anomaly inspection for edge stations.

Rooms (each a sub-package):
  protospect.training     torch: backbones, few-shot data, methods, metrics, eval/train CLIs
  protospect.export       artifact -> ONNX -> TensorRT engine
  protospect.calibration  INT8 Q/DQ graphs from normal images
  protospect.cpp_ext      fused prototype distance + top-k CUDA kernel and its bindings
  protospect.runtime      torch-free camera -> verdict pipeline
"""
__version__ = "0.1.0"
