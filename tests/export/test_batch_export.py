"""export --batch N | dynamic (issue 18): shapes, metadata, per-item parity with batch 1, refusals, and the
single-camera ORT backend's answer to a batched graph."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from protospect.cli import main
from protospect.contract import KEY_BATCH, batch_of, check_contract

pytestmark = pytest.mark.torch


def _io(path):
    model = onnx.load(str(path))
    dims = lambda v: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]  # noqa: E731
    return {v.name: dims(v) for v in list(model.graph.input) + list(model.graph.output)}, \
        {p.key: p.value for p in model.metadata_props}


@pytest.mark.parametrize("batch, n", [("3", 3), ("dynamic", "batch")])
def test_export_batch_writes_shapes_metadata_and_passes_item_parity(patchcore, tmp_path, capsys, batch, n):
    _, art = patchcore
    out = tmp_path / f"m{batch}.onnx"
    assert main(["export", str(art), "--out", str(out), "--batch", batch]) == 0
    text = capsys.readouterr().out
    assert f"batch parity (batch {batch} vs batch 1" in text and "PASS" in text
    shapes, props = _io(out)
    assert shapes["image"] == [n, 64, 64, 3] and shapes["anomaly_map"][0] == n and shapes["image_score"] == [n]
    assert props[KEY_BATCH] == batch and batch_of(props) == (3 if batch == "3" else "dynamic")
    check_contract(props, str(out))  # the batch key is covered by the metadata hash
    if batch == "3":
        assert "--batch 1" in text and "multi-camera serve" in text


def test_default_export_has_no_batch_key(fp32_graph):
    shapes, props = _io(fp32_graph)
    assert KEY_BATCH not in props and batch_of(props) == 1 and shapes["image"] == [1, 64, 64, 3]


def test_batch_parity_is_per_item_and_catches_swapped_items(patchcore, fp32_graph, demo_category, tmp_path, monkeypatch):
    from export_fixtures import test_set

    from protospect.export import ort_session
    from protospect.export.batch_parity import batch_parity, chunks
    from protospect.export.onnx_export import onnx_from_model

    model, _ = patchcore
    batched = onnx_from_model(model, model.meta, model.calibration, tmp_path / "b2.onnx", batch=2).path
    frames = test_set(demo_category)[0][:5]
    thr = float(model.calibration["threshold"])
    good = batch_parity(batched, fp32_graph, frames, thr, 2)
    assert good.ok and good.n_images == 5 and good.batch_sizes == [2, 2, 2] and good.decisions_differ == 0
    assert chunks(5, 2) == [[0, 1], [2, 3], [4, 0]] and chunks(4, "dynamic")[-1] == [0, 1, 2, 3]

    real = ort_session.cpu_session

    class Swapped:  # a batched graph that returns its items in the wrong order
        def __init__(self, session):
            self.session = session

        def run(self, names, feed):
            return [np.asarray(x)[::-1] for x in self.session.run(names, feed)]

    monkeypatch.setattr(ort_session, "cpu_session", lambda p, *a, **k: Swapped(real(p)) if str(p) == str(batched) else real(p))
    bad = batch_parity(batched, fp32_graph, frames, thr, 2)
    assert not bad.ok and bad.map_max_rel > 1e-4 and "FAIL" in bad.format()


@pytest.mark.parametrize("extra, message", [
    (["--batch", "0"], "is not a batch size"),
    (["--batch", "two"], "is not a batch size"),
    (["--batch", "2", "--int8"], "drop --int8"),
    (["--batch", "2", "--fp16"], "drop --fp16"),
    (["--batch", "dynamic", "--bank-as-input"], "drop --bank-as-input"),
])
def test_export_batch_refusals_are_one_line(patchcore, tmp_path, capsys, extra, message):
    _, art = patchcore
    rc = main(["export", str(art), "--out", str(tmp_path / "m.onnx"), *extra])
    err = capsys.readouterr().err
    assert rc != 0 and message in err and "Traceback" not in err


def test_ort_backend_refuses_static_batch_and_serves_dynamic(patchcore, tmp_path):
    from protospect.errors import ArtifactError
    from protospect.export.onnx_export import onnx_from_model
    from protospect.runtime.backends.ort import OrtBackend

    model, _ = patchcore
    static = onnx_from_model(model, model.meta, model.calibration, tmp_path / "b4.onnx", batch=4).path
    with pytest.raises(ArtifactError, match=r"batch-4 graph .*--batch 1 .*serve --config") as err:
        with OrtBackend(static, device="cpu", threads=1):
            pass
    assert "\n" not in str(err.value)
    dynamic = onnx_from_model(model, model.meta, model.calibration, tmp_path / "bd.onnx", batch="dynamic").path
    frame = np.full((64, 64, 3), 128, np.uint8)
    with OrtBackend(dynamic, device="cpu", threads=1) as backend:
        amap, score = backend.infer(frame)
    assert amap.shape == (64, 64) and np.isfinite(score)
