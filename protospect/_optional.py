"""Import optional dependencies at the point of use, with an error that names the pip extra."""
import importlib

from protospect.errors import MissingDependencyError

_FALLBACKS = {
    "tensorrt": "use the ONNX Runtime backend instead (--backend ort)",
    "cuda.bindings": "use the ONNX Runtime backend instead (--backend ort)",
    "onnxruntime": "",
    "torch": "the runtime does not need torch; training and export do",
}


def require(module: str, extra: str):
    """Return the imported ``module`` or raise MissingDependencyError naming ``pip install protospect[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        hint = _FALLBACKS.get(module.split(".")[0], "")
        msg = f"'{module}' is not installed: pip install 'protospect[{extra}]'"
        raise MissingDependencyError(msg + (f"; or {hint}" if hint else "")) from err
