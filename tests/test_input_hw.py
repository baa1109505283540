"""Non-square model inputs in the core: (H, W) sizes, the shared image / mask resize to H x W, and the
model meta / graph metadata readers. Torch-free."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from protospect.errors import ArtifactError, DataError
from protospect.imageio import canonical_size, hw_of, resize_image, resize_mask, size_text
from protospect.metadata import build_metadata, input_hw_of, input_hw_of_props


def test_sizes_are_s_or_h_w():
    assert hw_of(256) == (256, 256) and hw_of([704, 384]) == (704, 384) and hw_of((48, 80)) == (48, 80)
    assert canonical_size(256) == 256 and canonical_size([256, 256]) == 256 and canonical_size([704, 384]) == (704, 384)
    assert (size_text(512), size_text([512, 512]), size_text((704, 384))) == ("512", "512", "704x384")
    with pytest.raises(DataError):
        hw_of([1, 2, 3])


def test_resize_image_to_h_by_w_keeps_the_axes():
    """A bar across the top of a 200 x 100 (W x H) image stays a bar across the top of a 48 x 80 (H x W) one."""
    img = np.zeros((100, 200, 3), np.uint8)
    img[:20, :, 0] = 255           # top fifth red
    img[:, 150:, 1] = 255          # right quarter green
    out = resize_image(img, (48, 80))
    assert out.shape == (48, 80, 3) and out.dtype == np.uint8
    assert out[:8, :, 0].min() == 255 and out[12:, :, 0].max() == 0
    assert out[:, 62:, 1].min() == 255 and out[:, :58, 1].max() == 0
    assert np.array_equal(out, cv2.resize(img, (80, 48), interpolation=cv2.INTER_AREA))  # shrinking: area
    grown = resize_image(img[:10, :20], (48, 80))
    assert grown.shape == (48, 80, 3)
    assert np.array_equal(grown, cv2.resize(img[:10, :20], (80, 48), interpolation=cv2.INTER_LINEAR))
    assert np.array_equal(resize_image(img, 64), resize_image(img, (64, 64)))  # S is S x S


def test_resize_mask_to_h_by_w_stays_binary_and_aligned_with_the_image():
    mask = np.zeros((100, 200), np.uint8)
    mask[40:60, 100:180] = 1
    out = resize_mask(mask, (50, 100))  # exactly half each way
    assert out.shape == (50, 100) and set(np.unique(out)) == {0, 1}
    want = np.zeros((50, 100), np.uint8)
    want[20:30, 50:90] = 1
    assert np.array_equal(out, want)
    odd = resize_mask(mask, (48, 80))
    assert odd.shape == (48, 80) and set(np.unique(odd)) <= {0, 1}
    assert np.array_equal(resize_mask(mask, 32), resize_mask(mask, (32, 32)))


def test_model_meta_and_graph_metadata_give_h_and_w():
    assert input_hw_of({"input_size": 512}) == (512, 512)
    assert input_hw_of({"input_size": [704, 384]}) == (704, 384)
    for bad in (None, "512", [704], [704, 384, 3], [0, 384], [704.0, 384]):
        with pytest.raises(ArtifactError, match="no usable 'input_size'"):
            input_hw_of({"input_size": bad})
    props = build_metadata({"input_size": [704, 384], "mean": [0] * 3, "std": [1] * 3},
                           {"threshold": 0.5, "map_range": [0, 1]}, artifact_sha256="x")
    assert props["protospect.input_size"] == "[704, 384]"
    assert input_hw_of_props(props) == (704, 384)
    square = build_metadata({"input_size": 64, "mean": [0] * 3, "std": [1] * 3},
                            {"threshold": 0.5, "map_range": [0, 1]}, artifact_sha256="x")
    assert square["protospect.input_size"] == "[64, 64]" and input_hw_of_props(square) == (64, 64)
    with pytest.raises(ArtifactError, match="no valid protospect.input_size"):
        input_hw_of_props({}, "g.onnx")
    with pytest.raises(ArtifactError, match="not positive"):
        input_hw_of_props({"protospect.input_size": "[0, 8]"}, "g.onnx")
