"""Small read-only helpers over an onnx.GraphProto: producers, consumers, constants, reachability."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper


class GraphIndex:
    """Who produces and who consumes each tensor of a graph, and which tensors are constants."""

    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.nodes = list(model.graph.node)
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.graph_inputs = {i.name for i in model.graph.input}

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant-node output, else None."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None

    def is_constant(self, name: str) -> bool:
        return self.constant(name) is not None

    def descendants_of_tensors(self, tensors) -> set[str]:
        """Names of every node that (transitively) consumes one of ``tensors``."""
        seen: set[str] = set()
        stack = list(tensors)
        while stack:
            for node in self.consumers.get(stack.pop(), []):
                if node.name not in seen:
                    seen.add(node.name)
                    stack.extend(node.output)
        return seen

    def ancestors_of_tensors(self, tensors) -> set[str]:
        """Names of every node that (transitively) produces one of ``tensors``."""
        seen: set[str] = set()
        stack = list(tensors)
        while stack:
            node = self.producer.get(stack.pop())
            if node is not None and node.name not in seen:
                seen.add(node.name)
                stack.extend(i for i in node.input if i)
        return seen


def ensure_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed node a unique name (exclusion lists and error messages refer to names)."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
    return model


def topk_values(model: onnx.ModelProto) -> list[tuple[str, int | None]]:
    """(node name, k) for every TopK node; k is None when it is not a constant."""
    index = GraphIndex(model)
    out = []
    for node in index.nodes:
        if node.op_type == "TopK":
            k = index.constant(node.input[1]) if len(node.input) > 1 else None
            out.append((node.name, None if k is None else int(np.asarray(k).reshape(-1)[0])))
    return out


def topological_sort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Reorder graph nodes so every input is produced before use (converters append Casts at the end)."""
    graph = model.graph
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        progressed = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                progressed.append(node)
        if len(progressed) == len(pending):
            missing = sorted({i for n in pending for i in n.input if i not in available})[:5]
            raise ValueError(f"graph has a cycle or dangling inputs: {missing}")
        pending = progressed
    nodes = [onnx.NodeProto() for _ in ordered]
    for dst, src in zip(nodes, ordered):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(nodes)
    return model
