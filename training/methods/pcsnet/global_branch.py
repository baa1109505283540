"""The global branch `g` of rules v12 / v13 (docs/decision.md sections 32-35): a training-free whole-image score
beside PCSNet's map, for parts whose defects are in the composition (a label at the wrong height, a wrong fill
level) rather than in any one patch.

The frame the model sees is resampled to 256 x 256 px (area weights when shrinking, linear when growing, as
protospect.imageio.resize_image does: an average pool for a whole-number shrink, else two matrix products, so the
graph needs no resize op), the frozen
backbone's stage 3 and 4 outputs are averaged over all positions and L2-normalised, and `g` is the distance to the
nearest shot's descriptor. The image score becomes z(p) + z(g): each standardised by the mean and std of its own
scores on the calibration views (leave-one-out, jittered shots), which threshold.calibrate sets. The map is
unchanged. Everything (bank, statistics, resampling weights) is a buffer, so it lives in the artifact and the graph.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

G_SIZE = 256  # the whole part at the backbone's home resolution
G_STAGES = (3, 4)  # stride 16 / 32 on EfficientNet-Lite


def resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of a 1-D resize: pixel-area overlap when shrinking (cv2.INTER_AREA), linear with
    half-pixel centres when growing (cv2.INTER_LINEAR); the identity when the sizes are equal."""
    m = np.zeros((n_out, n_in), np.float64)
    if n_in == n_out:
        return np.eye(n_in, dtype=np.float32)
    scale = n_in / n_out
    if n_in > n_out:
        for j in range(n_out):
            lo, hi = j * scale, (j + 1) * scale
            for i in range(int(np.floor(lo)), min(int(np.ceil(hi)), n_in)):
                m[j, i] = min(hi, i + 1) - max(lo, i)
        m /= scale
    else:
        for j in range(n_out):
            src = min(max((j + 0.5) * scale - 0.5, 0.0), n_in - 1.0)
            i0 = int(np.floor(src))
            i1, f = min(i0 + 1, n_in - 1), src - i0
            m[j, i0] += 1 - f
            m[j, i1] += f
    return m.astype(np.float32)


class GlobalBranch(nn.Module):
    """Normalised frame (B, 3, H, W) -> g (B,); fuse() turns PCSNet's image score into z(p) + z(g)."""

    def __init__(self, backbone: nn.Module, hw: tuple[int, int], shots: int):
        super().__init__()
        self.backbone = backbone  # frozen (FrozenBackbone), tapped at G_STAGES, its own copy of the weights
        # area weights of a whole-number shrink are a plain average pool, and 256 px needs nothing: the matrices
        # (two MatMuls per frame) only for the other sizes
        self.pool = tuple(side // G_SIZE for side in hw) if all(side % G_SIZE == 0 for side in hw) else None
        if self.pool is None:
            self.register_buffer("rows", torch.from_numpy(resample_matrix(hw[0], G_SIZE)))
            self.register_buffer("cols", torch.from_numpy(resample_matrix(hw[1], G_SIZE)).t().contiguous())
        self.dim = sum(backbone.spec.channels)
        self._trunk: tuple[nn.Module, ...] = ()  # share_trunk(): the main backbone, held unregistered (its owner saves it)
        self.register_buffer("bank", torch.zeros(shots, self.dim))
        # mean / std of p, then of g, on the calibration views; (0, 1, 0, 1) until calibrate sets them
        self.register_buffer("stats", torch.tensor([0.0, 1.0, 0.0, 1.0]))

    def resized(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 3, 256, 256)."""
        if self.pool is None:
            return torch.matmul(self.rows, torch.matmul(x, self.cols))
        return x if self.pool == (1, 1) else F.avg_pool2d(x, self.pool)

    def share_trunk(self, main: nn.Module) -> bool:
        """Read stage 3 from the main model's backbone instead of computing it again, where that is the same
        computation: a 256 px model (the branch's frame is the model's) whose backbone is this one's network and
        normalisation tapped last at stage 3 (the edge preset: stages 2-3). Only the stage 4 blocks then run per
        frame (docs/decision.md section 36). Both copies load the same weights (the package's, or the config's
        backbone_weights); the branch's copy of stages 0-3 stays in the artifact, so artifacts read either way."""
        a, b = main.spec, self.backbone.spec
        ok = (self.pool == (1, 1) and a.name == b.name and a.mean == b.mean and a.std == b.std
              and a.stages[-1] == b.stages[0] and hasattr(self.backbone.body, "resume"))
        self._trunk = (main,) if ok else ()
        return ok

    def descriptors(self, x: torch.Tensor, trunk_feats: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(B, dim) unit-norm stage means; ``trunk_feats`` is the main backbone's output on ``x`` when the caller
        already has it (the model's forward), used only with a shared trunk."""
        if self._trunk:
            stage3 = (trunk_feats if trunk_feats is not None else self._trunk[0](x))[-1]
            feats = [stage3, *self.backbone.body.resume(stage3)]
        else:
            feats = self.backbone(self.resized(x))
        return torch.cat([F.normalize(f.mean(dim=(2, 3)), dim=1) for f in feats], 1)

    def scores(self, x: torch.Tensor, bank: torch.Tensor | None = None,
               trunk_feats: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Distance of each frame's descriptor to the nearest row of ``bank`` (default: every shot)."""
        d = self.descriptors(x, trunk_feats)
        b = self.bank if bank is None else bank
        # the difference itself, not |d|^2 - 2 d.b + |b|^2: unit vectors a few hundredths apart would lose most of
        # their float32 digits to cancellation, and the standardisation divides by a spread of that size (K <= 8 rows)
        return (d[:, None, :] - b[None]).pow(2).sum(-1).amin(dim=1).sqrt()

    def combine(self, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """z(p) + z(g) with the calibration's statistics."""
        s = self.stats
        return (p - s[0]) / s[1] + (g - s[2]) / s[3]

    def fuse(self, p: torch.Tensor, x: torch.Tensor, trunk_feats: list[torch.Tensor] | None = None) -> torch.Tensor:
        return self.combine(p, self.scores(x, trunk_feats=trunk_feats))

    @torch.no_grad()
    def set_bank(self, shot_x: torch.Tensor) -> None:
        """The K shots' descriptors become the bank (K rows, recorded in meta by the caller for build())."""
        self.bank = self.descriptors(shot_x).contiguous()

    @torch.no_grad()
    def set_statistics(self, p_normal: torch.Tensor, g_normal: torch.Tensor) -> None:
        def ms(v):
            v = v.double()
            sd = float(v.std(unbiased=False))
            return float(v.mean()), sd if sd > 1e-12 else 1.0
        self.stats = torch.tensor([*ms(p_normal), *ms(g_normal)], dtype=torch.float32, device=self.bank.device)
