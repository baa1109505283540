"""BPGG-style fit (labelled reconstruction after PANet; algorithms.md 3.3).

Inputs: the K good shots (inserted as normal supports, all-zero defect mask) and a few *defective*
supports with masks (``fit(..., defects=[(rgb, mask), ...], defect_names=[...])``: data, an argument of its
own, never a config override). Without them,
NSA pseudo anomalies on the shots stand in, which is NOT BPGG's setting (recorded in meta).

Training, episodic, all images fixed so the frozen backbone runs once per image:
  query = one defective support or one shot, left out of the episode's supports when another exists;
  forward: prototypes by masked average pooling over the supports -> 20 * cos -> CE(query mask);
  reverse (PANet's alignment): prototypes from the query's *predicted* mask segment every support
  -> CE(support masks); skipped when the prediction has no defect pixel. Loss = CE_q + w * CE_align.
Afterwards the deployed prototypes are pooled over every support, and the threshold is calibrated
on held-out shots (training/calibrate.py).
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from protospect.errors import ConfigError, DataError
from protospect.progress import progress_enabled
from protospect.imageio import resize_mask, resize_image
from protospect.training.calibrate import to_model_input
from protospect.training.methods.base import model_meta
from protospect.training.methods.prn.calibration import calibrate_with_pseudo
from protospect.training.methods.bpgg.config import BPGGConfig, config_from_dict, config_to_dict, resolve_config
from protospect.training.methods.bpgg.model import DEFECT, BPGGModel, assemble, cosine_logits, prototypes
from protospect.training.methods.prn.fit import NSASynth, create_backbone, seed_everything

log = logging.getLogger(__name__)

class SupportSet:
    """Every fixed training image once: raw backbone features (N, C, h, w), masks at S and on the grid.

    Rows 0..n_defect-1 are the defective supports, the rest are the normal shots.
    """

    def __init__(self, model: BPGGModel, images: list[np.ndarray], masks: list[np.ndarray], n_defect: int, cfg: BPGGConfig):
        spec = model.features.backbone.spec
        self.n_defect = n_defect
        self.n = len(images)
        self.raw = model.features.raw(to_model_input(images, cfg.input_size, spec.mean, spec.std))
        self.masks = torch.from_numpy(np.stack(masks).astype(np.float32)).unsqueeze(1)  # (N, 1, S, S)
        self.grid_masks = F.interpolate(self.masks, size=model.features.grid, mode="area")  # soft weights

    def episode(self, rng: np.random.Generator) -> tuple[int, list[int]]:
        """(query row, support rows): half the queries defective, half normal; the query is left out
        of the supports whenever its group has another member."""
        defect_rows = list(range(self.n_defect))
        normal_rows = list(range(self.n_defect, self.n))
        group = defect_rows if rng.random() < 0.5 else normal_rows
        query = group[int(rng.integers(len(group)))]
        support = [r for r in defect_rows + normal_rows if r != query or len(group) == 1]
        return query, support


def episode_loss(emb: torch.Tensor, data: SupportSet, query: int, support: list[int], cfg: BPGGConfig,
                 size: tuple[int, int]) -> tuple[torch.Tensor, bool]:
    """CE on the query + align_weight * CE of the reverse branch; returns (loss, reverse branch ran)."""
    sup = torch.tensor(support)
    protos = prototypes(emb[sup], data.grid_masks[sup])
    q_logits = cosine_logits(emb[query:query + 1], protos, cfg.cos_scale)  # (1, 2, h, w)
    target = data.masks[query:query + 1, 0].long()
    loss = F.cross_entropy(F.interpolate(q_logits, size=size, mode="bilinear", align_corners=False), target)
    pred = q_logits.argmax(dim=1, keepdim=True)  # (1, 1, h, w), not differentiable (as in PANet)
    if cfg.align_weight <= 0 or not (pred == DEFECT).any():
        return loss, False
    q_protos = prototypes(emb[query:query + 1], (pred == DEFECT).float())
    s_logits = cosine_logits(emb[sup], q_protos, cfg.cos_scale)
    s_logits = F.interpolate(s_logits, size=size, mode="bilinear", align_corners=False)
    align = F.cross_entropy(s_logits, data.masks[sup, 0].long())
    return loss + cfg.align_weight * align, True


def train_adapter(model: BPGGModel, data: SupportSet, cfg: BPGGConfig, rng: np.random.Generator) -> list[float]:
    params = [p for p in model.features.adapter.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    size = (cfg.input_size, cfg.input_size)
    losses = []
    model.train()  # the FrozenBackbone stays in eval mode
    for _ in tqdm(range(cfg.steps), desc="bpgg train", leave=False, disable=cfg.steps < 10 or not progress_enabled()):
        emb = model.features.adapter(data.raw)
        total = 0.0
        for _ in range(cfg.episodes_per_step):
            query, support = data.episode(rng)
            loss, _ = episode_loss(emb, data, query, support, cfg, size)
            total = total + loss
        total = total / cfg.episodes_per_step
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    model.eval()
    return losses


def _defect_supports(given, names, shots: list[np.ndarray], cfg: BPGGConfig, rng) -> tuple[list, list, str]:
    """Resized (image, mask) defective supports, their names, and where they came from."""
    size = cfg.input_size
    if given:
        out = []
        for i, item in enumerate(given):
            try:
                img, mask = item
            except (TypeError, ValueError) as err:
                raise ConfigError(f"bpgg: defects[{i}] must be an (rgb, mask) pair") from err
            if mask.shape[:2] != img.shape[:2]:
                raise DataError(f"bpgg: defect support {i}: mask {mask.shape[:2]} and image {img.shape[:2]} differ in size")
            m = resize_mask((mask > 0).astype(np.uint8), size)
            if not m.any():
                raise DataError(f"bpgg: defect support {i} has an empty mask at {size}x{size}; a defective support needs defect pixels")
            out.append((resize_image(img, size), m))
        return out, list(names or [f"support_{i}" for i in range(len(out))]), "given"
    synth, out, names = NSASynth(cfg.category), [], []
    for i in range(cfg.pseudo_supports * 4):  # a few spare attempts: NSA may fail on a draw
        if len(out) == cfg.pseudo_supports:
            break
        made = synth(shots[i % len(shots)], rng)
        if made is not None:
            out.append((made[0], made[1].astype(np.uint8)))
            names.append(f"nsa-pseudo-of-shot-{i % len(shots)}")
    if not out:
        raise DataError("bpgg: no defective support given and NSA could not make a pseudo anomaly from the shots")
    log.warning("bpgg: no defective support images given; using %d NSA pseudo anomalies of the shots "
                "(this is not BPGG's setting, which needs real annotated defects)", len(out))
    return out, names, "nsa-pseudo (not BPGG's setting)"


def _support_from_folder(cfg: BPGGConfig, seed: int):
    """(supports, names) drawn from cfg.support_data's masked defective test images (seeded, logged)."""
    from protospect.training.data import MVTecCategory  # noqa: PLC0415
    from protospect.training.methods.bpgg.support import item_name, load_defect_support, split_defect_support  # noqa: PLC0415

    support, _ = split_defect_support(MVTecCategory(cfg.support_data), cfg.support_size, seed)
    return load_defect_support(support), [item_name(it) for it in support]


