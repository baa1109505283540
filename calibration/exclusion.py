"""Which nodes INT8 must leave in float: the prototype distance + top-k path and the decoder's tail.

Found from the graph's structure, never from node names:
* distance region: for every TopK, the nodes between the query tensor (the image-derived input of
  the MatMul/Gemm whose other input is the bank) and the TopK, TopK included, and the bank-side
  nodes they read (|b|^2, b^T when the exporter left them unfolded). Squared distances
  are differences of large numbers; INT8 there destroys the ranking the top-k depends on.
* tail: every node after the TopKs except learned layers (Conv/Gemm/MatMul with constant
  multi-channel weights) that still have at least ``float_tail`` learned layers after them. So the
  last ``float_tail`` decoder layers, the upsample, blur and max stay float (pixel maps degrade
  first under PTQ, anomalib #2298). PatchCore has no learned layer after its TopK: all float.
* stem: the first ``float_stem`` learned layers from the input (default 0), and every learned
  layer and residual Add before the TopKs whose output is at stride <= ``float_stride`` (default 4: output width
  >= W/4, W the width of the first learned layer's input, square or not; shapes from ONNX shape inference).
  Why stride <= 4: those are the backbone's most INT8-sensitive layers (figures: docs/export.md, docs/results/
  pcsnet_precision.md, from studies/int8_sensitivity.py without test images). The rule reads strides, not
  layer counts, so it means the same for a backbone with more or fewer layers per stage.
A graph without TopK (the split features graph) has only its stem excluded.

``FloatRegions.decoder_int8`` lists the learned layers after the TopKs that stay INT8 (PCSNet's CAS
decoder, none for PatchCore): their activation ranges must be calibrated on frames that contain
defects too (calibration.augment.pseudo_anomalies), or defect activations saturate.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from protospect.errors import ArtifactError
from protospect.onnx_graph import GraphIndex

LEARNED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


@dataclass
class FloatRegions:
    distance: set[str] = field(default_factory=set)
    tail: set[str] = field(default_factory=set)
    stem: set[str] = field(default_factory=set)
    decoder_int8: set[str] = field(default_factory=set)
    # fixed linear resamplers: a constant matrix on the LEFT of a MatMul (PCSNet's global branch resizes the frame
    # to 256 px that way). The quantizer would take the constant for the weight and leave the activation, now on
    # the right, without the Q/DQ pair TensorRT needs; they are cheap and exact in float.
    resample: set[str] = field(default_factory=set)

    @property
    def all(self) -> list[str]:
        return sorted(self.distance | self.tail | self.stem | self.resample)


def float_regions(model: onnx.ModelProto, float_tail: int = 1, float_stem: int = 0, float_stride: int = 0) -> FloatRegions:
    index = GraphIndex(model)
    bank_inputs = {"bank"}
    image_inputs = [i for i in index.graph_inputs if i not in bank_inputs and i not in index.initializers]
    image_derived = _tensors_downstream(index, image_inputs)
    regions = FloatRegions()
    by_name = {n.name: n for n in index.nodes}
    topks = [n for n in index.nodes if n.op_type == "TopK"]
    for topk in topks:
        above = index.ancestors_of_tensors([topk.input[0]])
        queries = _query_tensors(index, above, image_derived)
        if not queries:
            raise ArtifactError(f"TopK node {topk.name} has no MatMul/Gemm against a bank above it; "
                                "cannot tell which nodes compute distances (pass nodes_to_exclude explicitly)")
        region = (index.descendants_of_tensors(queries) & above) | {topk.name}
        # plus the bank side those nodes read: |b|^2 and b^T when not folded into initializers
        feeding = index.ancestors_of_tensors([i for name in region for i in by_name[name].input if i])
        region |= {name for name in feeding if not set(by_name[name].output) & image_derived}
        regions.distance |= region
    after = index.descendants_of_tensors([o for t in topks for o in t.output])
    learned = {n.name for n in index.nodes if n.name in after and _is_learned(index, n)}
    keep_int8 = {name for name in learned
                 if len(index.descendants_of_tensors(by_name[name].output) & learned) >= float_tail}
    regions.tail = after - keep_int8
    regions.decoder_int8 = keep_int8
    front = [n for n in index.nodes if n.name not in after and n.name not in regions.distance and _is_learned(index, n)]
    regions.resample = {n.name for n in index.nodes
                        if n.op_type == "MatMul" and n.input[0] in index.initializers and n.input[1] in image_derived}
    if float_stem > 0:
        front_names = {n.name for n in front}
        regions.stem = {n.name for n in front
                        if len(index.ancestors_of_tensors([i for i in n.input if i]) & front_names) < float_stem}
    if float_stride > 0 and front:
        # residual Adds too: quantize_static puts Q/DQ on Add inputs, which would feed the float layers
        adds = [n for n in index.nodes if n.op_type == "Add" and n.name not in after and n.name not in regions.distance]
        regions.stem |= _fine_layers(model, front, adds, float_stride)
    return regions


def _fine_layers(model: onnx.ModelProto, front: list[onnx.NodeProto], adds: list[onnx.NodeProto],
                 float_stride: int) -> set[str]:
    """Learned layers and Adds (NCHW outputs) whose output width is >= side / float_stride, where side
    is the width of the first learned layer's input (the normalised image; the stride is read along W, the
    same along H, so a non-square input gives the same layers)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    first_in = shapes.get(front[0].input[0], [])
    if len(first_in) != 4 or not first_in[-1]:
        raise ArtifactError(f"cannot tell the input side of {front[0].name} (no static NCHW shape); "
                            "pass float_stride=0 and list float nodes explicitly")
    side = first_in[-1]
    fine = set()
    for node in front + adds:
        out = shapes.get(node.output[0], [])
        if len(out) == 4 and out[-1] and out[-1] * float_stride >= side:
            fine.add(node.name)
    return fine


def _tensors_downstream(index: GraphIndex, tensors) -> set[str]:
    names = set(tensors)
    stack = list(tensors)
    while stack:
        for node in index.consumers.get(stack.pop(), []):
            for out in node.output:
                if out not in names:
                    names.add(out)
                    stack.append(out)
    return names


def _query_tensors(index: GraphIndex, above: set[str], image_derived: set[str]) -> list[str]:
    """Image-derived inputs of MatMul/Gemm nodes (above a TopK) whose other input is not image-derived."""
    queries = []
    for node in index.nodes:
        if node.name in above and node.op_type in ("MatMul", "Gemm"):
            a, b = node.input[0], node.input[1]
            if (a in image_derived) != (b in image_derived):
                q = a if a in image_derived else b
                producer = index.producer.get(q)
                # the export's one-GEMM distance (proto_topk._knn_ranked) multiplies [q, 1, |q|^2]: the
                # queries are q, so |q|^2 and the Concat fall inside the float distance region too
                if producer is not None and producer.op_type == "Concat" and producer.input[0] in image_derived:
                    q = producer.input[0]
                queries.append(q)
    return queries


def _is_learned(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """A learned layer: a constant weight that is not a single-channel filter (a 1->1 blur is not;
    a depthwise conv, C x 1 x k x k, is)."""
    if node.op_type not in LEARNED_OPS or len(node.input) < 2:
        return False
    weight = index.constant(node.input[1])
    if weight is None or weight.ndim < 2:
        return False
    if node.op_type in ("Conv", "ConvTranspose"):
        return weight.shape[0] * weight.shape[1] > 1
    return True
