"""Backbones: real ImageNet weights, frozen eval mode, shapes from the spec, one-line errors."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from protospect.errors import ConfigError  # noqa: E402
from protospect.imageio import resize_image  # noqa: E402
from protospect.training.backbones import BackboneSpec, create_backbone, list_backbones, register_backbone  # noqa: E402
from protospect.training.backbones import resnet  # noqa: E402
from protospect.training.backbones.efficientnet_lite import create_lite_classifier  # noqa: E402

pytestmark = pytest.mark.torch
EGYPTIAN_CAT = 285  # ImageNet class of skimage's chelsea


@pytest.fixture(scope="module", autouse=True)
def _few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("efficientnet_lite0")


def normalised(img: np.ndarray, spec: BackboneSpec, size: int) -> torch.Tensor:
    """The contract's preprocessing: resize_image, /255, (x - mean) / std, NCHW."""
    x = resize_image(img, size).astype(np.float32) / 255.0
    x = (x - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    return torch.from_numpy(x).permute(2, 0, 1)[None]


@pytest.mark.parametrize("variant", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_lite_weights_are_real_imagenet_weights(variant, lite0):
    """skimage's chelsea, preprocessed as the contract says with the backbone's own spec, is an Egyptian cat."""
    data = pytest.importorskip("skimage.data")
    spec = lite0.spec  # the Lite family shares mean/std/size
    net = create_lite_classifier(variant)
    with torch.no_grad():
        probs = net(normalised(data.chelsea(), spec, spec.input_size)).softmax(1)[0]
    assert int(probs.argmax()) == EGYPTIAN_CAT and float(probs[EGYPTIAN_CAT]) > 0.3
    if variant == "efficientnet_lite0":
        # Control: the same check on random weights gives the cat no special probability.
        torch.manual_seed(0)
        random_net = create_lite_classifier(variant, weights="random")
        with torch.no_grad():
            assert float(random_net(normalised(data.chelsea(), spec, spec.input_size)).softmax(1)[0, EGYPTIAN_CAT]) < 0.05


def test_backbone_uses_the_classifier_weights(lite0):
    """The backbone's taps equal the classifier's own intermediate features: same weights, same graph."""
    net = create_lite_classifier("efficientnet_lite0")
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ours = lite0(x)
        theirs = net.forward_intermediates(x, indices=[2, 3], intermediates_only=True)
    assert len(ours) == 2
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_lite0_default_spec_and_shapes(lite0):
    spec = lite0.spec
    assert (spec.name, spec.input_size, spec.stages) == ("efficientnet_lite0", 256, (2, 3))
    assert spec.channels == (40, 112) and spec.reductions == (8, 16)
    assert spec.mean == pytest.approx((127 / 255,) * 3) and spec.std == pytest.approx((128 / 255,) * 3)
    feats = lite0(torch.zeros(2, 3, 256, 256))
    assert [tuple(f.shape) for f in feats] == [(2, 40, 32, 32), (2, 112, 16, 16)]
    with pytest.raises(Exception):
        spec.name = "x"  # frozen dataclass


@pytest.mark.parametrize("name,stages,size", [
    ("efficientnet_lite0", (1, 2, 3, 4), 96),
    ("efficientnet_lite2", (2, 3), 96),
    ("resnet18", (1, 2, 3), 96),
    ("resnet18", (2, 4), 96),
])
def test_spec_matches_real_outputs(name, stages, size):
    bb = create_backbone(name, stages=stages, weights="random", input_size=size)
    assert bb.spec.input_size == size
    with torch.no_grad():
        feats = bb(torch.zeros(1, 3, size, size))
    assert len(feats) == len(bb.spec.stages) == len(bb.spec.channels) == len(bb.spec.reductions)
    for f, c, r in zip(feats, bb.spec.channels, bb.spec.reductions):
        assert f.shape[1] == c and f.shape[2] == f.shape[3] == size // r


def test_paper_backbone_defaults():
    wrn = create_backbone("wide_resnet50_2", weights="random")
    spec = wrn.spec
    assert (spec.input_size, spec.stages, spec.channels, spec.reductions) == (224, (1, 2, 3), (256, 512, 1024), (4, 8, 16))
    with torch.no_grad():
        feats = wrn(torch.zeros(1, 3, 224, 224))
    assert [tuple(f.shape) for f in feats] == [(1, 256, 56, 56), (1, 512, 28, 28), (1, 1024, 14, 14)]
    r18 = create_backbone("resnet18", weights="random").spec
    assert (r18.input_size, r18.stages, r18.channels) == (256, (1, 2, 3), (64, 128, 256))
    assert r18.mean == (0.485, 0.456, 0.406)


def test_stages_after_the_last_tap_are_pruned():
    lite = create_backbone("efficientnet_lite0", stages=(2,), weights="random")
    assert len(lite.body.blocks) == 3  # stem, then blocks 0..2; the 40-channel stage ends at block 2
    r18 = create_backbone("resnet18", stages=(1, 2), weights="random")
    assert len(r18.body.layers) == 2
    names = {n for n, _ in r18.named_parameters()}
    assert not any("fc" in n for n in names)


def test_always_eval_and_frozen(lite0):
    assert not lite0.training and not any(m.training for m in lite0.modules())
    lite0.train()
    assert not any(m.training for m in lite0.modules())
    parent = torch.nn.Sequential(lite0)
    parent.train(True)
    assert not any(m.training for m in lite0.modules())
    assert all(not p.requires_grad for p in lite0.parameters())
    # BatchNorm running statistics must not move when the backbone sees data in a "training" parent.
    bn = next(m for m in lite0.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    lite0(torch.randn(2, 3, 64, 64) * 3 + 1)
    torch.testing.assert_close(bn.running_mean, before)


def test_unknown_name_lists_close_matches():
    with pytest.raises(ConfigError, match="did you mean .*efficientnet_lite0"):
        create_backbone("efficientnet_lite")
    with pytest.raises(ConfigError, match="available: efficientnet_lite0"):
        create_backbone("vgg16")


def test_bad_stages_and_size_are_config_errors():
    with pytest.raises(ConfigError, match="valid stages are 1..4"):
        create_backbone("resnet18", stages=(0, 1), weights="random")
    with pytest.raises(ConfigError, match="strictly increasing"):
        create_backbone("efficientnet_lite0", stages=(3, 2), weights="random")
    with pytest.raises(ConfigError, match="not a multiple of 16"):
        create_backbone("efficientnet_lite0", weights="random", input_size=250)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(resnet.resnet18)


def test_list_backbones():
    assert list_backbones() == sorted(list_backbones())
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "wide_resnet50_2"} <= set(list_backbones())
    assert list_backbones("resnet*") == ["resnet18"]


def test_missing_resnet_weights_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ConfigError) as err:
        create_backbone("wide_resnet50_2")
    msg = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / "wide_resnet50_2-95faca4d.pth") in msg
    assert "--backbone-weights" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="weight file not found"):
        create_backbone("resnet18", weights=tmp_path / "nope.pth")


