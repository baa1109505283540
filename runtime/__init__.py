"""Runtime room: camera -> preprocess -> backend -> verdict -> sinks. Never imports torch, training,
export or calibration (tests/test_rooms.py): only the protospect core and, for the split path, cpp_ext's
torch-free launcher and numpy reference.

At module level the runtime imports only the standard library, numpy, OpenCV, tqdm (the pipeline's
progress bar) and the protospect core; onnxruntime, tensorrt and cuda-python are imported where they
are used (protospect._optional.require).
"""
