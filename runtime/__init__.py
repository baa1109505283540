"""Runtime room: camera -> preprocess -> backend -> verdict -> sinks. Never imports torch or training.

At module level the runtime imports only the standard library, numpy and OpenCV; onnxruntime,
tensorrt and cuda-python are imported where they are used (protospect._optional.require).
"""
