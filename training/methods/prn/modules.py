"""PRN's trainable blocks (algorithms.md 2.3-2.5): multi-scale fusion, multi-size self-attention, decoder.

All shapes are static (fixed by the input size), and every op is a plain ONNX op: the element-wise
grouped ``Conv1d(groups = C*s*s)`` of PRNet's MSA is written as multiply-add with parameter tensors,
which is the same arithmetic and exports without grouped 1-D convolutions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class MultiScaleFusion(nn.Module):
    """HRNet-style exchange between three levels at strides r, 2r, 4r (PRNet ``MSFF``-like ``ms_fuser``).

    out1 = x1 + Conv1x1(Up2 x2) + Conv1x1(Up4 x3)
    out2 = x2 + GConv3x3,s2(x1) + Conv1x1(Up2 x3)
    out3 = x3 + GConv5x5,s4(x1) + GConv3x3,s2(x2)
    Every conv has a bias; no norm, no activation. A 1x1 conv and bilinear upsampling commute, so the
    conv runs first, at the small resolution. Groups = gcd(C_in, C_out) (PRNet: C_in, which divides
    C_out for ResNet widths but not for EfficientNet's).
    """

    def __init__(self, channels: tuple[int, int, int]):
        super().__init__()
        c1, c2, c3 = channels
        self.c2_to_1 = nn.Conv2d(c2, c1, 1)
        self.c3_to_1 = nn.Conv2d(c3, c1, 1)
        self.c1_to_2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1, groups=math.gcd(c1, c2))
        self.c3_to_2 = nn.Conv2d(c3, c2, 1)
        self.c1_to_3 = nn.Conv2d(c1, c3, 5, stride=4, padding=2, groups=math.gcd(c1, c3))
        self.c2_to_3 = nn.Conv2d(c2, c3, 3, stride=2, padding=1, groups=math.gcd(c2, c3))

    def forward(self, x1, x2, x3):
        s1, s2 = tuple(x1.shape[-2:]), tuple(x2.shape[-2:])
        out1 = x1 + _up(self.c2_to_1(x2), s1) + _up(self.c3_to_1(x3), s1)
        out2 = x2 + self.c1_to_2(x1) + _up(self.c3_to_2(x3), s2)
        out3 = x3 + self.c1_to_3(x1) + self.c2_to_3(x2)
        return out1, out2, out3


class ElementwiseAffine(nn.Module):
    """y = w * x + b with one weight and bias per token element: PRNet's Conv1d(k=1, groups=C*s*s)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        # Conv1d's default init for fan_in = 1 is U(-1, 1) for both weight and bias.
        self.weight = nn.Parameter(torch.empty(shape).uniform_(-1.0, 1.0))
        self.bias = nn.Parameter(torch.empty(shape).uniform_(-1.0, 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight + self.bias


class PatchAttention(nn.Module):
    """Self-attention among the (H/s)^2 non-overlapping s x s patches of a (B, C, H, W) map.

    Each patch is one token of C*s*s elements; q, k, v are element-wise affine maps of the tokens,
    and the logits are scaled by 1/(C*s*s) (PRNet's choice, not the usual 1/sqrt(d)).
    """

    def __init__(self, channels: int, size: int, patch: int):
        super().__init__()
        self.c, self.size, self.patch = channels, size, patch
        self.n = size // patch  # patches per side
        dim = channels * patch * patch
        self.scale = 1.0 / dim
        self.q, self.k, self.v = (ElementwiseAffine((dim,)) for _ in range(3))

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        b, (c, n, s) = x.shape[0], (self.c, self.n, self.patch)
        x = x.reshape(b, c, n, s, n, s).permute(0, 2, 4, 1, 3, 5)  # B, n, n, C, s, s
        return x.reshape(b, n * n, c * s * s)

    def _image(self, t: torch.Tensor) -> torch.Tensor:
        b, (c, n, s) = t.shape[0], (self.c, self.n, self.patch)
        t = t.reshape(b, n, n, c, s, s).permute(0, 3, 1, 4, 2, 5)  # B, C, n, s, n, s
        return t.reshape(b, c, n * s, n * s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self._tokens(x)
        v = self.v(tokens)
        if self.n == 1:  # one token: softmax over one key is 1, the branch is the affine map of V
            return self._image(v)
        attn = torch.softmax(torch.matmul(self.q(tokens), self.k(tokens).transpose(1, 2)) * self.scale, dim=-1)
        return self._image(torch.matmul(attn, v))


class ResidualBlock(nn.Module):
    """Conv3x3-BN-ReLU-Conv3x3-BN plus a 1x1 conv-BN shortcut, then ReLU (PRNet's MSA output block).

    ``kernel=1`` (edge preset) makes both body convs 1x1: in PRNet these 3x3 convs are about 80 % of
    the model's MACs, while the attention already mixes information across the map.
    """

    def __init__(self, cin: int, cout: int, kernel: int = 3):
        super().__init__()
        pad = kernel // 2
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, padding=pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, kernel, padding=pad, bias=False), nn.BatchNorm2d(cout),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


def patch_sizes(size: int, divisors: tuple[int, ...]) -> list[int]:
    """Patch sides size/d for the divisors d that divide ``size`` (duplicates removed, largest first)."""
    return sorted({size // d for d in divisors if d <= size and size % d == 0}, reverse=True)


class MultiSizeAttention(nn.Module):
    """One MSA block: attention at several patch sizes, concatenated, squeezed back to C channels."""

    def __init__(self, channels: int, size: int, divisors: tuple[int, ...], kernel: int = 3):
        super().__init__()
        sizes = patch_sizes(size, divisors)
        self.branches = nn.ModuleList(PatchAttention(channels, size, s) for s in sizes)
        self.out = ResidualBlock(channels * len(sizes), channels, kernel)

    def forward(self, x):
        return self.out(torch.cat([branch(x) for branch in self.branches], dim=1))


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Decoder(nn.Module):
    """U-Net-style decoder from the un-prototyped deepest feature f4, with the fused levels as skips.

    d3 = DoubleConv(cat[h3, CBR(Up f4)]), d2 = DoubleConv(cat[h2, CBR(Up d3)]),
    d1 = DoubleConv(cat[h1, CBR(Up d2)]), d0 = CBR(Up d1) at S x S, logits = Conv3x3(d0 -> 1).
    ``full_res=False`` (edge): logits = Conv3x3(CBR(d1)) on the level-1 grid, bilinearly upsampled to
    S x S; the full-resolution 3x3 convs are the decoder's most expensive layers and add little to a
    map that is blurred with sigma 4 anyway.
    """

    def __init__(self, skip_channels: tuple[int, int, int], deep_channels: int, widths: tuple[int, int, int],
                 final_channels: int, sizes: tuple[int, int, int], out_size: int, full_res: bool = True):
        super().__init__()
        self.full_res = full_res
        self.sizes = tuple((s, s) for s in sizes)  # grid sides of levels 1..3 (static, for export)
        self.out_size = (out_size, out_size)
        w1, w2, w3 = widths
        k1, k2, k3 = skip_channels
        self.up3 = conv_bn_relu(deep_channels, w3)
        self.fuse3 = nn.Sequential(conv_bn_relu(k3 + w3, w3), conv_bn_relu(w3, w3))
        self.up2 = conv_bn_relu(w3, w2)
        self.fuse2 = nn.Sequential(conv_bn_relu(k2 + w2, w2), conv_bn_relu(w2, w2))
        self.up1 = conv_bn_relu(w2, w1)
        self.fuse1 = nn.Sequential(conv_bn_relu(k1 + w1, w1), conv_bn_relu(w1, w1))
        self.up0 = conv_bn_relu(w1, final_channels)
        self.logits = nn.Conv2d(final_channels, 1, 3, padding=1)

    def forward(self, h1, h2, h3, f4):
        s1, s2, s3 = self.sizes
        d = self.fuse3(torch.cat([h3, self.up3(_up(f4, s3))], dim=1))
        d = self.fuse2(torch.cat([h2, self.up2(_up(d, s2))], dim=1))
        d = self.fuse1(torch.cat([h1, self.up1(_up(d, s1))], dim=1))
        if self.full_res:
            return self.logits(self.up0(_up(d, self.out_size)))
        return F.interpolate(self.logits(self.up0(d)), size=self.out_size, mode="bilinear", align_corners=False)
