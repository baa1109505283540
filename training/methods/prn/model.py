"""The deployable PRN model (docs/contracts.md section 4) and the prototype residual step.

forward(x): f1..f4 = E(x) (frozen, eval) -> per level l = 1..3 the nearest prototype map p_l by
whole-map L2, residual r_l = (f_l - p_l)^2 -> MSF1 on (f) and on (r), shared weights -> concat ->
MSA blocks per level -> MSF2 -> decoder with the f4 skip -> sigmoid -> Gaussian blur -> max.
"""
from __future__ import annotations

import torch
from torch import nn

from protospect.training.layers import GaussianBlur
from protospect.training.methods.base import ModelOutputs
from protospect.training.methods.prn.config import PRNConfig
from protospect.training.methods.prn.modules import Decoder, MultiScaleFusion, MultiSizeAttention


class PrototypeResiduals(nn.Module):
    """Per level: the nearest prototype map (squared L2 over the whole C x H x W map) and (f - p)^2.

    The prototypes are buffers, so they travel in the state_dict. ``exclude`` (B,) names, per sample,
    a prototype that may not be chosen (-1: none): training uses it so that a shot is never compared
    with its own map, which would give an all-zero residual that no test image ever produces.
    """

    def __init__(self, prototype_shapes: list[tuple[int, ...]]):
        super().__init__()
        self.levels = len(prototype_shapes)
        for i, shape in enumerate(prototype_shapes):
            self.register_buffer(f"prototypes{i + 1}", torch.zeros(shape))

    def bank(self, level: int) -> torch.Tensor:
        return getattr(self, f"prototypes{level + 1}")

    def set_prototypes(self, maps: list[torch.Tensor]) -> None:
        for i, m in enumerate(maps):
            self.bank(i).resize_(m.shape).copy_(m)

    @staticmethod
    def nearest(f: torch.Tensor, bank: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) maps and (P, C, H, W) prototypes -> (B, C, H, W) nearest prototype per sample."""
        # Difference form, not the GEMM expansion: P <= 8 here, and it cannot cancel in fp16.
        d = ((f.unsqueeze(1) - bank.unsqueeze(0)) ** 2).flatten(2).sum(-1)  # (B, P)
        if exclude is not None:
            own = exclude.unsqueeze(1) == torch.arange(bank.shape[0], device=f.device).unsqueeze(0)
            d = d.masked_fill(own, float("inf"))
        return bank.index_select(0, d.argmin(dim=1))

    def forward(self, feats: list[torch.Tensor], exclude: torch.Tensor | None = None) -> list[torch.Tensor]:
        return [(f - self.nearest(f, self.bank(i), exclude)) ** 2 for i, f in enumerate(feats[: self.levels])]


class PRNHead(nn.Module):
    """Everything after the backbone and the residuals: MSF1 (shared), MSA, MSF2, decoder -> logits."""

    def __init__(self, channels: tuple[int, ...], sizes: tuple[int, int, int], cfg: PRNConfig):
        super().__init__()
        c1, c2, c3, c4 = channels
        self.msf1 = MultiScaleFusion((c1, c2, c3))
        cat = (2 * c1, 2 * c2, 2 * c3)
        self.msa = nn.ModuleList(
            nn.Sequential(*[MultiSizeAttention(c, s, cfg.msa_divisors, cfg.msa_kernel) for _ in range(cfg.msa_blocks)])
            for c, s in zip(cat, sizes)
        )
        self.msf2 = MultiScaleFusion(cat)
        widths = tuple(cfg.decoder_channels or (c1, c2, c3))
        self.decoder = Decoder(cat, c4, widths, cfg.final_channels, sizes, cfg.input_size, cfg.decoder_full_res)

    def forward(self, feats: list[torch.Tensor], residuals: list[torch.Tensor]) -> torch.Tensor:
        g = self.msf1(*feats[:3])
        q = self.msf1(*residuals)  # same weights on features and residuals (PRNet prnet.py L96-97)
        a = [block(torch.cat([gl, ql], dim=1)) for block, gl, ql in zip(self.msa, g, q)]
        h = self.msf2(*a)
        return self.decoder(*h, feats[3])


class PRNModel(nn.Module):
    """AnomalyModel: normalised (B,3,S,S) -> ModelOutputs(sigmoid map blurred with sigma 4, its max)."""

    def __init__(self, backbone: nn.Module, residuals: PrototypeResiduals, head: PRNHead, blur_sigma: float, meta: dict):
        super().__init__()
        self.backbone = backbone
        self.residuals = residuals
        self.head = head
        self.blur = GaussianBlur(blur_sigma)
        self.meta = meta
        self.calibration: dict = {}
        self.eval()

    def logits(self, x: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """(B,1,S,S) raw logits; ``exclude`` as in PrototypeResiduals (training only)."""
        with torch.no_grad():  # frozen backbone: no activations kept for backward
            feats = self.backbone(x)
        return self.head(feats, self.residuals(feats, exclude))

    def outputs_from_logits(self, logits: torch.Tensor) -> ModelOutputs:
        m = self.blur(torch.sigmoid(logits))
        return ModelOutputs(anomaly_map=m, image_score=m.amax(dim=(1, 2, 3)))

    def forward(self, x: torch.Tensor) -> ModelOutputs:
        return self.outputs_from_logits(self.logits(x))


def grid_sizes(backbone: nn.Module, input_size: int) -> tuple[int, ...]:
    return tuple(input_size // r for r in backbone.spec.reductions)


def assemble(cfg: PRNConfig, backbone: nn.Module, n_prototypes: int, meta: dict) -> PRNModel:
    """A PRN model with zeroed prototypes of the right shape (filled by fit or load_state_dict)."""
    from protospect.errors import ConfigError  # noqa: PLC0415

    spec = backbone.spec
    r = spec.reductions
    if not (r[1] == 2 * r[0] and r[2] == 4 * r[0] and r[3] == 8 * r[0]):
        raise ConfigError(f"prn: backbone {spec.name} stages {spec.stages} have strides {r}; "
                          "PRN needs four consecutive stages (strides r, 2r, 4r, 8r), e.g. stages 1,2,3,4")
    sizes = grid_sizes(backbone, cfg.input_size)
    shapes = [(n_prototypes, c, s, s) for c, s in zip(spec.channels[:3], sizes[:3])]
    head = PRNHead(spec.channels, sizes[:3], cfg)
    return PRNModel(backbone, PrototypeResiduals(shapes), head, cfg.blur_sigma, meta)
