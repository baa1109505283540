"""Wrappers that make an AnomalyModel take what a station has: one uint8 RGB NHWC frame.

Decision (docs/export.md): cast, /255, mean/std normalisation and NHWC->NCHW live inside the graph,
so the runtime only decodes and resizes (imageio.resize_image) and needs no per-model arithmetic.
Resize stays outside: the camera frame size is not known at export time and the graph keeps
static shapes. The Cast is the first op on `image` because TensorRT accepts uint8 only as a
network input that is cast straight away.
"""
from __future__ import annotations

import torch
from torch import nn

from protospect.training.layers import Normalize


class UInt8Preprocess(nn.Module):
    """uint8 (B,H,W,3) RGB -> float (B,3,H,W) normalised with the model's mean/std."""

    def __init__(self, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.to(torch.float32) / 255.0
        return self.normalize(x.permute(0, 3, 1, 2))


class FullGraph(nn.Module):
    """image -> (anomaly_map, image_score) with the bank inside the model (an initializer)."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.pre = UInt8Preprocess(mean, std)
        self.model = model

    def forward(self, image):
        out = self.model(self.pre(image))
        return out.anomaly_map, out.image_score


class FullGraphBankInput(nn.Module):
    """image, bank -> (anomaly_map, image_score): the model's bank buffer is replaced by a graph input."""

    def __init__(self, model: nn.Module, mean, std, bank_buffer: str):
        super().__init__()
        self.pre = UInt8Preprocess(mean, std)
        self.model = model
        self.bank_buffer = bank_buffer

    def forward(self, image, bank):
        # Swap the buffer for the traced input (torch.func.functional_call refuses to run under tracing).
        owner_path, _, attr = self.bank_buffer.rpartition(".")
        owner = self.model.get_submodule(owner_path) if owner_path else self.model
        kept = owner._buffers[attr]
        owner._buffers[attr] = bank
        try:
            out = self.model(self.pre(image))
        finally:
            owner._buffers[attr] = kept
        return out.anomaly_map, out.image_score


class FeaturesGraph(nn.Module):
    """image -> queries (B,N,D) [, guide (B,G,h,w)] from a split model's features module."""

    def __init__(self, features: nn.Module, mean, std):
        super().__init__()
        self.pre = UInt8Preprocess(mean, std)
        self.features = features

    def forward(self, image):
        return self.features(self.pre(image))


class HeadGraph(nn.Module):
    """knn_sqdist (B,N,k) [, guide] -> (anomaly_map, image_score)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, *inputs):
        out = self.head(*inputs)
        return out.anomaly_map, out.image_score
