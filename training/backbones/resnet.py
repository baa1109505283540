"""ResNet-18 and Wide-ResNet-50-2 from torchvision's definitions (the PatchCore/PCSNet paper backbones).

Weights never download: they come from ``--backbone-weights FILE`` (a state_dict .pth) or from
torchvision's own cache, where ``torchvision.models.*(weights=...)`` would have stored them.
Stages 1..4 are layer1..layer4 (strides 4, 8, 16, 32).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from protospect._optional import require
from protospect.errors import ConfigError
from protospect.training.backbones._registry import (
    FrozenBackbone, check_stages, load_state_dict_file, register_backbone)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision's IMAGENET1K_V1 file names (the weights the papers used).
CACHE_FILE_NAMES = {
    "resnet18": "resnet18-f37072fd.pth",
    "wide_resnet50_2": "wide_resnet50_2-95faca4d.pth",
}


class ResNetTaps(nn.Module):
    """Stem + layer1..layerN (N = last tapped stage); returns the tapped layers' outputs."""

    def __init__(self, net: nn.Module, stages: tuple[int, ...]):
        super().__init__()
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layers = nn.ModuleList(getattr(net, f"layer{i}") for i in range(1, max(stages) + 1))
        self.taps = tuple(s - 1 for s in stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.taps:
                feats.append(x)
        return feats


def cached_weight_file(name: str) -> Path:
    """Where torchvision keeps the ImageNet weights for ``name`` (the file need not exist)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / CACHE_FILE_NAMES[name]


def _weight_file(name: str, weights) -> Path:
    if weights is not None:
        return Path(weights)
    path = cached_weight_file(name)
    if not path.is_file():
        raise ConfigError(f"backbone {name}: ImageNet weights not found at {path}; copy torchvision's "
                          f"{CACHE_FILE_NAMES[name]} there or pass --backbone-weights FILE (protospect never downloads)")
    return path


def _build(name: str, stages, weights, input_size, default_stages, default_size) -> FrozenBackbone:
    tv_models = require("torchvision.models", extra="train")
    stages = default_stages if stages is None else stages
    check_stages(name, stages, range(1, 5))
    net = getattr(tv_models, name)(weights=None)
    if weights != "random":
        path = _weight_file(name, weights)
        sd = load_state_dict_file(path, name)
        try:
            net.load_state_dict(sd)
        except RuntimeError as err:  # missing/unexpected keys or shape mismatch
            first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
            raise ConfigError(f"backbone {name}: {path} is not a {name} state_dict ({first})") from err
    return FrozenBackbone(ResNetTaps(net, stages), name=name, input_size=input_size or default_size,
                          mean=IMAGENET_MEAN, std=IMAGENET_STD, stages=stages)


@register_backbone
def resnet18(stages=None, weights=None, input_size=None) -> FrozenBackbone:
    return _build("resnet18", stages, weights, input_size, default_stages=(1, 2, 3), default_size=256)


@register_backbone
def wide_resnet50_2(stages=None, weights=None, input_size=None) -> FrozenBackbone:
    return _build("wide_resnet50_2", stages, weights, input_size, default_stages=(1, 2, 3), default_size=224)
