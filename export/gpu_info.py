"""Name and compute capability of the GPU an engine is built on (for the engine sidecar)."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from protospect.errors import CudaError


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.7"


def current_gpu(device: int = 0) -> GpuInfo:
    """cuda-python when installed (works on Jetson), else nvidia-smi; CudaError when neither answers."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        runtime = None
    if runtime is not None:
        err, prop = runtime.cudaGetDeviceProperties(device)
        if int(err) == 0:
            name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
            return GpuInfo(name.rstrip("\x00").strip(), f"{prop.major}.{prop.minor}")
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", f"--id={device}", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and "," in out.stdout:
            name, cc = (s.strip() for s in out.stdout.strip().splitlines()[0].rsplit(",", 1))
            return GpuInfo(name, cc)
    raise CudaError(f"cannot read GPU {device}'s name and compute capability: install cuda-python "
                    "(pip install 'protospect[gpu]') or make nvidia-smi available")
