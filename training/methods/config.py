"""One config resolver for every method (issue 19 item 7): preset + overrides -> a validated config dataclass.

The rule, the same for patchcore, pcsnet, prn and bpgg: an override whose value is None means "keep the
preset's value" (a caller passes every option it has, set or not); unknown presets and unknown keys are
ConfigErrors naming the valid ones; JSON lists become tuples; the dataclass's ``validate()`` runs when it
has one. Config values are settings only: images (bpgg's defective supports, prn's textures) are fit()
arguments, never config.
"""
from __future__ import annotations

import dataclasses

from protospect.errors import ConfigError


def resolve_preset(method: str, presets: dict, preset: str, overrides: dict | None = None):
    """``presets[preset]`` with the non-None ``overrides`` applied, validated."""
    if preset not in presets:
        raise ConfigError(f"{method}: unknown preset '{preset}' (available: {', '.join(sorted(presets))})")
    base = presets[preset]
    kept = {k: v for k, v in (overrides or {}).items() if v is not None}
    return config_from_values(method, type(base), {**dataclasses.asdict(base), **kept})


def config_from_values(method: str, cls, values: dict):
    """A ``cls`` from a full dict of values (a preset's, or a saved manifest's), validated."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{method}: unknown config key(s) {unknown}; valid keys: {', '.join(sorted(names))}")
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        cfg = cls(**fixed)
    except TypeError as err:
        raise ConfigError(f"{method}: incomplete config: {err}") from err
    if callable(getattr(cfg, "validate", None)):
        cfg.validate()
    return cfg
