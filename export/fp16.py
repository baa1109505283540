"""FP32 protospect graph -> FP16 graph with the same uint8 input and float32 outputs.

The feature extractor (and any learned decoder layers) run in float16, the precision a strongly
typed TensorRT network then takes from the graph. The prototype distance + top-k path stays float32:
the GEMM form |q|^2 + |b|^2 - 2 q.b subtracts large numbers and fp16 rounding there reorders near
neighbours; the bank stays float32 for the same reason. The blur, upsample and max after the
top-k also stay float32 (cheap, and they define the reported map).

A small converter of our own rather than onnxruntime.transformers.float16: that one rounds tensors
flowing between two float32-kept nodes through float16 (Cast fp16 -> Cast fp32) and stores
float32-kept initializers (the bank) as float16, which loses exactly what we keep float32 for.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from protospect.contract import KEY_PRECISION
from protospect.calibration.exclusion import float_regions
from protospect.errors import ConfigError
from protospect.onnx_graph import topological_sort
from protospect.metadata import read_metadata, set_metadata

FP16_MAX = float(np.finfo(np.float16).max)
# inputs that ONNX requires to be float32 whatever the data type (Resize roi/scales)
FLOAT32_ONLY_INPUTS = {"Resize": {1, 2}}


def fp16_from_onnx(onnx_path, out_path, *, keep_head_fp32: bool = True) -> tuple[Path, list[str]]:
    """Write the FP16 graph; returns (path, names of the nodes kept in float32)."""
    model = onnx.load(str(onnx_path))
    props = read_metadata(model)
    if props.get(KEY_PRECISION, "fp32") != "fp32":
        raise ConfigError(f"{onnx_path} is {props[KEY_PRECISION]}; FP16 starts from the FP32 graph")
    keep = float_regions(model, float_tail=0).all if keep_head_fp32 else []
    # The uint8 input's Cast stays uint8 -> float32: the conversion TensorRT documents for UINT8 inputs.
    uint8_inputs = {i.name for i in model.graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.UINT8}
    keep += [n.name for n in model.graph.node if n.op_type == "Cast" and set(n.input) & uint8_inputs]
    converted = convert_to_fp16(model, keep_fp32=set(keep))
    set_metadata(converted, {**props, KEY_PRECISION: "fp16"})
    onnx.checker.check_model(converted, full_check=True)
    from protospect.export.onnx_export import save_onnx  # temp + rename: a good previous file is never truncated

    return save_onnx(converted, out_path), keep


def convert_to_fp16(model: onnx.ModelProto, keep_fp32: set[str]) -> onnx.ModelProto:
    """Float32 tensors of nodes not in ``keep_fp32`` become float16; Casts go on region borders only."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    elem = {v.name: v.type.tensor_type.elem_type for v in list(graph.input) + list(graph.value_info) + list(graph.output)}
    inits = {t.name: t for t in graph.initializer}
    elem.update({name: t.data_type for name, t in inits.items()})
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    # Constant nodes follow their consumers: float16 unless every consumer stays float32.
    half = {n.name for n in graph.node if n.name not in keep_fp32}
    for node in graph.node:
        if node.op_type == "Constant" and all(c.name in keep_fp32 for c in consumers.get(node.output[0], [])):
            half.discard(node.name)
    producer_half = {o: (n.name in half) for n in graph.node for o in n.output}
    new_inits: list[TensorProto] = []
    casts: list[onnx.NodeProto] = []
    made: dict[tuple[str, int], str] = {}

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in made:
            made[key] = f"{name}__to_{'fp16' if to == TensorProto.FLOAT16 else 'fp32'}"
            casts.append(helper.make_node("Cast", [name], [made[key]], to=to, name=made[key] + "_cast"))
        return made[key]

    def half_init(name: str) -> str:
        key = (name, -1)
        if key not in made:
            made[key] = f"{name}__fp16"
            value = np.clip(numpy_helper.to_array(inits[name]), -FP16_MAX, FP16_MAX).astype(np.float16)
            new_inits.append(numpy_helper.from_array(value, made[key]))
        return made[key]

    for node in graph.node:
        is_half = node.name in half
        for pos, name in enumerate(node.input):
            if not name or elem.get(name) != TensorProto.FLOAT:
                continue
            if is_half and pos in FLOAT32_ONLY_INPUTS.get(node.op_type, ()):
                continue
            src_half = producer_half.get(name, False)  # graph inputs and initializers are float32
            if is_half and not src_half:
                node.input[pos] = half_init(name) if name in inits else cast(name, TensorProto.FLOAT16)
            elif not is_half and src_half:
                node.input[pos] = cast(name, TensorProto.FLOAT)
        if is_half:
            _retype_attributes(node)
    for out in graph.output:
        if producer_half.get(out.name, False) and elem.get(out.name) == TensorProto.FLOAT:
            inner = out.name + "__fp16"
            for node in graph.node:
                node.output[:] = [inner if o == out.name else o for o in node.output]
                node.input[:] = [inner if i == out.name else i for i in node.input]
            casts.append(helper.make_node("Cast", [inner], [out.name], to=TensorProto.FLOAT, name=out.name + "_to_fp32"))
    graph.node.extend(casts)
    graph.initializer.extend(new_inits)
    used = {i for n in graph.node for i in n.input}
    kept_inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    del graph.value_info[:]
    return topological_sort(inferred)


def _retype_attributes(node: onnx.NodeProto) -> None:
    """Float32 in attributes of a node that now computes in float16 (Cast targets, Constant values)."""
    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
            attr.i = TensorProto.FLOAT16
        elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
            value = np.clip(numpy_helper.to_array(attr.t), -FP16_MAX, FP16_MAX).astype(np.float16)
            attr.t.CopyFrom(numpy_helper.from_array(value, attr.t.name))
