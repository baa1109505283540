"""The model.py that `export --triton-repo DIR --triton-backend python` writes (a string, so it ships with the package)."""

MODEL_PY = '''"""Triton Python-backend model written by `protospect export --triton-repo DIR --triton-backend python`.

Runs model.onnx (beside this file) with ONNX Runtime on the CPU; Triton's dynamic batcher hands several
requests to one execute() call, and they are run as one batch. Needs numpy<2 and onnxruntime in the
Python the backend's stub runs (EXECUTION_ENV_PATH in config.pbtxt: export --triton-python-env); with
numpy 2 the stub of Triton 2.51 answers empty tensors.
"""
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests):
        images = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        counts = [len(x) for x in images]
        results = self.session.run(self.outputs, {self.input: np.concatenate(images)})
        responses, start = [], 0
        for n in counts:
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(value[start:start + n]))
                       for name, value in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses

    def finalize(self):
        self.session = None
'''
