"""PRN (training/methods/prn): shapes, learning, frozen backbone, prototypes, export parity, round trip.

Everything runs at 64 x 64 with a randomly initialised EfficientNet-Lite0 so that the file takes well under a
minute on 2 CPU cores; the accuracy of the real presets is measured by the lead's acceptance runs.
"""
from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from protospect.errors import ConfigError
from protospect.training.methods import get_method
from protospect.training.methods.prn import PRESETS, build, fit, resolve_config
from protospect.training.methods.prn.fit import TrainingSamples, create_backbone, prototype_maps, train_head
from protospect.training.methods.prn.losses import focal_loss, prn_loss
from protospect.training.methods.prn.model import PrototypeResiduals, assemble
from protospect.training.methods.prn.modules import ElementwiseAffine, PatchAttention, patch_sizes

pytestmark = pytest.mark.torch
torch.set_num_threads(2)

TINY = {"backbone": "efficientnet_lite0", "backbone_weights": "random", "input_size": 64, "steps": 4, "batch_size": 4,
        "msa_divisors": [1, 2], "decoder_channels": [8, 8, 16], "final_channels": 8, "calibration_views": 2}


def part_image(rng: np.random.Generator, size: int = 72) -> np.ndarray:
    """A generated 'part': grey plate, a bright disc with a dark slot, sensor noise."""
    img = np.full((size, size, 3), 90, np.uint8)
    c = size // 2 + int(rng.integers(-2, 3))
    cv2.circle(img, (c, c), size // 3, (200, 190, 170), -1)
    cv2.rectangle(img, (c - 3, c - size // 4), (c + 3, c + size // 4), (40, 40, 50), -1)
    noise = rng.normal(0, 4, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def shots():
    rng = np.random.default_rng(0)
    return [part_image(rng) for _ in range(3)]


@pytest.fixture(scope="module")
def fitted(shots):
    return fit(shots, preset="edge", seed=0, config_overrides=TINY)


def test_registry_and_presets():
    assert get_method("prn").fit is fit
    assert set(PRESETS) == {"edge", "paper"}
    with pytest.raises(ConfigError, match="unknown config key"):
        resolve_config("edge", {"no_such_setting": 1})
    with pytest.raises(ConfigError, match="multiple of 32"):
        resolve_config("edge", {"input_size": 100})
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_config("huge")


def test_fit_outputs_contract(fitted):
    out = fitted(torch.randn(2, 3, 64, 64))
    assert out.anomaly_map.shape == (2, 1, 64, 64) and out.anomaly_map.dtype == torch.float32
    assert out.image_score.shape == (2,)
    assert torch.allclose(out.image_score, out.anomaly_map.amax(dim=(1, 2, 3)))
    assert ((out.anomaly_map >= 0) & (out.anomaly_map <= 1)).all()  # blurred sigmoid
    meta = fitted.meta
    assert meta["method"] == "prn" and meta["input_size"] == 64 and meta["n_prototypes"] == 3
    assert meta["prototypes"] == "shots" and meta["leave_one_out"] is True
    assert meta["pseudo_anomalies"] == "nsa-self-swap"
    cal = fitted.calibration
    assert cal["threshold"] > 0 and len(cal["normal_scores"]) == 3  # leave-one-out over 3 shots
    assert not fitted.training


def test_paper_preset_shapes_at_tiny_size():
    """PRNet's architecture (3 MSA blocks of 4 sizes, full-width decoder at S), shapes only."""
    cfg = resolve_config("paper", {"input_size": 64, "backbone_weights": "random"})
    assert cfg.msa_blocks == 3 and cfg.backbone == "resnet18" and cfg.decoder_full_res
    model = assemble(cfg, create_backbone(cfg, "random"), 2, {})
    assert len(model.head.msa[0]) == 3
    assert [len(b.branches) for b in model.head.msa[0]] == [4, 4, 4]  # 16x16 grid: patches 16, 8, 4, 2
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.anomaly_map.shape == (1, 1, 64, 64) and out.image_score.shape == (1,)


def test_elementwise_affine_equals_grouped_conv1d():
    """The exportable multiply-add is PRNet's Conv1d(kernel 1, groups = channels), exactly."""
    dim, tokens = 12, 5
    conv = nn.Conv1d(dim, dim, kernel_size=1, groups=dim)
    ours = ElementwiseAffine((dim,))
    with torch.no_grad():
        ours.weight.copy_(conv.weight.view(dim))
        ours.bias.copy_(conv.bias)
    x = torch.randn(2, tokens, dim)  # (B, L, C*s*s)
    expected = conv(x.transpose(1, 2)).transpose(1, 2)
    assert torch.allclose(ours(x), expected, atol=1e-6)


def test_patch_attention_tokens_round_trip_and_single_token_branch():
    att = PatchAttention(channels=3, size=8, patch=4)
    x = torch.randn(2, 3, 8, 8)
    tokens = att._tokens(x)
    assert tokens.shape == (2, 4, 3 * 16)
    assert torch.equal(att._image(tokens), x)
    # token 1 is the top-right 4x4 patch of every channel
    assert torch.equal(tokens[0, 1].view(3, 4, 4), x[0, :, :4, 4:])
    whole = PatchAttention(channels=3, size=8, patch=8)
    with torch.no_grad():
        assert torch.allclose(whole(x), whole._image(whole.v(whole._tokens(x))))
    assert patch_sizes(16, (1, 2, 4, 8)) == [16, 8, 4, 2]
    assert patch_sizes(4, (1, 2, 4, 8)) == [4, 2, 1]


def test_nearest_prototype_and_leave_one_out():
    bank = torch.stack([torch.zeros(2, 3, 3), torch.ones(2, 3, 3), 3 * torch.ones(2, 3, 3)])
    f = torch.stack([0.9 * torch.ones(2, 3, 3), 0.1 * torch.ones(2, 3, 3)])
    assert torch.equal(PrototypeResiduals.nearest(f, bank), bank[[1, 0]])
    # excluding each sample's own nearest prototype picks the next nearest
    assert torch.equal(PrototypeResiduals.nearest(f, bank, torch.tensor([1, 0])), bank[[0, 1]])
    assert torch.equal(PrototypeResiduals.nearest(f, bank, torch.tensor([-1, -1])), bank[[1, 0]])


def test_prototypes_are_the_shots_for_small_k_and_kmeans_above():
    feats = [torch.randn(5, 2, 4, 4), torch.randn(5, 3, 2, 2), torch.randn(5, 4, 1, 1), torch.randn(5, 8, 1, 1)]
    protos, source = prototype_maps(feats, n_max=8, seed=0)
    assert source == "shots" and all(torch.equal(p, f) for p, f in zip(protos, feats[:3]))
    protos, source = prototype_maps(feats, n_max=2, seed=0)
    assert source == "kmeans" and [tuple(p.shape) for p in protos] == [(2, 2, 4, 4), (2, 3, 2, 2), (2, 4, 1, 1)]


def test_losses():
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :2] = 1
    good = torch.where(mask > 0, torch.tensor(8.0), torch.tensor(-8.0))
    assert prn_loss(good, mask) < 1e-3 < prn_loss(-good, mask)
    # focal: a confident right answer costs ~nothing, gamma = 0 is plain (halved) cross-entropy
    p = torch.tensor([0.7])
    assert torch.allclose(focal_loss(p, torch.ones(1), gamma=0.0, smooth=0.0), -0.5 * torch.log(p))


class FixedBatch:
    """Always the same batch: a learning model must drive the loss on it down."""

    def __init__(self, samples: TrainingSamples, size: int):
        self.items = samples.batch(size)

    def batch(self, size):
        return self.items


def _tiny_model(shots, **overrides):
    cfg = resolve_config("edge", {**TINY, **overrides})
    torch.manual_seed(0)
    backbone = create_backbone(cfg, "random")
    model = assemble(cfg, backbone, len(shots), {})
    from protospect.training.calibrate import to_model_input

    with torch.no_grad():
        feats = backbone(to_model_input(shots, 64, backbone.spec.mean, backbone.spec.std))
    model.residuals.set_prototypes([f for f in feats[:3]])
    return cfg, model


@pytest.mark.slow
def test_loss_decreases_and_backbone_stays_frozen_in_eval(shots):
    from protospect.training.methods.prn.fit import NSASynth
    from protospect.imageio import resize_image

    cfg, model = _tiny_model(shots, steps=12, lr=3e-3)
    small = [resize_image(s, 64) for s in shots]
    samples = TrainingSamples(small, cfg, NSASynth(None), [], np.random.default_rng(0), leave_one_out=True)
    fixed = FixedBatch(samples, 4)
    assert fixed.items[1][2:].sum() > 0  # the anomalous half really has anomalies
    before = copy.deepcopy(model.backbone.state_dict())
    modes = []
    model.backbone.register_forward_hook(lambda m, i, o: modes.append(m.training))
    bn_modes = []
    for mod in model.backbone.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.register_forward_hook(lambda m, i, o: bn_modes.append(m.training))
    losses = train_head(model, fixed, cfg)
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    assert modes and not any(modes) and bn_modes and not any(bn_modes)  # P3: eval during training
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats and weights untouched
    assert all(not p.requires_grad for p in model.backbone.parameters())


def test_training_samples_leave_one_out_and_real_examples(shots):
    from protospect.imageio import resize_image

    cfg = resolve_config("edge", TINY)
    small = [resize_image(s, 64) for s in shots]
    real_mask = np.zeros((64, 64), np.uint8)
    real_mask[10:20, 10:20] = 1
    real = [(small[0], real_mask)]
    samples = TrainingSamples(small, cfg, lambda img, rng: None, real, np.random.default_rng(1), leave_one_out=True)
    images, masks, exclude = samples.batch(8)
    assert len(images) == 8 and masks.shape == (8, 1, 64, 64)
    assert (exclude[:4] >= 0).all()  # normal shots never meet their own prototype
    # failed synthesis never produces a labelled anomaly: anomalous slots are either real (mask, no
    # exclusion) or unchanged shots with an all-zero mask
    for m, e in zip(masks[4:], exclude[4:]):
        assert (m.sum() > 0) == (e.item() == -1)


def test_real_defect_examples_are_logged_by_name(shots):
    mask = np.zeros((72, 72), np.uint8)
    mask[20:30, 20:30] = 255
    model = fit(shots, "edge", 0, {**TINY, "steps": 1}, defects=[(shots[0], mask)], defect_names=["broken_large/003.png"])
    assert model.meta["real_anomalies"] == ["broken_large/003.png"]
    assert "defects" not in model.meta["config"]
    with pytest.raises(ConfigError, match="unknown config key"):  # images are fit's argument, not a setting
        fit(shots, "edge", 0, {**TINY, "steps": 1, "defect_examples": [(shots[0], mask)]})


def test_texture_pseudo_anomalies(shots, tmp_path):
    tex = np.zeros((40, 40, 3), np.uint8)
    tex[::4] = (0, 0, 255)
    cv2.imwrite(str(tmp_path / "stripes.png"), tex)
    model = fit(shots[:1], "edge", 0, {**TINY, "steps": 1, "textures": str(tmp_path)})
    assert model.meta["pseudo_anomalies"] == "draem-textures"
    assert model.meta["leave_one_out"] is False  # K = 1: nothing else to compare with
    assert len(model.calibration["normal_scores"]) == 2  # augmented views of the single shot


def test_same_seed_same_model(shots):
    a = fit(shots[:2], "edge", 3, {**TINY, "steps": 2})
    b = fit(shots[:2], "edge", 3, {**TINY, "steps": 2})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(a(x).anomaly_map, b(x).anomaly_map)
    assert a.calibration["threshold"] == b.calibration["threshold"]


def test_build_and_state_dict_round_trip(fitted, tmp_path):
    torch.save(fitted.state_dict(), tmp_path / "weights.pt")
    rebuilt = build(copy.deepcopy(fitted.meta))
    rebuilt.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True), strict=True)
    rebuilt.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = fitted(x), rebuilt(x)
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.image_score, b.image_score)


