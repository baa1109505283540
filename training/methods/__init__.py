"""Method registry: name -> module with ``fit(shots_rgb, preset, seed, config_overrides) -> AnomalyModel``.

Modules are imported on first use so that asking for one method never imports the others.
"""
from __future__ import annotations

import difflib
import importlib
from types import ModuleType

from protospect.errors import ConfigError

_METHODS = {
    "patchcore": "protospect.training.methods.patchcore",
    "pcsnet": "protospect.training.methods.pcsnet",
    "prn": "protospect.training.methods.prn",
    "bpgg": "protospect.training.methods.bpgg",
}


def list_methods() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> ModuleType:
    if name not in _METHODS:
        close = difflib.get_close_matches(name, _METHODS, n=2)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"unknown method '{name}' (available: {', '.join(list_methods())}){hint}")
    try:
        return importlib.import_module(_METHODS[name])
    except ModuleNotFoundError as err:
        if err.name == _METHODS[name]:
            raise ConfigError(f"method '{name}' is not implemented in this build") from err
        raise