def test_resnet_weights_from_file_and_from_cache(tmp_path, monkeypatch):
    tv_models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    reference = tv_models.resnet18(weights=None).eval()
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference.layer2(reference.layer1(reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))))
        from_file = create_backbone("resnet18", stages=(2,), weights=path)(x)[0]
    torch.testing.assert_close(from_file, expected)
    # The same file in torchvision's cache is found without --backbone-weights.
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    path.rename(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with torch.no_grad():
        torch.testing.assert_close(create_backbone("resnet18", stages=(2,))(x)[0], expected)


def test_wrong_weight_file_is_a_config_error(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(ConfigError, match="not a resnet18 state_dict"):
        create_backbone("resnet18", weights=bad)
    with pytest.raises(ConfigError, match="has 1 tensors"):
        create_backbone("efficientnet_lite0", weights=bad)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read weight file"):
        create_backbone("efficientnet_lite0", weights=garbage)


@pytest.mark.slow
def test_memoized_features_are_exact_and_only_inside_the_context():
    import torch
    from protospect.training.backbones import FeatureStore, create_backbone, memoize_features

    a = create_backbone("efficientnet_lite0", weights="random", input_size=64)
    torch.manual_seed(1)
    b = create_backbone("efficientnet_lite0", weights="random", input_size=64)  # other weights
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref_a, ref_b = a(x), b(x)
        store = FeatureStore()
        with memoize_features(store):
            first = a(x)
        assert len(store.entries) == 1
        a(x + 5.0)                             # outside the context: nothing is stored
        assert len(store.entries) == 1
        with memoize_features(store):
            second = a(x)                      # hit across contexts: same weights, same pixels
            other = b(x)                       # different weights must not hit a's entry
            shifted = a(x + 1e-3)              # different pixels must not hit
        for f, r in zip(second, ref_a):
            assert torch.equal(f, r)
        for f, r in zip(other, ref_b):
            assert torch.equal(f, r)
        assert not torch.equal(shifted[0], first[0])
        assert a._weights_fp != b._weights_fp
