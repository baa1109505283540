"""Artifact directory: round trip, and a clear ArtifactError naming the file for every kind of tampering."""
import hashlib
import json

import numpy as np
import pytest
import torch

from protospect.errors import ArtifactError
from protospect.training.artifact import artifact_sha256, load_artifact, save_artifact
from protospect.training.calibrate import to_model_input
from protospect.training.methods import get_method

from mvtec_tiny import add_defect, part_image

pytestmark = pytest.mark.torch
S = 64


@pytest.fixture(scope="module")
def fitted():
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    shots = [part_image(rng, S) for _ in range(2)]
    return get_method("patchcore").fit(shots, preset="edge", seed=3, config_overrides={"input_size": S})


@pytest.fixture
def art(tmp_path, fitted):
    return save_artifact(fitted, tmp_path / "art", shots=["/x/train/good/001.png", "/x/train/good/007.png"], seed=3,
                         data={"root": "/x", "category": "part"}, extra={"train_seconds": 1.5})


def test_round_trip_gives_identical_outputs(art, fitted):
    model, manifest = load_artifact(art)
    x = to_model_input([add_defect(part_image(np.random.default_rng(1), S), np.random.default_rng(2))[0]], S,
                       model.meta["mean"], model.meta["std"])
    with torch.no_grad():
        a, b = fitted(x), model(x)
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.image_score, b.image_score)
    assert not model.training
    assert model.calibration["threshold"] == fitted.calibration["threshold"]
    assert manifest["format"] == "protospect-artifact" and manifest["format_version"] == 1
    assert manifest["shots"] == ["001.png", "007.png"] and manifest["K"] == 2 and manifest["seed"] == 3
    assert manifest["method"] == "patchcore" and manifest["preset"] == "edge" and manifest["train_seconds"] == 1.5
    assert set(manifest["versions"]) >= {"python", "torch", "torchvision", "timm", "numpy"}
    assert manifest["files"]["weights.pt"] == hashlib.sha256((art / "weights.pt").read_bytes()).hexdigest()
    assert artifact_sha256(art) == hashlib.sha256((art / "manifest.json").read_bytes()).hexdigest()


def test_interrupted_save_over_an_artifact_leaves_the_old_files_whole(art, fitted, monkeypatch):
    """A save that dies mid-write (a kill, a full disk) leaves each file as it was, never half written."""
    import protospect.files

    before = {name: (art / name).read_bytes() for name in ("weights.pt", "manifest.json")}

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(protospect.files.os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_artifact(fitted, art, shots=["a.png"], seed=4, data={"root": "/y", "category": "part"})
    monkeypatch.undo()
    assert {name: (art / name).read_bytes() for name in before} == before
    assert not list(art.glob("*.part"))
    assert load_artifact(art)[1]["seed"] == 3


def test_edited_weights_are_refused(art):
    data = bytearray((art / "weights.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (art / "weights.pt").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"weights\.pt does not match the sha256"):
        load_artifact(art)


def test_missing_weights_are_refused(art):
    (art / "weights.pt").unlink()
    with pytest.raises(ArtifactError, match=r"weights\.pt is missing"):
        load_artifact(art)


def test_other_format_version_is_refused(art):
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["format_version"] = 2
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"manifest\.json has format_version 2"):
        load_artifact(art)


def test_edited_manifest_is_refused(art):
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["calibration"]["threshold"] *= 2  # a hand-edited threshold
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"manifest\.json was edited"):
        load_artifact(art)


def test_foreign_or_missing_manifest_is_refused(art, tmp_path):
    (art / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(ArtifactError, match="not a protospect artifact"):
        load_artifact(art)
    (art / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(art)
    (art / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match=r"manifest\.json is missing"):
        load_artifact(art)
    with pytest.raises(ArtifactError, match="not found"):
        load_artifact(tmp_path / "nowhere")


def test_weights_of_another_shape_are_refused(art, tmp_path):
    state = torch.load(art / "weights.pt", weights_only=True)
    state["bank"] = state["bank"][:10]  # consistent hashes, wrong content
    state["left_by_an_older_version"] = torch.zeros(1)
    torch.save(state, art / "weights.pt")
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["files"]["weights.pt"] = hashlib.sha256((art / "weights.pt").read_bytes()).hexdigest()
    from protospect.training.artifact import _content_sha256
    manifest.pop("content_sha256")
    manifest["content_sha256"] = _content_sha256(manifest)
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"weights\.pt does not fit") as err:
        load_artifact(art)
    # one line that names the key another version wrote, so the engineer knows why
    assert "\n" not in str(err.value) and "left_by_an_older_version" in str(err.value)
