"""Artifact / AnomalyModel -> ONNX graph(s) per docs/contracts.md section 6.

`onnx_from_model` traces a deploy wrapper (uint8 NHWC frame in, anomaly_map + image_score out),
folds constants, writes the protospect.* metadata and checks the graph (onnx.checker full check,
strict shape inference, static shapes, TopK k within TensorRT's limit). `split_from_model` writes
features.onnx + bank.npy + head.onnx for the runtime's custom-kernel path.
"""
from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from protospect.errors import ArtifactError, ConfigError
from protospect.export.deploy import FeaturesGraph, FullGraph, FullGraphBankInput, HeadGraph
from protospect.onnx_graph import ensure_node_names, topk_values
from protospect.contract import (ANOMALY_MAP, BANK, DYNAMIC_BATCH, GUIDE, IMAGE_SCORE, INPUT, KNN_SQDIST, QUERIES,
                                 bank_sha256, parse_batch)
from protospect.metadata import build_metadata, input_hw_of, set_metadata
from protospect.files import write_atomic

log = logging.getLogger(__name__)

TRT_MAX_TOPK = 3840  # TensorRT's ITopKLayer limit (NvInfer.h, 10.3 and later)
MIN_OPSET = 17


@dataclass
class ExportedGraph:
    path: Path
    metadata: dict[str, str]


def onnx_from_artifact(art_dir: str | Path, out_path: str | Path, *, bank_as_input: bool = False,
                       opset: int = MIN_OPSET, batch: int | str = 1) -> ExportedGraph:
    """Load an artifact (hashes checked) and export its model as one ONNX graph."""
    model, manifest, sha = _load(art_dir)
    return onnx_from_model(model, model.meta, model.calibration, out_path, artifact_sha256=sha,
                           bank_as_input=bank_as_input, opset=opset, batch=batch)


def _load(art_dir):
    from protospect.training.artifact import artifact_sha256, load_artifact

    model, manifest = load_artifact(art_dir)
    return model.eval(), manifest, artifact_sha256(art_dir)


def onnx_from_model(model: nn.Module, meta: dict, calibration: dict, out_path: str | Path, *,
                    artifact_sha256: str = "", bank_as_input: bool = False, opset: int = MIN_OPSET,
                    batch: int | str = 1) -> ExportedGraph:
    """Export ``model`` (contract section 4) as the default graph: `image` uint8 [1,H,W,3] -> anomaly_map, image_score.

    (H, W) is the model's input size (meta["input_size"]: S for S x S, or [H, W]); the map is [1,1,H,W].

    With ``bank_as_input`` the prototype bank becomes a graph input `bank` [M, D] (same M and D as
    exported: shapes stay static) so a new bank can be swapped in without re-export. ``batch`` N > 1
    gives a static batch dimension N, "dynamic" a symbolic one named "batch" (issue 18); either is
    recorded as protospect.batch. Batch 1 (the default) writes the graph exactly as before.
    """
    _check_opset(opset)
    try:
        batch = parse_batch(batch)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if batch != 1 and bank_as_input:
        raise ConfigError("--batch with --bank-as-input is not supported; export one of them")
    h, w = input_hw_of(meta)
    model = model.eval()
    trace_n = 2 if batch == DYNAMIC_BATCH else batch  # trace dynamic with 2 so no dimension is folded to 1
    image = torch.zeros(trace_n, h, w, 3, dtype=torch.uint8)
    if bank_as_input:
        buffer_name, bank = find_bank_buffer(model)
        wrapper = FullGraphBankInput(model, meta["mean"], meta["std"], buffer_name)
        args, input_names = (image, bank.detach().clone()), [INPUT, BANK]
    else:
        wrapper = FullGraph(model, meta["mean"], meta["std"])
        args, input_names = (image,), [INPUT]
    dynamic_axes = ({INPUT: {0: "batch"}, ANOMALY_MAP: {0: "batch"}, IMAGE_SCORE: {0: "batch"}}
                    if batch == DYNAMIC_BATCH else None)
    onnx_model = _trace(wrapper.eval(), args, input_names, [ANOMALY_MAP, IMAGE_SCORE], opset, dynamic_axes)
    _check_topk(onnx_model, where="the full graph")
    if batch == DYNAMIC_BATCH:
        _declare_output_shapes(onnx_model, {ANOMALY_MAP: ["batch", 1, h, w], IMAGE_SCORE: ["batch"]})
    props = build_metadata(meta, calibration, artifact_sha256=artifact_sha256, graph="full",
                           extra=None if batch == 1 else {"batch": str(batch)})
    set_metadata(onnx_model, props)
    n = None if batch == DYNAMIC_BATCH else batch
    expected = {INPUT: [n, h, w, 3], ANOMALY_MAP: [n, 1, h, w], IMAGE_SCORE: [n]}
    if bank_as_input:
        expected["bank"] = list(bank.shape)
    return ExportedGraph(save_checked(onnx_model, out_path, expected), props)


