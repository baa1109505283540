"""BPGG-style reconstruction (training/methods/bpgg): support split, prototypes, reverse branch,
learning, frozen backbone, export parity, round trip. Tiny sizes, random backbone weights."""
from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch

from protospect.errors import ConfigError, DataError
from protospect.training.methods import get_method
from protospect.training.methods.bpgg import build, fit, prepare_eval, resolve_config, split_defect_support
from protospect.training.methods.bpgg.fit import SupportSet, episode_loss, train_adapter
from protospect.training.methods.bpgg.model import assemble, cosine_logits, masked_average, prototypes
from protospect.training.methods.prn.fit import create_backbone

pytestmark = pytest.mark.torch

TINY = {"backbone_weights": "random", "input_size": 64, "steps": 3, "episodes_per_step": 2, "hidden": 16, "dim": 8,
        "calibration_views": 2, "pseudo_supports": 2}


def part(rng: np.random.Generator, defect: bool = False, size: int = 72):
    """A generated part (grey plate, bright disc) and, if defective, a green spot with its mask."""
    img = np.full((size, size, 3), 90, np.uint8)
    cv2.circle(img, (size // 2, size // 2), size // 3, (200, 190, 170), -1)
    mask = np.zeros((size, size), np.uint8)
    if defect:
        x, y = (int(v) for v in rng.integers(size // 3, 2 * size // 3, 2))
        cv2.circle(img, (x, y), size // 12, (20, 200, 20), -1)
        cv2.circle(mask, (x, y), size // 12, 1, -1)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8), mask


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    shots = [part(rng)[0] for _ in range(3)]
    supports = [part(rng, defect=True) for _ in range(3)]
    return shots, supports


@pytest.fixture(scope="module")
def fitted(data):
    shots, supports = data
    return fit(shots, "edge", 0, TINY, defects=supports, defect_names=["a/1", "a/2", "b/3"])


def write_category(root, types=("crack", "hole"), per_type=4):
    """A tiny MVTec-layout category with masks, written as PNG files."""
    rng = np.random.default_rng(1)
    for sub in ["train/good", "test/good", *[f"test/{t}" for t in types], *[f"ground_truth/{t}" for t in types]]:
        (root / sub).mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(root / "train/good" / f"{i:03d}.png"), part(rng)[0])
        cv2.imwrite(str(root / "test/good" / f"{i:03d}.png"), part(rng)[0])
    for t in types:
        for i in range(per_type):
            img, mask = part(rng, defect=True)
            cv2.imwrite(str(root / "test" / t / f"{i:03d}.png"), img)
            cv2.imwrite(str(root / "ground_truth" / t / f"{i:03d}_mask.png"), mask * 255)
    return root


def test_split_is_disjoint_spread_and_seeded(tmp_path):
    from protospect.training.data import MVTecCategory

    cat = MVTecCategory(write_category(tmp_path / "widget"))
    support, remaining = split_defect_support(cat, 3, seed=0)
    assert len(support) == 3 and len(remaining) == len(cat.test) - 3
    assert not {it.path for it in support} & {it.path for it in remaining}
    assert {it.path for it in support} | {it.path for it in remaining} == {it.path for it in cat.test}
    assert {it.defect_type for it in support[:2]} == {"crack", "hole"}  # round robin over the types
    assert all(it.label == 1 and it.mask_path is not None for it in support)
    again, _ = split_defect_support(cat, 3, seed=0)
    assert [it.path for it in again] == [it.path for it in support]
    others = {tuple(sorted(str(it.path) for it in split_defect_support(cat, 3, seed=s)[0])) for s in range(6)}
    assert len(others) > 1  # the seed matters
    with pytest.raises(DataError, match="need more than"):
        split_defect_support(cat, 8, seed=0)

    overrides, defects, names, items = prepare_eval(cat, seed=0, config_overrides={"category": "widget"})
    assert overrides == {"category": "widget"} and len(defects) == 3  # the images are not settings
    assert names == [f"{it.defect_type}/{it.path.name}" for it in support]
    img, mask = defects[0]
    assert img.shape == (72, 72, 3) and mask.shape == (72, 72) and mask.max() == 1
    evaluated = {f"{it.defect_type}/{it.path.name}" for it in items}
    assert not evaluated & set(names)
    # support_size is honoured in eval (it used to be dropped for the default 3) ...
    two = prepare_eval(cat, seed=0, config_overrides={"support_size": 2})
    assert len(two.defects) == 2 and len(two.remaining) == len(items) + 1
    # ... and another folder's support, which eval cannot use, is refused instead of silently ignored.
    with pytest.raises(ConfigError, match="support_data applies to `protospect train` only"):
        prepare_eval(cat, seed=0, config_overrides={"support_data": "/elsewhere"})


@pytest.mark.devdata
def test_split_on_dev_bottle_is_disjoint():
    from devdata import dev_category
    from protospect.training.data import MVTecCategory

    cat = MVTecCategory(dev_category("bottle"))
    support, remaining = split_defect_support(cat, 3, seed=1)
    assert {it.defect_type for it in support} == set(cat.defect_types)
    assert not {it.path for it in support} & {it.path for it in remaining}


def test_masked_average_and_prototypes_by_hand():
    feats = torch.zeros(2, 2, 2, 2)
    feats[0, 0] = torch.tensor([[1.0, 1.0], [3.0, 3.0]])
    feats[1, 1] = 5.0
    defect = torch.zeros(2, 1, 2, 2)
    defect[0, 0, 1] = 1.0  # bottom row of shot 0 is defective; shot 1 is an inserted normal image
    assert torch.allclose(masked_average(feats, defect)[0], torch.tensor([3.0, 0.0]), atol=1e-4)
    protos = prototypes(feats, defect)
    # normal: mean of shot 0's top row (1, 0) and shot 1 (0, 5); defect: shot 0 only (3, 0)
    assert torch.allclose(protos[0], torch.tensor([0.5, 2.5]), atol=1e-4)
    assert torch.allclose(protos[1], torch.tensor([3.0, 0.0]), atol=1e-4)
    logits = cosine_logits(feats, protos, 20.0)
    assert logits.shape == (2, 2, 2, 2) and logits.abs().max() <= 20.0 + 1e-4


def test_reverse_branch_runs_only_with_a_predicted_defect(fitted, data):
    shots, supports = data
    cfg = resolve_config("edge", TINY)
    ds = SupportSet(fitted, [s[0] for s in supports] + [s for s in shots],
                    [s[1] for s in supports] + [np.zeros((72, 72), np.uint8)] * 3, 3, cfg)
    ds.masks = torch.nn.functional.interpolate(ds.masks, size=(64, 64))
    support = [1, 2, 3, 4, 5]
    emb = torch.randn(6, 8, 8, 8)
    normal_like = emb.clone()
    normal_like[0] = emb[3]  # query identical to a normal shot: the branch runs iff it predicts a defect pixel
    protos = prototypes(normal_like[torch.tensor(support)], ds.grid_masks[torch.tensor(support)])
    pred = cosine_logits(normal_like[:1], protos, 20.0).argmax(1)
    _, ran = episode_loss(normal_like, ds, 0, support, cfg, (64, 64))
    assert ran == bool((pred == 1).any())
    # a query that is the defect prototype everywhere predicts defect pixels -> reverse branch runs
    defect_like = emb.clone()
    defect_like[0] = protos[1].view(8, 1, 1).expand(8, 8, 8)
    loss, ran = episode_loss(defect_like, ds, 0, support, cfg, (64, 64))
    assert ran and torch.isfinite(loss)
    loss_no_align, ran = episode_loss(defect_like, ds, 0, support, resolve_config("edge", {**TINY, "align_weight": 0}), (64, 64))
    assert not ran and loss_no_align < loss


def test_fit_contract_and_support_names(fitted):
    assert get_method("bpgg").fit is fit
    out = fitted(torch.randn(2, 3, 64, 64))
    assert out.anomaly_map.shape == (2, 1, 64, 64) and out.image_score.shape == (2,)
    assert torch.allclose(out.image_score, out.anomaly_map.amax(dim=(1, 2, 3)))
    meta = fitted.meta
    assert meta["method"] == "bpgg" and "reconstruction" in meta
    assert meta["support"] == ["a/1", "a/2", "b/3"] and meta["support_source"] == "given"
    assert "defect_support" not in meta["config"]
    assert fitted.calibration["threshold"] > 0 and len(fitted.calibration["normal_scores"]) == 3
    assert not fitted.training and fitted.prototypes.abs().sum() > 0


def test_without_supports_falls_back_to_nsa_and_says_so(data):
    shots, _ = data
    model = fit(shots[:2], "edge", 0, {**TINY, "steps": 1})
    assert model.meta["support_source"].startswith("nsa-pseudo") and "not BPGG" in model.meta["support_source"]
    assert all(name.startswith("nsa-pseudo") for name in model.meta["support"])


def test_config_errors(data):
    with pytest.raises(ConfigError, match="unknown config key"):
        resolve_config("edge", {"nope": 1})
    shots, supports = data
    empty = [(supports[0][0], np.zeros((72, 72), np.uint8))]
    with pytest.raises(DataError, match="empty mask"):
        fit(shots, "edge", 0, TINY, defects=empty)
    with pytest.raises(ConfigError, match="unknown config key"):  # images are fit's argument, not a setting
        fit(shots, "edge", 0, {**TINY, "defect_support": supports})


def test_loss_decreases_and_backbone_stays_frozen(data):
    shots, supports = data
    cfg = resolve_config("edge", {**TINY, "steps": 30, "lr": 3e-3})
    torch.manual_seed(0)
    model = assemble(cfg, create_backbone(cfg, "random"), {})
    from protospect.imageio import resize_mask, resize_image

    ds = SupportSet(model, [resize_image(s[0], 64) for s in supports] + [resize_image(s, 64) for s in shots],
                    [resize_mask(s[1], 64) for s in supports] + [np.zeros((64, 64), np.uint8)] * 3, 3, cfg)
    before = copy.deepcopy(model.features.backbone.state_dict())
    modes = []
    model.features.backbone.register_forward_hook(lambda m, i, o: modes.append(m.training))
    model.features.raw(torch.zeros(1, 3, 64, 64))
    losses = train_adapter(model, ds, cfg, np.random.default_rng(0))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    after = model.features.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert modes and not any(modes)


def test_build_and_state_dict_round_trip(fitted, tmp_path):
    torch.save(fitted.state_dict(), tmp_path / "weights.pt")
    rebuilt = build(copy.deepcopy(fitted.meta))
    rebuilt.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = fitted(x), rebuilt.eval()(x)
    assert torch.equal(a.anomaly_map, b.anomaly_map)


def test_artifact_round_trip(fitted, tmp_path):
    from protospect.training.artifact import load_artifact, save_artifact

    save_artifact(fitted, tmp_path / "art", shots=["a.png", "b.png", "c.png"], seed=0, data={"root": "gen", "category": "part"})
    loaded, manifest = load_artifact(tmp_path / "art")
    assert manifest["method"] == "bpgg" and manifest["meta"]["support"] == ["a/1", "a/2", "b/3"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fitted(x).anomaly_map, loaded(x).anomaly_map)


def test_onnx_parity(fitted, data, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from protospect.export.onnx_export import onnx_from_model
    from protospect.imageio import resize_image

    path = onnx_from_model(fitted, fitted.meta, fitted.calibration, tmp_path / "bpgg.onnx").path
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    mean = torch.tensor(fitted.meta["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(fitted.meta["std"]).view(1, 3, 1, 1)
    for frame in (resize_image(data[1][0][0], 64), np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)):
        got_map, got_score = sess.run(["anomaly_map", "image_score"], {"image": frame[None]})
        x = torch.from_numpy(frame[None]).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            ref = fitted((x - mean) / std)
        np.testing.assert_allclose(got_map, ref.anomaly_map.numpy(), atol=1e-4)
        np.testing.assert_allclose(got_score, ref.image_score.numpy(), atol=1e-4)


def test_support_from_a_category_folder(tmp_path, data):
    """--set support_data=DIR: the defective support is drawn with split_defect_support(seed)."""
    from protospect.training.data import MVTecCategory

    root = write_category(tmp_path / "widget")
    shots, _ = data
    model = fit(shots[:2], "edge", 4, {**TINY, "steps": 1, "support_data": str(root), "support_size": 2})
    expected, _ = split_defect_support(MVTecCategory(root), 2, seed=4)
    assert model.meta["support"] == [f"{it.defect_type}/{it.path.name}" for it in expected]
    assert model.meta["support_source"] == "given"