def test_artifact_round_trip(fitted, tmp_path):
    """save_artifact -> load_artifact (JSON manifest, hashes, build(meta), strict state_dict)."""
    from protospect.training.artifact import load_artifact, save_artifact

    save_artifact(fitted, tmp_path / "art", shots=["a.png", "b.png", "c.png"], seed=0, data={"root": "gen", "category": "part"})
    loaded, manifest = load_artifact(tmp_path / "art")
    assert manifest["method"] == "prn" and loaded.meta == fitted.meta
    assert loaded.calibration["threshold"] == fitted.calibration["threshold"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = fitted(x), loaded(x)
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.image_score, b.image_score)


def test_onnx_parity(fitted, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from protospect.export.onnx_export import onnx_from_model

    path = onnx_from_model(fitted, fitted.meta, fitted.calibration, tmp_path / "prn.onnx").path
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got_map, got_score = sess.run(["anomaly_map", "image_score"], {"image": frame})
    x = torch.from_numpy(frame).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(fitted.meta["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(fitted.meta["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = fitted((x - mean) / std)
    assert got_map.shape == (1, 1, 64, 64) and got_score.shape == (1,)
    np.testing.assert_allclose(got_map, ref.anomaly_map.numpy(), atol=1e-4)
    np.testing.assert_allclose(got_score, ref.image_score.numpy(), atol=1e-4)


def test_threshold_rule_from_normals_and_pseudo_anomalies():
    from protospect.training.methods.prn.calibration import calibrate_with_pseudo, choose_threshold

    # separated: halfway between the top normal (0.2) and the anomalies' lower quartile (0.6)
    assert choose_threshold(np.array([0.1, 0.2]), np.array([0.5, 0.6, 0.6, 0.9, 1.0])) == pytest.approx(0.4)
    # overlapping or none: just above the top normal
    assert choose_threshold(np.array([0.1, 0.7]), np.array([0.5, 0.6])) == pytest.approx(0.7007)
    assert choose_threshold(np.array([0.3]), np.zeros(0)) == pytest.approx(0.3003)

    # score = mean brightness; pseudo anomalies brighten the image: leave-one-out pairs, 3 shots
    shots = [np.full((16, 16, 3), v, np.uint8) for v in (50, 60, 70)]
    calls = []

    def score_against(bank, queries):
        calls.append(len(bank))
        s = np.array([q.mean() / 255 for q in queries])
        return s, np.stack([np.full((16, 16), v) for v in s])

    def brighten(img, rng):
        return np.clip(img.astype(int) + 100, 0, 255).astype(np.uint8), np.ones(img.shape[:2], np.uint8)

    cal = calibrate_with_pseudo(shots, score_against, brighten, seed=0)
    assert calls == [2, 2, 2, 2, 2, 2]  # every query scored against the *other* two shots
    top, low = max(cal["normal_scores"]), np.percentile(cal["pseudo_anomaly_scores"], 25)
    assert top < low and cal["threshold"] == pytest.approx(top + 0.5 * (low - top))
    assert cal["map_range"][0] < cal["threshold"] < cal["map_range"][1]

    # a calibration margin scales the threshold only; the same jitter stream gives the same scores
    scaled = calibrate_with_pseudo(shots, score_against, brighten, seed=0, margin=1.5)
    assert scaled["threshold"] == pytest.approx(1.5 * cal["threshold"])
    assert scaled["map_range"] == pytest.approx(cal["map_range"])
