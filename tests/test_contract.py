"""The graph contract is defined once (issue 19 item 2): names, keys, parsing and suffixes come from the core."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from protospect import contract

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("protospect", "training", "export", "calibration", "runtime", "cpp_ext")


def test_model_outputs_fields_are_the_contract_output_names():
    from protospect.training.methods.base import ModelOutputs

    assert ModelOutputs._fields == contract.OUTPUTS == (contract.ANOMALY_MAP, contract.IMAGE_SCORE)


def test_no_metadata_key_is_spelled_outside_the_contract():
    """Every protospect.<key> string in product code comes from protospect.contract's constants."""
    keys = [getattr(contract, n) for n in dir(contract) if n.startswith("KEY_")] + [contract.METADATA_HASH]
    literal = re.compile("[\"']({})[\"']".format("|".join(re.escape(k) for k in keys)))
    found = [f"{p.relative_to(ROOT)}:{i}" for room in PRODUCT for p in sorted((ROOT / room).rglob("*.py"))
             if p.name != "contract.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if literal.search(line)]
    assert found == []


def test_metadata_builds_with_the_contract_keys():
    from protospect.metadata import build_metadata

    props = build_metadata({"method": "m", "preset": "p", "input_size": 8, "mean": [0, 0, 0], "std": [1, 1, 1]},
                           {"threshold": 0.5, "map_range": [0, 1]}, artifact_sha256="0" * 64, precision="int8")
    assert props[contract.KEY_PRECISION] == "int8" and props[contract.KEY_THRESHOLD] == "0.5"
    assert props[contract.KEY_FORMAT_VERSION] == contract.FORMAT_VERSION
    with pytest.raises(ValueError, match="precision"):
        build_metadata({"input_size": 8, "mean": [0] * 3, "std": [1] * 3}, {"threshold": 0.5, "map_range": [0, 1]},
                       artifact_sha256="", precision="bf16")


def test_version_and_compute_capability_parsing():
    assert contract.version_key("10.3.0.30") == (10, 3, 0)
    assert contract.version_key("10.3.0.30", parts=2) == (10, 3)
    assert contract.version_key("10") == (10, 0, 0)
    assert contract.normalise_cc([8, 7]) == contract.normalise_cc("sm_87") == contract.normalise_cc(8.7) == "8.7"
    assert contract.sidecar_path(Path("a/m.engine")) == Path("a/m.engine.json")


def test_trt_builder_version_and_the_runtime_check_agree():
    from types import SimpleNamespace

    from protospect.export.trt_builder import trt_version

    assert trt_version(SimpleNamespace(__version__="10.3.0.30")) == (10, 3)


def test_gpu_identity_from_properties():
    from types import SimpleNamespace

    from protospect.gpu import from_properties

    gpu = from_properties(SimpleNamespace(name=b"Orin (nvgpu)\x00\x00", major=8, minor=7))
    assert (gpu.name, gpu.compute_capability, gpu.major_minor) == ("Orin (nvgpu)", "8.7", (8, 7))


def test_one_image_suffix_set(tmp_path):
    """A .webp folder that serve replays is one export --int8-calib-images and train read too."""
    import numpy as np

    from protospect.calibration.data_reader import images_in
    from protospect.imageio import IMAGE_SUFFIXES, read_rgb
    from protospect.runtime import sources
    from protospect.training import data, textures

    import cv2

    assert sources.IMAGE_SUFFIXES is IMAGE_SUFFIXES is data.IMAGE_SUFFIXES is textures.TEXTURE_SUFFIXES
    cv2.imwrite(str(tmp_path / "a.webp"), np.full((16, 16, 3), 128, np.uint8))
    assert images_in(tmp_path) == [tmp_path / "a.webp"]
    assert read_rgb(tmp_path / "a.webp").shape == (16, 16, 3)


def test_one_set_parser():
    from protospect.training.cli_train import parse_settings
    from protospect.training.methods.pcsnet.validate import _parse_set

    items = ["input_size=64", "image_score=\"peak\"", "stages=[2, 3]", "name=abc"]
    assert _parse_set(items) == parse_settings(items) == {"input_size": 64, "image_score": "peak", "stages": [2, 3],
                                                          "name": "abc"}
    assert _parse_set(None) == {}
