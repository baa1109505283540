"""Backends and the automatic choice between them.

    backend = select_backend("model.onnx")          # -> OrtBackend (logs which and why)
    backend = select_backend("model.engine")        # -> TrtBackend
    backend = select_backend("split_dir/")          # -> SplitTrtBackend on a GPU, else SplitOrtBackend
    backend = select_backend(path, forced="ort")    # --backend ort|trt|split overrides the choice
    backend = select_backend("flange", forced="triton", triton_url="host:8001")  # a model on a Triton server
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from protospect.errors import ArtifactError, ConfigError
from protospect.runtime.backends.base import Backend, BackendBase

log = logging.getLogger(__name__)

CHOICES = ("auto", "ort", "trt", "split", "triton")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def gpu_stack_available() -> tuple[bool, str]:
    """Whether TensorRT and cuda-python can be imported here (without importing them yet)."""
    missing = [m for m in ("tensorrt", "cuda.bindings") if not _importable(m)]
    return (not missing, "" if not missing else f"{' and '.join(missing)} not installed")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def select_backend(model: str | Path, forced: str = "auto", *, threads: int | None = None,
                   triton_url: str | None = None) -> Backend:
    """The backend for ``model`` (ONNX file, engine file or split folder, or with forced="triton" a model name
    on the Triton server at ``triton_url``); logs the choice and its reason."""
    from protospect.runtime.backends.ort import OrtBackend
    from protospect.runtime.backends.split import FILES_CPU, FILES_GPU, SplitOrtBackend, SplitTrtBackend, is_split_dir
    from protospect.runtime.backends.trt import TrtBackend

    if forced not in CHOICES:
        raise ConfigError(f"--backend {forced} is not one of {', '.join(CHOICES)}")
    if (forced == "triton") != (triton_url is not None):
        raise ConfigError("--backend triton and --triton-url HOST:PORT go together (MODEL is then the model's name "
                          "on the Triton server)")
    if forced == "triton":
        from protospect.runtime.backends.triton import TritonBackend

        log.info("backend: triton, model '%s' at %s (forced by --backend)", model, triton_url)
        return TritonBackend(str(model), triton_url)
    path = Path(model)
    if not path.exists():
        raise ArtifactError(f"model not found: {path} (give a model.onnx, a model.engine or a split export folder)")
    if path.is_dir() and not is_split_dir(path):
        for name, kind in (("model.engine", "trt"), ("model.onnx", "ort")):
            if (path / name).is_file() and forced in ("auto", kind):
                return select_backend(path / name, forced, threads=threads)
        raise ArtifactError(f"{path} is a folder without model.onnx, model.engine or a split export "
                            f"({', '.join(FILES_CPU)})")
    kind = "split" if path.is_dir() else ("trt" if path.suffix in ENGINE_SUFFIXES else "ort" if path.suffix == ".onnx" else "")
    if not kind:
        raise ArtifactError(f"{path}: unknown model type (expected .onnx, .engine or a split export folder)")
    if forced != "auto" and forced != kind:
        hint = {"trt": "build an engine first: protospect build-engine MODEL.onnx",
                "ort": "give the .onnx file the engine was built from",
                "split": "export a split folder: protospect export ART --split --out DIR"}[forced]
        raise ConfigError(f"--backend {forced} cannot run {path} (it is a {kind} model); {hint}")
    why = "forced by --backend" if forced != "auto" else "chosen from the model type"
    if kind == "ort":
        backend = OrtBackend(path, threads=threads)
        log.info("backend: ort for %s (%s: an ONNX file runs in ONNX Runtime; CUDA provider used when present)", path.name, why)
    elif kind == "trt":
        backend = TrtBackend(path)
        log.info("backend: trt for %s (%s: a serialized TensorRT engine)", path.name, why)
    else:
        ok, reason = gpu_stack_available()
        has_engines = all((path / f).is_file() for f in FILES_GPU)
        if ok and not has_engines:
            ok, reason = False, "no features.engine/head.engine in the folder"
        elif ok:  # the top-k kernel between the engines: can the NVRTC launcher build it here?
            from protospect.cpp_ext.launcher import unavailable_reason

            reason = unavailable_reason() or ""
            ok = not reason
        if ok:
            backend = SplitTrtBackend(path)
            log.info("backend: split-trt for %s (%s: engines, TensorRT and the top-k kernel's toolchain are all here)",
                     path, why)
        else:
            backend = SplitOrtBackend(path, threads=threads)
            log.info("backend: split-ort for %s (%s; GPU path unavailable: %s -> ONNX Runtime + numpy top-k)", path, why, reason)
    return backend


__all__ = ["Backend", "BackendBase", "CHOICES", "select_backend", "gpu_stack_available"]
