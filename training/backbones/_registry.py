"""Backbone registry: name -> builder, plus the frozen wrapper every backbone is returned in.

A builder is a function named after the backbone, registered with ``@register_backbone``, that
takes ``(stages, weights, input_size)`` (None = its default) and returns a FrozenBackbone.
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from protospect.errors import ConfigError
from protospect.training.backbones import _memo

_BUILDERS: dict[str, Callable[..., "FrozenBackbone"]] = {}

# Probe size for measuring channels/reductions: a multiple of 32, small enough to be instant.
_PROBE_SIZE = 64


@dataclass(frozen=True)
class BackboneSpec:
    """What a method needs to size itself and what the manifest/ONNX metadata record."""

    name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    stages: tuple[int, ...]
    channels: tuple[int, ...]
    reductions: tuple[int, ...]


class FrozenBackbone(nn.Module):
    """Wraps a feature extractor: no gradients, and eval mode that ``train()`` cannot undo.

    BatchNorm in train mode would update running statistics from the K shots (and differ between
    batch sizes), so the backbone stays in eval mode even inside a parent that calls ``train()``.
    """

    def __init__(self, body: nn.Module, *, name: str, input_size: int, mean, std, stages):
        super().__init__()
        self.body = body
        for p in self.body.parameters():
            p.requires_grad_(False)
        self.train(False)
        channels, reductions = _measure(body)
        if input_size % max(reductions):
            raise ConfigError(
                f"backbone {name}: input size {input_size} is not a multiple of {max(reductions)} "
                f"(the largest stride of stages {tuple(stages)}); pick e.g. {input_size - input_size % max(reductions)}")
        self.spec = BackboneSpec(name=name, input_size=int(input_size), mean=tuple(float(v) for v in mean),
                                 std=tuple(float(v) for v in std), stages=tuple(int(s) for s in stages),
                                 channels=channels, reductions=reductions)

    def train(self, mode: bool = True) -> "FrozenBackbone":
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return _memo.lookup(self, x, self.body)


@torch.no_grad()
def _measure(body: nn.Module) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Channels and strides of each tapped stage, read from a real forward pass (never hard-coded)."""
    feats = body(torch.zeros(1, 3, _PROBE_SIZE, _PROBE_SIZE))
    return tuple(f.shape[1] for f in feats), tuple(_PROBE_SIZE // f.shape[-1] for f in feats)


def register_backbone(fn: Callable[..., FrozenBackbone]) -> Callable[..., FrozenBackbone]:
    """Register a builder under its function name; a second builder with the same name is a bug."""
    name = fn.__name__
    if name in _BUILDERS:
        raise ValueError(f"backbone '{name}' is already registered (by {_BUILDERS[name].__module__})")
    _BUILDERS[name] = fn
    return fn


def list_backbones(pattern: str = "*") -> list[str]:
    return sorted(n for n in _BUILDERS if fnmatch.fnmatch(n, pattern))


def create_backbone(name: str, stages=None, weights=None, input_size: int | None = None) -> FrozenBackbone:
    """Build backbone ``name`` tapping ``stages`` (None = its default).

    ``weights``: None = the backbone's standard offline source, a path to a state_dict file, or
    ``"random"`` for random initialisation (tests only).
    """
    if name not in _BUILDERS:
        close = difflib.get_close_matches(name, _BUILDERS, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"unknown backbone '{name}' (available: {', '.join(list_backbones())}){hint}")
    stages = None if stages is None else tuple(int(s) for s in stages)
    if stages is not None and (not stages or list(stages) != sorted(set(stages))):
        raise ConfigError(f"backbone {name}: stages {stages} must be a non-empty, strictly increasing list")
    return _BUILDERS[name](stages=stages, weights=weights, input_size=input_size)


def check_stages(name: str, stages: tuple[int, ...], valid: range) -> None:
    bad = [s for s in stages if s not in valid]
    if bad:
        raise ConfigError(f"backbone {name}: stage(s) {bad} do not exist; valid stages are {valid.start}..{valid.stop - 1}")


def load_state_dict_file(path, backbone: str) -> dict:
    """torch.load a state_dict (tensors only) with a one-line ConfigError for anything unusable."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"backbone {backbone}: weight file not found: {path} (check --backbone-weights)")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip errors come in many types; all mean "not a state_dict file"
        raise ConfigError(f"backbone {backbone}: cannot read weight file {path}: {err}") from err
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError(f"backbone {backbone}: {path} is not a state_dict of tensors")
    return sd
