"""FP32 ONNX -> INT8 Q/DQ ONNX for TensorRT's explicit quantization, calibrated on normal images.

onnxruntime's quantize_static in QDQ format with symmetric INT8 activations and per-channel
symmetric INT8 weights, biases left float (TensorRT imports no INT32 DequantizeLinear). The
distance/top-k path, the decoder's tail and the stride <= 4 layers stay float (calibration.exclusion);
a graph with INT8 decoder layers after the top-k (PCSNet's CAS) is calibrated on NSA pseudo
anomalies of the images too (calibration.augment.pseudo_anomalies). Results are cached
under the sha256 of (ONNX bytes, calibration frames, augmentation, every quantize_static argument
including the nodes kept float, protospect and onnxruntime versions).
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from protospect.contract import KEY_PRECISION
from protospect import __version__
from protospect._optional import require
from protospect.calibration.augment import MIN_FRAMES, AugmentConfig
from protospect.calibration.data_reader import Int8CalibrationReader, int8_calibration_frames
from protospect.calibration.exclusion import LEARNED_OPS, float_regions
from protospect.calibration.qdq_check import QDQReport, check_qdq
from protospect.errors import ArtifactError, ConfigError
from protospect.files import write_atomic
from protospect.metadata import input_hw_of_props, read_metadata, set_metadata

log = logging.getLogger(__name__)

OP_TYPES = ["Conv", "ConvTranspose", "Gemm", "MatMul", "Add"]
METHODS = ("minmax", "entropy", "percentile")
EXTRA_OPTIONS = {
    "ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False, "CalibTensorRangeSymmetric": True,
    # biases stay float, so no weight scale needs widening for an INT32 bias
    "QDQDisableWeightAdjustForInt32Bias": True,
    # Q/DQ on the inputs of learned layers only (TensorRT's recommended placement;
    # it fuses the next layer's input Q into this layer's output)
    "OpTypesToExcludeOutputQuantization": ["Conv", "ConvTranspose", "Gemm", "MatMul"],
}


@dataclass
class Int8Result:
    path: Path
    float_nodes: list[str]
    qdq: QDQReport
    n_frames: int
    cache_hit: bool
    with_anomalies: bool = False  # NSA pseudo-anomaly frames were part of the calibration set


def int8_from_onnx(onnx_path, out_path, images, *, augment: AugmentConfig | None = None, method: str = "minmax",
                   float_tail: int = 1, float_stem: int = 0, float_stride: int = 4,
                   cache_dir: str | Path | None = None) -> Int8Result:
    """Quantize ``onnx_path`` (protospect FP32 graph) to INT8 Q/DQ at ``out_path``, calibrated on ``images``.

    ``images``: paths or uint8 RGB arrays of normal parts (the artifact's shots by default).
    """
    require("onnxruntime.quantization", extra="runtime")
    if method not in METHODS:
        raise ConfigError(f"calibration method '{method}' not in {', '.join(METHODS)}")
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    model = onnx.load(str(onnx_path))
    props = read_metadata(model)
    if any(i.name == "bank" for i in model.graph.input):
        raise ConfigError(f"{onnx_path} takes the bank as an input; INT8 needs the bank inside: drop --bank-as-input")
    if props.get(KEY_PRECISION, "fp32") != "fp32":
        raise ConfigError(f"{onnx_path} is already {props[KEY_PRECISION]}; INT8 starts from the FP32 graph")
    augment = augment or AugmentConfig()
    regions = float_regions(model, float_tail=float_tail, float_stem=float_stem, float_stride=float_stride)
    # an INT8 decoder after the top-k also sees pseudo anomalies, so defect activations are in range
    with_anomalies = bool(regions.decoder_int8) and augment.pseudo_anomalies > 0
    frames = int8_calibration_frames(images, input_hw_of_props(props, onnx_path), augment, with_anomalies=with_anomalies)
    if len(frames) < MIN_FRAMES:
        log.warning("only %d calibration frames (< %d): activation ranges may be noisy; add normal images "
                    "with --int8-calib-images DIR or raise --int8-calib-augment", len(frames), MIN_FRAMES)
    key = _cache_key(onnx_path, frames, augment, quantize_settings(method, regions.all), (float_tail, float_stem, float_stride))
    cached = Path(cache_dir) / f"{key}.onnx" if cache_dir else None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    data = _cached_graph(cached) if cached is not None else None
    if data is not None:
        log.info("INT8 graph reused from cache %s", cached)
        write_atomic(out_path, data)
        return _finish(out_path, regions, len(frames), cache_hit=True, with_anomalies=with_anomalies)

    reader = Int8CalibrationReader(frames)
    with tempfile.TemporaryDirectory(prefix="protospect-int8-") as tmp:
        tmp_out, source = Path(tmp) / "int8.onnx", onnx_path
        if unshare_weights(model):  # one weight per layer, so a DQ never feeds a layer that stays float
            source = Path(tmp) / "fp32_unshared.onnx"
            onnx.save(model, str(source))
        quantize_qdq(source, tmp_out, reader, method, regions.all)
        quantized = onnx.load(str(tmp_out))
    set_metadata(quantized, {**props, KEY_PRECISION: "int8"})
    onnx.checker.check_model(quantized, full_check=True)
    data = quantized.SerializeToString()
    write_atomic(out_path, data)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cached, data)  # the graph first, then the digest that vouches for it
        write_atomic(_digest_path(cached), hashlib.sha256(data).hexdigest().encode())
    return _finish(out_path, regions, len(frames), cache_hit=False, with_anomalies=with_anomalies)


def unshare_weights(model: onnx.ModelProto) -> int:
    """Give every learned layer its own copy of a weight initializer that several layers read; returns how many
    copies were made. The exporter stores identical weights once (PCSNet's global branch is a second copy of the
    backbone), and the quantizer would put one DQ on the shared weight for a layer that stays float and one that
    does not. Node names and every other tensor are unchanged, so the float regions still apply."""
    inits = {t.name: t for t in model.graph.initializer}
    seen: dict[str, int] = {}
    copies = 0
    for node in model.graph.node:
        if node.op_type not in LEARNED_OPS:
            continue
        for j, name in enumerate(node.input):
            if name not in inits:
                continue
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:
                dup = copy.deepcopy(inits[name])
                dup.name = f"{name}__{node.name or j}_{seen[name]}"
                model.graph.initializer.append(dup)
                node.input[j] = dup.name
                copies += 1
    return copies


def _digest_path(cached: Path) -> Path:
    return cached.with_name(cached.name + ".sha256")


def _cached_graph(cached: Path) -> bytes | None:
    """The cached INT8 graph's bytes if it is whole (its sha256 matches the digest written after it),
    else None: a missing, truncated or foreign file is a miss and is rebuilt, never taken as a hit."""
    if not cached.is_file():
        return None
    try:
        data = cached.read_bytes()
        want = _digest_path(cached).read_text().strip()
    except OSError:
        want, data = "", b""
    if hashlib.sha256(data).hexdigest() != want:
        log.warning("INT8 cache entry %s is incomplete or has no digest: rebuilding it", cached)
        return None
    return data


def quantize_settings(method: str, nodes_to_exclude) -> dict:
    """Every quantize_static argument but the model, reader and cache path, as plain values: what
    quantize_qdq passes and what the INT8 cache key hashes, so the two cannot drift apart."""
    return {"quant_format": "QDQ", "op_types_to_quantize": OP_TYPES, "per_channel": True,
            "activation_type": "QInt8", "weight_type": "QInt8", "nodes_to_exclude": sorted(nodes_to_exclude),
            "calibrate_method": {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}[method],
            "extra_options": EXTRA_OPTIONS}


def quantize_qdq(onnx_path, out_path, reader, method: str, nodes_to_exclude, calibration_cache_path=None) -> None:
    """quantize_static with protospect's TensorRT settings (one place: the export and the
    sensitivity study, studies/int8_sensitivity.py, quantize with exactly these)."""
    q = require("onnxruntime.quantization", extra="runtime")
    s = quantize_settings(method, nodes_to_exclude)
    q.quantize_static(
        str(onnx_path), str(out_path), reader,
        quant_format=getattr(q.QuantFormat, s["quant_format"]), op_types_to_quantize=list(s["op_types_to_quantize"]),
        per_channel=s["per_channel"], activation_type=getattr(q.QuantType, s["activation_type"]),
        weight_type=getattr(q.QuantType, s["weight_type"]), nodes_to_exclude=s["nodes_to_exclude"],
        calibrate_method=getattr(q.CalibrationMethod, s["calibrate_method"]),
        calibration_cache_path=None if calibration_cache_path is None else str(calibration_cache_path),
        extra_options=copy.deepcopy(s["extra_options"]),  # ORT may add keys to it
    )


def _finish(out_path: Path, regions, n_frames: int, cache_hit: bool, with_anomalies: bool) -> Int8Result:
    report = check_qdq(onnx.load(str(out_path)), float_nodes=regions.all, strict_nodes=regions.distance)
    if not report.ok:
        raise ArtifactError(f"INT8 graph {out_path} has Q/DQ placement TensorRT will not take: " + "; ".join(report.problems[:5]))
    return Int8Result(out_path, regions.all, report, n_frames, cache_hit, with_anomalies)


def _cache_key(onnx_path: Path, frames, augment: AugmentConfig, quantize: dict, float_layers: tuple) -> str:
    """``quantize``: quantize_settings(), whose node list is what the exclusion rule chose for this graph,
    so a rule change is a new key even when the CLI settings are the same."""
    h = hashlib.sha256()
    h.update(onnx_path.read_bytes())
    for frame in frames:  # the frames after resize + augmentation: covers image list and preprocessing
        h.update(frame.tobytes())
    settings = {"augment": augment.as_dict(), "quantize": quantize, "float_layers": list(float_layers),
                "protospect": __version__, "onnxruntime": _ort_version()}
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
