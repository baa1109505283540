"""PRN from K good shots: prototypes, pseudo anomalies, a fixed-length training run, calibration.

fit(shots) reads top to bottom:
  1. seed python/numpy/torch (P9); resolve the preset + overrides;
  2. frozen backbone in eval mode (P3); the shots' own level-1..3 maps are the prototypes when
     K <= max_prototypes (P4: no KMeans on a handful of images), else KMeans centres;
  3. train the head for ``steps`` on batches of half normal shots, half anomalies: NSA self-swap on
     the shots by default, DRAEM-style texture blends with ``textures`` (P1, P10), and optional real
     defect examples given by the caller from a split disjoint from the test set (P2, P5);
  4. keep the final weights (P6: nothing is selected on test data) and calibrate on held-out shots.
"""
from __future__ import annotations

import logging
import random

import cv2
import numpy as np
import torch
from tqdm import tqdm

from protospect.errors import ConfigError, DataError
from protospect.progress import progress_enabled
from protospect.imageio import resize_mask, resize_image
from protospect.training.calibrate import to_model_input
from protospect.training.methods.base import model_meta
from protospect.training.methods.prn.calibration import calibrate_with_pseudo
from protospect.training.methods.prn.config import PRNConfig, config_from_dict, config_to_dict, resolve_config
from protospect.training.methods.prn.losses import prn_loss
from protospect.training.methods.prn.model import PRNModel, PrototypeResiduals, assemble

log = logging.getLogger(__name__)

def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def create_backbone(cfg: PRNConfig, weights):
    from protospect.training.backbones import create_backbone as _create  # noqa: PLC0415 (timm import is heavy)

    backbone = _create(cfg.backbone, stages=cfg.stages, weights=weights, input_size=cfg.input_size)
    backbone.eval()
    return backbone


def shift_image(img: np.ndarray, rng: np.random.Generator, max_shift: float, mask: np.ndarray | None = None):
    """Random translation by up to max_shift * S with reflected borders; the mask moves identically."""
    if max_shift <= 0:
        return img, mask
    h, w = img.shape[:2]
    dx, dy = rng.uniform(-max_shift, max_shift, size=2) * (w, h)
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    img = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if mask is not None:
        mask = cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101)
    return img, mask


class NSASynth:
    """NSA self-swap (training/synthesis.py) as ``synth(img, rng) -> (img, mask) | None``."""

    def __init__(self, category: str | None):
        from protospect.training import synthesis  # noqa: PLC0415

        self._synthesis = synthesis
        self.params = synthesis.nsa_params_for(category)

    def __call__(self, img, rng):
        obj = self._synthesis.object_mask(img, self.params)
        return self._synthesis.make_pseudo_anomaly(img, rng, self.params, obj)


class TrainingSamples:
    """Draws training batches: (uint8 images, float masks, excluded prototype index per sample)."""

    def __init__(self, shots: list[np.ndarray], cfg: PRNConfig, synth, real: list[tuple[np.ndarray, np.ndarray]],
                 rng: np.random.Generator, leave_one_out: bool):
        self.shots, self.cfg, self.synth, self.real, self.rng = shots, cfg, synth, real, rng
        self.leave_one_out = leave_one_out

    def _normal(self):
        i = int(self.rng.integers(len(self.shots)))
        img, _ = shift_image(self.shots[i], self.rng, self.cfg.shift)
        return img, np.zeros(img.shape[:2], np.float32), i

    def _anomalous(self):
        if self.real and self.rng.random() < self.cfg.real_fraction:
            img, mask = self.real[int(self.rng.integers(len(self.real)))]
            img, mask = shift_image(img, self.rng, self.cfg.shift, mask)
            return img, mask.astype(np.float32), -1
        for _ in range(4):  # NSA can fail on a given draw (object too small): try another shot
            img, _, i = self._normal()
            made = self.synth(img, self.rng)
            if made is not None:
                return made[0], made[1].astype(np.float32), i
        return self._normal()  # honest label: unchanged image, all-zero mask

    def batch(self, size: int):
        n_normal = size // 2
        items = [self._normal() for _ in range(n_normal)] + [self._anomalous() for _ in range(size - n_normal)]
        images, masks, own = zip(*items)
        exclude = torch.tensor(own if self.leave_one_out else [-1] * size, dtype=torch.long)
        return list(images), torch.from_numpy(np.stack(masks)).unsqueeze(1), exclude


def make_synth(cfg: PRNConfig):
    if cfg.textures:
        from protospect.training.textures import DraemSynthesizer  # noqa: PLC0415

        return DraemSynthesizer(cfg.textures), "draem-textures"
    return NSASynth(cfg.category), "nsa-self-swap"


def prototype_maps(feats: list[torch.Tensor], n_max: int, seed: int) -> tuple[list[torch.Tensor], str]:
    """Level-1..3 maps of the K shots -> prototypes: the maps themselves for K <= n_max, else KMeans centres."""
    k = feats[0].shape[0]
    if k <= n_max:
        return [f.clone() for f in feats[:3]], "shots"
    from sklearn.cluster import KMeans  # noqa: PLC0415

    centres = []
    for f in feats[:3]:
        km = KMeans(n_clusters=n_max, random_state=seed, n_init=4).fit(f.flatten(1).numpy())
        centres.append(torch.from_numpy(km.cluster_centers_).float().reshape(n_max, *f.shape[1:]))
    return centres, "kmeans"


