"""A DeepStream Gst-nvinfer configuration for an exported graph (issue 18 item 6): `export ... --deepstream DIR`.

    DIR/config_infer_primary_protospect.txt

Written from the graph itself (input size and batch, precision, normalisation, threshold). NOT verified
here (no DeepStream on these machines): docs/runtime.md [fleet] says how the anomaly map and the image
score are read from NvDsInferTensorMeta and what is unverified. The one known gap: nvinfer hands the engine
float planar pixels, y = net-scale-factor * (x - offsets[c]); protospect's graph takes uint8 NHWC and
normalises inside ((x/255 - mean) / std). The config therefore passes pixels unchanged (scale 1, offsets 0,
NHWC order) and writes the equivalent nvinfer normalisation as a comment (expressible only when std is the
same for the three channels: nvinfer has one scale factor).
"""
from __future__ import annotations

import json
from pathlib import Path

import onnx

from protospect.contract import KEY_BATCH, KEY_MEAN, KEY_PRECISION, KEY_STD, KEY_THRESHOLD
from protospect.files import write_atomic
from protospect.metadata import input_hw_of_props

CONFIG_NAME = "config_infer_primary_protospect.txt"
NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}  # nvinfer's network-mode


def nvinfer_normalisation(mean, std) -> tuple[float, list[float]] | None:
    """(net-scale-factor, offsets) with y = scale * (x - offset) == (x/255 - mean) / std, or None when the
    three std differ (nvinfer has a single scale factor)."""
    if max(std) - min(std) > 1e-9 * max(abs(s) for s in std):
        return None
    return 1.0 / (255.0 * float(std[0])), [255.0 * float(m) for m in mean]


def config_text(graph_path: Path, engine_path: Path | None = None) -> str:
    graph = onnx.load(str(graph_path), load_external_data=False)
    props = {p.key: p.value for p in graph.metadata_props}
    h, w = input_hw_of_props(props, str(graph_path))
    batch = props.get(KEY_BATCH, "1")
    precision = props.get(KEY_PRECISION, "fp32")
    mean, std = json.loads(props[KEY_MEAN]), json.loads(props[KEY_STD])
    norm = nvinfer_normalisation(mean, std)
    norm_line = (f"# nvinfer equivalent of the graph's normalisation (for a float-input graph): net-scale-factor="
                 f"{norm[0]:.9g}  offsets={';'.join(f'{o:.6g}' for o in norm[1])}" if norm else
                 f"# the graph's normalisation (std {std}) is not expressible in nvinfer: one net-scale-factor only")
    engine = engine_path or graph_path.with_suffix(".engine")
    return "\n".join([
        f"# protospect: nvinfer config for {graph_path.name} (export --deepstream). UNVERIFIED: no DeepStream here.",
        f"# Read anomaly_map [1,{h},{w}] and image_score [1] from NvDsInferTensorMeta (output-tensor-meta=1): docs/runtime.md.",
        f"# Judge: NG when image_score >= {props.get(KEY_THRESHOLD, '?')} (protospect.threshold of this graph).",
        "# The graph takes uint8 NHWC RGB and normalises inside; nvinfer feeds float: pixels pass unchanged below.",
        norm_line,
        "[property]",
        "gpu-id=0",
        f"onnx-file={graph_path.resolve()}",
        f"model-engine-file={engine.resolve()}",
        f"batch-size={1 if batch == 'dynamic' else int(batch)}",
        f"network-mode={NETWORK_MODE.get(precision, 0)}",
        "network-type=100",
        "output-tensor-meta=1",
        "process-mode=1",
        "gie-unique-id=1",
        "model-color-format=0",
        "network-input-order=1",
        f"infer-dims={h};{w};3",
        "maintain-aspect-ratio=0",
        "net-scale-factor=1.0",
        "offsets=0;0;0",
        "output-blob-names=anomaly_map;image_score",
        "",
    ])


def write_config(graph_path: Path, out_dir: Path, engine_path: Path | None = None) -> Path:
    path = Path(out_dir) / CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, config_text(Path(graph_path), engine_path).encode())
    return path