def _meta(cfg: BPGGConfig, preset: str, backbone) -> dict:
    return model_meta("bpgg", preset, cfg.backbone, cfg.input_size, backbone.spec, config_to_dict(cfg),
                      reconstruction="PANet-style (algorithms.md 3.3); BPGG's own code and details are unpublished")


def fit(shots_rgb: list[np.ndarray], preset: str = "edge", seed: int = 0, config_overrides: dict | None = None, *,
        defects: list | None = None, defect_names: list[str] | None = None) -> BPGGModel:
    """``defects``: the defective supports as (rgb, mask) pairs (prepare_eval draws them from the evaluated
    category; else ``support_data``'s folder, else NSA pseudo anomalies), ``defect_names`` one name each."""
    if not shots_rgb:
        raise ConfigError("bpgg needs at least one good image")
    rng = seed_everything(seed)
    cfg = resolve_config(preset, config_overrides)
    backbone = create_backbone(cfg, cfg.backbone_weights)
    model = assemble(cfg, backbone, _meta(cfg, preset, backbone))

    shots = [resize_image(s, cfg.input_size) for s in shots_rgb]
    if not defects and cfg.support_data:
        defects, defect_names = _support_from_folder(cfg, seed)
    defects, names, source = _defect_supports(defects, defect_names, shots, cfg, rng)
    zero = np.zeros((cfg.input_size, cfg.input_size), np.uint8)
    data = SupportSet(model, [d[0] for d in defects] + shots, [d[1] for d in defects] + [zero] * len(shots),
                      len(defects), cfg)
    losses = train_adapter(model, data, cfg, rng)

    with torch.no_grad():
        model.prototypes.copy_(prototypes(model.features.adapter(data.raw), data.grid_masks))
    model.meta.update({"support": names, "support_source": source, "n_normal_support": len(shots),
                       "train_loss": [losses[0], losses[-1]] if losses else []})
    log.info("bpgg: defective support (%s): %s", source, ", ".join(names))
    model.calibration = calibrate(model, data, shots, cfg, seed)
    return model


@torch.no_grad()
def calibrate(model: BPGGModel, data: SupportSet, shots: list[np.ndarray], cfg: BPGGConfig, seed: int) -> dict:
    """Held-out shots (jittered) and their NSA pseudo anomalies, scored with prototypes from the
    defective supports plus the *other* shots (prn/calibration.py)."""
    spec = model.features.backbone.spec
    d_emb = model.features.adapter(data.raw[: data.n_defect])
    d_masks = data.grid_masks[: data.n_defect]

    def score_against(bank_images, queries):
        n_emb = model.features(to_model_input(bank_images, cfg.input_size, spec.mean, spec.std))
        protos = prototypes(torch.cat([d_emb, n_emb]), torch.cat([d_masks, torch.zeros(len(n_emb), *d_masks.shape[1:])]))
        out = model.outputs(model.features(to_model_input(queries, cfg.input_size, spec.mean, spec.std)), protos)
        return out.image_score.numpy(), out.anomaly_map[:, 0].numpy()

    return calibrate_with_pseudo(
        shots, score_against, NSASynth(cfg.category), seed, cfg.calibration_views, margin=cfg.calibration_margin
    )


def build(meta: dict) -> BPGGModel:
    """An empty model of the shape ``meta`` describes, for load_artifact to fill with load_state_dict."""
    cfg = config_from_dict({**meta["config"], "backbone_weights": None})
    return assemble(cfg, create_backbone(cfg, "random"), dict(meta))