def _real_examples(examples, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for i, item in enumerate(examples or []):
        try:
            img, mask = item
        except (TypeError, ValueError) as err:
            raise ConfigError(f"prn: defects[{i}] must be an (rgb, mask) pair") from err
        if mask.shape[:2] != img.shape[:2]:
            raise DataError(f"prn: defect example {i}: mask {mask.shape[:2]} and image {img.shape[:2]} differ in size")
        out.append((resize_image(img, size), (resize_mask((mask > 0).astype(np.uint8), size))))
    return out


def _meta(cfg: PRNConfig, preset: str, backbone, n_prototypes: int) -> dict:
    return model_meta("prn", preset, cfg.backbone, cfg.input_size, backbone.spec, config_to_dict(cfg),
                      n_prototypes=int(n_prototypes))


def fit(shots_rgb: list[np.ndarray], preset: str = "edge", seed: int = 0, config_overrides: dict | None = None, *,
        defects: list | None = None, defect_names: list[str] | None = None) -> PRNModel:
    """``defects``: real defective examples as (rgb, mask) pairs, ``defect_names`` one name each (data: an
    argument of its own, never a config override; they never enter the manifest config)."""
    if not shots_rgb:
        raise ConfigError("prn needs at least one good image")
    rng = seed_everything(seed)
    cfg = resolve_config(preset, config_overrides)
    backbone = create_backbone(cfg, cfg.backbone_weights)
    mean, std, size = backbone.spec.mean, backbone.spec.std, cfg.input_size

    shots = [resize_image(s, size) for s in shots_rgb]
    with torch.no_grad():
        shot_feats = backbone(to_model_input(shots, size, mean, std))
    protos, proto_source = prototype_maps(shot_feats, cfg.max_prototypes, seed)
    model = assemble(cfg, backbone, protos[0].shape[0], _meta(cfg, preset, backbone, protos[0].shape[0]))
    model.residuals.set_prototypes(protos)

    real = _real_examples(defects, size)
    names = list(defect_names or [f"example_{i}" for i in range(len(real))])
    synth, synth_name = make_synth(cfg)
    # A shot never meets its own map in training (zero residual everywhere is not what a test image
    # gives); with one shot there is nothing else to compare with, the random shift does that job.
    leave_one_out = proto_source == "shots" and len(shots) >= 2
    samples = TrainingSamples(shots, cfg, synth, real, rng, leave_one_out)
    losses = train_head(model, samples, cfg)

    model.eval()
    model.meta.update({
        "prototypes": proto_source, "pseudo_anomalies": synth_name, "leave_one_out": leave_one_out,
        "real_anomalies": names, "train_loss": [losses[0], losses[-1]] if losses else [],
    })
    if names:
        log.info("prn: %d real defect examples used in training: %s", len(names), ", ".join(map(str, names)))
    model.calibration = calibrate(model, shots, cfg, seed)
    return model


def train_head(model: PRNModel, samples: TrainingSamples, cfg: PRNConfig) -> list[float]:
    """Fixed number of Adam steps on the head; returns the loss of every step."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    spec = model.backbone.spec
    losses = []
    model.train()  # the FrozenBackbone stays in eval mode (P3); only the head's BatchNorms train
    for _ in tqdm(range(cfg.steps), desc="prn train", leave=False, disable=cfg.steps < 10 or not progress_enabled()):
        images, masks, exclude = samples.batch(cfg.batch_size)
        logits = model.logits(to_model_input(images, cfg.input_size, spec.mean, spec.std), exclude)
        loss = prn_loss(logits, masks, cfg.focal_weight, cfg.focal_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


@torch.no_grad()
def calibrate(model: PRNModel, shots: list[np.ndarray], cfg: PRNConfig, seed: int) -> dict:
    """Threshold from held-out shots and their pseudo anomalies, scored against prototypes built without them."""
    spec = model.backbone.spec

    def feats_of(images):
        return model.backbone(to_model_input(images, cfg.input_size, spec.mean, spec.std))

    def score_against(bank_images, queries):
        bank, q = feats_of(bank_images), feats_of(queries)
        res = [(f - PrototypeResiduals.nearest(f, b)) ** 2 for f, b in zip(q[:3], bank[:3])]
        out = model.outputs_from_logits(model.head(q, res))
        return out.image_score.numpy(), out.anomaly_map[:, 0].numpy()

    return calibrate_with_pseudo(
        shots, score_against, NSASynth(cfg.category), seed, cfg.calibration_views, margin=cfg.calibration_margin
    )


def build(meta: dict) -> PRNModel:
    """An empty model of the shape ``meta`` describes, for load_artifact to fill with load_state_dict."""
    cfg = config_from_dict({**meta["config"], "backbone_weights": None})
    backbone = create_backbone(cfg, "random")  # the weights come from the artifact's state_dict
    return assemble(cfg, backbone, int(meta["n_prototypes"]), dict(meta))
