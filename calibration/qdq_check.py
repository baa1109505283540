"""Check a Q/DQ graph against what TensorRT's explicit quantization expects, without TensorRT.

* every quantized Conv/Gemm/MatMul reads its activation through a QuantizeLinear -> DequantizeLinear
  pair and its weight through a DequantizeLinear of an INT8 constant (per-channel: axis 0 for Conv);
* every scale is a positive float32 constant and every zero point an INT8 zero (symmetric);
* no INT32 (bias) DequantizeLinear, which TensorRT cannot import;
* float learned layers and the distance/top-k nodes read no DequantizeLinear output (other float
  nodes, e.g. a ReLU between two INT8 decoder convs, may read one: TensorRT then runs them on the
  dequantized value, which is what the graph says).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from protospect.onnx_graph import GraphIndex

QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class QDQReport:
    quantized: list[str] = field(default_factory=list)   # learned layers with Q/DQ on activation and weight
    float_layers: list[str] = field(default_factory=list)  # learned layers left in float
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_qdq(model: onnx.ModelProto, float_nodes=(), strict_nodes=(), per_channel: bool = True) -> QDQReport:
    """``float_nodes``: every node meant to stay float; ``strict_nodes``: those of them that must not
    even read a dequantized tensor (the distance/top-k path). Float learned layers are always strict."""
    index = GraphIndex(model)
    float_nodes = set(float_nodes)
    strict_nodes = set(strict_nodes)
    report = QDQReport()
    for node in index.nodes:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            _check_scale_zero_point(index, node, report)
        if node.op_type == "QuantizeLinear":
            bad = [c.name for c in index.consumers.get(node.output[0], []) if c.op_type != "DequantizeLinear"]
            if bad:
                report.problems.append(f"QuantizeLinear {node.name} feeds {bad}, not a DequantizeLinear")
    for node in index.nodes:
        from_dq = [i for i in node.input if i and _op(index, i) == "DequantizeLinear"]
        if node.name in float_nodes:
            if from_dq and (node.name in strict_nodes or node.op_type in QUANTIZED_OPS):
                report.problems.append(f"{node.op_type} {node.name} should stay float but reads Q/DQ tensor(s) {from_dq}")
            if node.op_type in QUANTIZED_OPS:
                report.float_layers.append(node.name)
            continue
        if node.op_type not in QUANTIZED_OPS:
            continue
        act, weight = node.input[0], node.input[1]
        if index.is_constant(act) or not _is_qdq_pair(index, act):
            report.problems.append(f"{node.op_type} {node.name}: activation input {act} has no Q->DQ pair")
            continue
        if not _is_weight_dq(index, weight):
            report.problems.append(f"{node.op_type} {node.name}: weight {weight} is not a DequantizeLinear of an INT8 constant")
            continue
        if per_channel and node.op_type == "Conv":
            dq = index.producer[weight]
            scale = index.constant(dq.input[1])
            w = index.constant(dq.input[0])
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            if scale.size != w.shape[0] or (scale.size > 1 and axis != 0):
                report.problems.append(f"Conv {node.name}: weight scale has {scale.size} values on axis {axis}; "
                                       f"per-channel needs {w.shape[0]} on axis 0")
        report.quantized.append(node.name)
    return report


def _op(index: GraphIndex, tensor: str) -> str | None:
    node = index.producer.get(tensor)
    return node.op_type if node is not None else None


def _is_qdq_pair(index: GraphIndex, tensor: str) -> bool:
    dq = index.producer.get(tensor)
    return dq is not None and dq.op_type == "DequantizeLinear" and _op(index, dq.input[0]) == "QuantizeLinear"


def _is_weight_dq(index: GraphIndex, tensor: str) -> bool:
    dq = index.producer.get(tensor)
    if dq is None or dq.op_type != "DequantizeLinear":
        return False
    src = dq.input[0]
    value = index.constant(src)
    if value is not None:
        return value.dtype == np.int8
    q = index.producer.get(src)  # Q of a float constant is also accepted by TensorRT
    return q is not None and q.op_type == "QuantizeLinear" and index.is_constant(q.input[0])


def _check_scale_zero_point(index: GraphIndex, node: onnx.NodeProto, report: QDQReport) -> None:
    scale = index.constant(node.input[1])
    if scale is None or scale.dtype != np.float32 or not np.all(scale > 0):
        report.problems.append(f"{node.op_type} {node.name}: scale must be a positive float32 constant")
    zp = index.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if zp is not None and (zp.dtype != np.int8 or np.any(zp != 0)):
        report.problems.append(f"{node.op_type} {node.name}: zero point must be INT8 zeros (symmetric), got {zp.dtype}")
    if node.op_type == "DequantizeLinear":
        src = index.constant(node.input[0])
        if src is not None and src.dtype == np.int32:
            report.problems.append(f"DequantizeLinear {node.name}: INT32 (bias) dequantization is not imported by TensorRT")
