"""The GPU identity query, once: name and compute capability of a CUDA device.

build-engine writes them into the engine sidecar, the TensorRT backend checks the sidecar against them
(runtime/cuda.py's device_identity) and the kernel launcher picks its cubin architecture from them
(cpp_ext/launcher.py). cuda-python is optional: imported only when asked.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from protospect.errors import CudaError


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.7"

    @property
    def major_minor(self) -> tuple[int, int]:
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)


def from_properties(props) -> GpuInfo:
    """GpuInfo from a cudaGetDeviceProperties result (cuda-python's cudaDeviceProp or a fake with
    name/major/minor)."""
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(name.rstrip("\x00").strip(), f"{int(props.major)}.{int(props.minor)}")


def current_gpu(device: int = 0) -> GpuInfo:
    """cuda-python when installed (works on Jetson), else nvidia-smi; CudaError when neither answers."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        runtime = None
    if runtime is not None:
        err, prop = runtime.cudaGetDeviceProperties(device)
        if int(err) == 0:
            return from_properties(prop)
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", f"--id={device}", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and "," in out.stdout:
            name, cc = (s.strip() for s in out.stdout.strip().splitlines()[0].rsplit(",", 1))
            return GpuInfo(name, cc)
    raise CudaError(f"cannot read GPU {device}'s name and compute capability: install cuda-python "
                    "(pip install 'protospect[gpu]') or make nvidia-smi available")