def split_from_model(model: nn.Module, meta: dict, calibration: dict, out_dir: str | Path, *,
                     artifact_sha256: str = "", opset: int = MIN_OPSET) -> dict[str, Path]:
    """Write features.onnx, bank.npy and head.onnx (contract section 6) from ``model.split()``."""
    _check_opset(opset)
    if not hasattr(model, "split"):
        raise ConfigError(f"method '{meta.get('method')}' has no split(); export the full graph (drop --split)")
    h, w = input_hw_of(meta)
    features, bank, k, head = model.split()
    k = int(k)
    bank = bank.detach().float().cpu()
    if bank.ndim != 2 or k < 1 or k > bank.shape[0]:
        raise ArtifactError(f"split() returned bank {tuple(bank.shape)} and k={k}; need a (M, D) bank and 1 <= k <= M")
    if k > TRT_MAX_TOPK:
        raise ConfigError(f"top-k k={k} exceeds TensorRT's TopK limit of {TRT_MAX_TOPK}; lower k in the method config")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image = torch.zeros(1, h, w, 3, dtype=torch.uint8)
    feats_wrapper = FeaturesGraph(features.eval(), meta["mean"], meta["std"]).eval()
    with torch.no_grad():
        feats_out = feats_wrapper(image)
    has_guide = isinstance(feats_out, (tuple, list))
    queries = feats_out[0] if has_guide else feats_out
    guide = feats_out[1] if has_guide else None
    n, d = queries.shape[1], queries.shape[2]
    if d != bank.shape[1]:
        raise ArtifactError(f"split(): queries have D={d} but the bank has D={bank.shape[1]}")
    grid = list(guide.shape[-2:]) if guide is not None else _grid_of(n, h, w)
    feat_names = [QUERIES, GUIDE] if has_guide else [QUERIES]
    feats_onnx = _trace(feats_wrapper, (image,), [INPUT], feat_names, opset)
    bank_hash = bank_sha256(bank.numpy())  # the runtime refuses a bank.npy that is not this one
    extra = {"split_k": str(k), "grid": grid, "bank_sha256": bank_hash}
    set_metadata(feats_onnx, build_metadata(meta, calibration, artifact_sha256=artifact_sha256, graph="features", extra=extra))
    expected = {INPUT: [1, h, w, 3], QUERIES: [1, n, d]}
    if has_guide:
        expected[GUIDE] = list(guide.shape)
    paths = {"features": save_checked(feats_onnx, out_dir / "features.onnx", expected)}

    knn = torch.zeros(1, n, k)
    head_args = (knn, guide) if has_guide else (knn,)
    head_names = [KNN_SQDIST, GUIDE] if has_guide else [KNN_SQDIST]
    head_onnx = _trace(HeadGraph(head.eval()).eval(), head_args, head_names, [ANOMALY_MAP, IMAGE_SCORE], opset)
    head_extra = {"split_k": str(k), "bank_sha256": bank_hash}
    set_metadata(head_onnx, build_metadata(meta, calibration, artifact_sha256=artifact_sha256, graph="head", extra=head_extra))
    expected = {KNN_SQDIST: [1, n, k], ANOMALY_MAP: [1, 1, h, w], IMAGE_SCORE: [1]}
    paths["head"] = save_checked(head_onnx, out_dir / "head.onnx", expected)
    paths["bank"] = out_dir / "bank.npy"
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(bank.numpy(), dtype=np.float32))
    _write_whole(paths["bank"], buf.getvalue())
    return paths


def find_bank_buffer(model: nn.Module) -> tuple[str, torch.Tensor]:
    """The qualified name and value of the model buffer that holds the prototype bank.

    Prefers the buffer equal to ``model.split()``'s bank; falls back to a single buffer named '*bank'.
    """
    buffers = dict(model.named_buffers())
    if hasattr(model, "split"):
        bank = model.split()[1]
        same = [n for n, b in buffers.items() if b.shape == bank.shape and torch.equal(b, bank.to(b.dtype))]
        if len(same) == 1:
            return same[0], buffers[same[0]]
    named = [n for n in buffers if n.split(".")[-1] in ("bank", "memory_bank", "prototypes")]
    if len(named) == 1:
        return named[0], buffers[named[0]]
    raise ConfigError("--bank-as-input: cannot tell which buffer of this model is the prototype bank "
                      f"(buffers: {', '.join(buffers) or 'none'}); export without --bank-as-input")


