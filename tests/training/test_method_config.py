"""One config resolver for every method (training/methods/config.py, issue 19 item 7): None keeps the preset's
value everywhere (pcsnet used to set the field to None), unknown keys and presets are refused alike."""
from __future__ import annotations

import dataclasses

import pytest

from protospect.errors import ConfigError
from protospect.training.methods import bpgg, patchcore, prn
from protospect.training.methods.pcsnet import presets as pcsnet

METHODS = {"patchcore": patchcore, "pcsnet": pcsnet, "prn": prn, "bpgg": bpgg}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_none_override_keeps_the_presets_value(name):
    module = METHODS[name]
    preset = module.PRESETS["edge"]
    every_field_none = {f.name: None for f in dataclasses.fields(preset)}
    assert module.resolve_config("edge", every_field_none) == preset
    assert module.resolve_config("edge", {"input_size": None}).input_size == preset.input_size
    assert module.resolve_config("edge", {"input_size": 96}).input_size == 96


@pytest.mark.parametrize("name", sorted(METHODS))
def test_unknown_key_and_preset_are_one_config_error_naming_the_method(name):
    module = METHODS[name]
    with pytest.raises(ConfigError, match=f"{name}: unknown config key"):
        module.resolve_config("edge", {"no_such_key": 1})
    with pytest.raises(ConfigError, match=f"{name}: unknown preset 'nope'"):
        module.resolve_config("nope")
