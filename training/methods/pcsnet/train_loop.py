"""Fixed-length PCSNet training on K good images and their NSA pseudo anomalies.

The backbone is frozen, so the clean shots go through it once and their features are cached; each
step only the freshly synthesised pseudo anomalies need a backbone pass. A step sees
``batch_size`` clean shots (label 0) and as many NSA images (label 1): L_NFC on the clean ones,
L_AFS on the pseudo-anomalous grid cells, L_PDC ranking across the two groups, L_SEG on all.
Nothing is evaluated or selected during training: the final weights are the model (D5).
"""
from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from protospect.training.synthesis import make_pseudo_anomaly, nsa_params_for, object_mask

from .losses import PCSNetLoss, grid_cell_mask
from .model import PCSNetModel, as_queries


@dataclass
class TrainLog:
    seconds: float = 0.0  # wall clock
    cpu_seconds: float = 0.0  # process CPU time (stable on a shared machine; wall time is not)
    losses: list[dict[str, float]] = field(default_factory=list)  # one dict of terms per step
    dropped_anomalies: int = 0  # NSA draws that changed nothing (never labelled anomalous)
    # (K, M, D) features the bank was averaged from; calibration's leave-one-out needs them, then drops them
    shot_prototypes: torch.Tensor | None = field(default=None, repr=False)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_torch():
    """Deterministic kernels for the duration of training, restoring the caller's setting after."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


def to_tensor(images: list[np.ndarray], mean, std) -> torch.Tensor:
    """uint8 RGB HxWx3 list -> normalised float (B,3,H,W)."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


@torch.no_grad()
def backbone_features(model: PCSNetModel, x: torch.Tensor, chunk: int = 8) -> list[torch.Tensor]:
    bb = model.features.backbone
    x = x.to(model.bank.device)
    parts = [bb(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)]
    return [torch.cat([p[j] for p in parts]) for j in range(len(parts[0]))]


class PseudoAnomalySource:
    """Draws NSA images from the shots with one seeded Generator; object masks computed once."""

    def __init__(self, images: list[np.ndarray], category: str | None, rng: np.random.Generator):
        self.images = images
        self.params = nsa_params_for(category)
        self.objects = [object_mask(img, self.params) for img in images]
        self.rng = rng
        self.dropped = 0

    def draw(self, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        imgs, masks, failed = [], [], 0
        while len(imgs) < n:
            i = int(self.rng.integers(len(self.images)))
            out = make_pseudo_anomaly(self.images[i], self.rng, self.params, self.objects[i])
            if out is None:
                self.dropped += 1
                failed += 1  # per call: a few failures early in a run must not starve later steps
                if failed > 20 * n:
                    break  # uniform images: nothing to swap; train on what we have
                continue
            imgs.append(out[0])
            masks.append(out[1])
        return imgs, masks


def make_optimizer(model: PCSNetModel, criterion: PCSNetLoss) -> torch.optim.Optimizer:
    cfg = model.cfg
    pfa_params = list(model.features.pfa.parameters()) + list(model.features.guide.parameters()) + [criterion.r]
    return torch.optim.Adam(
        [{"params": pfa_params, "lr": cfg.lr_pfa}, {"params": model.head.parameters(), "lr": cfg.lr_cas}],
        weight_decay=cfg.weight_decay, amsgrad=True,
    )


def train(model: PCSNetModel, images: list[np.ndarray], seed: int, progress: bool = True) -> TrainLog:
    """Train ``model`` in place on the S x S uint8 shots. Deterministic on CPU for a given seed."""
    cfg = model.cfg
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    log = TrainLog()
    start, cpu_start = time.perf_counter(), time.process_time()
    mean, std = model.meta["mean"], model.meta["std"]
    with deterministic_torch():
        clean_feats = backbone_features(model, to_tensor(images, mean, std))  # once: backbone frozen
        log.shot_prototypes = model.set_bank_from_backbone(clean_feats)
        criterion = PCSNetLoss(cfg).to(model.bank.device)
        optimizer = make_optimizer(model, criterion)
        source = PseudoAnomalySource(images, cfg.category, rng)
        k_shots = len(images)
        n_clean = min(cfg.batch_size, k_shots)
        order: list[int] = []
        model.train()
        bar = tqdm(range(cfg.steps), desc="pcsnet train", unit="step", disable=not progress, leave=False)
        for _ in bar:
            if len(order) < n_clean:  # walk through shuffled shots so each is used equally often
                order += list(rng.permutation(k_shots))
            idx, order = order[:n_clean], order[n_clean:]
            terms = _step(model, criterion, optimizer, clean_feats, idx, source, cfg)
            log.losses.append({k: float(v) for k, v in terms.items()})
            bar.set_postfix(loss=f"{log.losses[-1]['total']:.3g}")
        model.eval()
    log.dropped_anomalies = source.dropped
    log.seconds = time.perf_counter() - start
    log.cpu_seconds = time.process_time() - cpu_start
    return log


def _step(model, criterion, optimizer, clean_feats, idx, source, cfg):
    h, w = cfg.hw
    anom_imgs, anom_masks = source.draw(len(idx))
    feats = [f[idx] for f in clean_feats]
    if anom_imgs:
        anom_feats = backbone_features(model, to_tensor(anom_imgs, model.meta["mean"], model.meta["std"]))
        feats = [torch.cat([a, b]) for a, b in zip(feats, anom_feats)]
    n_clean, n_anom = len(idx), len(anom_imgs)
    labels = torch.tensor([0] * n_clean + [1] * n_anom)
    masks = torch.zeros(n_clean + n_anom, 1, h, w)
    if n_anom:
        masks[n_clean:, 0] = torch.from_numpy(np.stack(anom_masks)).float()
    labels, masks = labels.to(model.bank.device), masks.to(model.bank.device)

    phi, guide = model.features.from_backbone(feats)
    sq = model.knn(as_queries(phi))
    logits = model.head.logits(sq, guide, (h, w))
    terms = criterion(sq, labels, grid_cell_mask(masks, cfg.grid_hw, cfg.afs_mask_threshold), logits, masks)
    optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    optimizer.step()
    return {k: v.detach() for k, v in terms.items()}