def _declare_output_shapes(model: onnx.ModelProto, shapes: dict[str, list]) -> None:
    """Write the outputs' known dims into the graph: with a symbolic batch the tracer leaves the resized
    map's H and W symbolic too, though they are the input size for every batch."""
    for out in model.graph.output:
        if out.name in shapes:
            dims = out.type.tensor_type.shape.dim
            del dims[:]
            for value in shapes[out.name]:
                dim = dims.add()
                if isinstance(value, str):
                    dim.dim_param = value
                else:
                    dim.dim_value = value


def _grid_of(n: int, h: int, w: int) -> list[int]:
    """The query grid [gh, gw] of a split graph without a guide: a square grid for a square input. A non-square
    input's grid is not guessed from N (several factorisations fit): its features must output the guide."""
    if h != w:
        raise ArtifactError(f"split(): the input is {h}x{w} (not square) and no guide gives the shape of the "
                            f"{n}-position query grid; export the full graph (drop --split)")
    side = int(round(n ** 0.5))
    if side * side != n:
        raise ArtifactError(f"split(): {n} query positions do not form a square grid and no guide gives its shape")
    return [side, side]


def _check_opset(opset: int) -> None:
    if opset < MIN_OPSET:
        raise ConfigError(f"--opset {opset} is too old; use {MIN_OPSET} or newer")


def _check_topk(model: onnx.ModelProto, where: str) -> None:
    for name, k in topk_values(model):
        if k is None:
            raise ArtifactError(f"TopK node {name} in {where} has a non-constant k; TensorRT needs a constant k")
        if k > TRT_MAX_TOPK:
            raise ConfigError(f"TopK node {name} in {where} takes k={k}, over TensorRT's limit of {TRT_MAX_TOPK}; "
                              "lower k in the method config")


def _trace(module: nn.Module, args: tuple, input_names: list[str], output_names: list[str], opset: int,
           dynamic_axes: dict | None = None) -> onnx.ModelProto:
    """TorchScript-based export (fast, stable names, plain ops) followed by constant folding."""
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer warnings
        torch.onnx.export(module, args, buf, dynamo=False, opset_version=opset, input_names=input_names,
                          output_names=output_names, do_constant_folding=True,
                          dynamic_axes=dynamic_axes)
    model = onnx.load_from_string(buf.getvalue())
    for name in ("onnx_ir", "onnxscript"):  # the optimizer logs every folded initializer/rewrite at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        import onnxscript.optimizer

        # Folds Shape/Constant/Identity chains the tracer leaves, and constant work on the bank
        # (|b|^2, b^T): the default size limits (8 K in, 256 K out) would leave |b|^2 computed per frame
        # from a second full copy of the bank.
        model = onnxscript.optimizer.optimize(model, input_size_limit=1 << 26, output_size_limit=1 << 26)
    except ImportError:
        log.info("onnxscript not installed: graph left unoptimised (pip install onnxscript)")
    return ensure_node_names(model)


def save_checked(model: onnx.ModelProto, out_path: str | Path, expected: dict[str, list[int]]) -> Path:
    """Full onnx.checker, strict shape inference, the expected static I/O shapes; then save."""
    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ArtifactError(f"exported graph failed the ONNX check: {err}") from err
    io_shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
                 for v in list(inferred.graph.input) + list(inferred.graph.output)}
    for name, shape in expected.items():
        if io_shapes.get(name) != list(shape):
            raise ArtifactError(f"exported graph tensor '{name}' has shape {io_shapes.get(name)}, expected {shape}")
    return save_onnx(model, out_path)


def save_onnx(model: onnx.ModelProto, out_path: str | Path) -> Path:
    """Serialise ``model`` and write it through write_atomic (temp file, then rename): a full disk or a
    read-only target raises OSError naming ``out_path`` and leaves any previous file there as it was."""
    return _write_whole(Path(out_path), model.SerializeToString())


def _write_whole(out_path: Path, data: bytes) -> Path:
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out_path, data)
    except OSError as err:
        raise OSError(err.errno, f"cannot write {out_path} ({err.strerror}); nothing was replaced", None) from err
    return out_path
