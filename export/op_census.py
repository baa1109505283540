"""Op census of an ONNX graph: counts per op type, parameters, file size (printed after every export)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from protospect.contract import KEY_GRAPH, KEY_PRECISION
from protospect.metadata import read_metadata


@dataclass
class Census:
    path: str
    file_bytes: int
    ops: dict[str, int]
    params: int                      # elements in initializers (weights, bank, constants)
    params_by_dtype: dict[str, int]  # elements per initializer data type
    inputs: list[str]
    outputs: list[str]
    metadata: dict[str, str] = field(default_factory=dict)

    def format(self) -> str:
        ops = ", ".join(f"{op} {n}" for op, n in sorted(self.ops.items(), key=lambda kv: (-kv[1], kv[0])))
        dtypes = ", ".join(f"{k} {v:,}" for k, v in sorted(self.params_by_dtype.items()))
        return "\n".join([
            f"{self.path}: {self.file_bytes / 2**20:.2f} MiB, {sum(self.ops.values())} nodes, {self.params:,} parameters ({dtypes})",
            f"  inputs:  {'; '.join(self.inputs)}",
            f"  outputs: {'; '.join(self.outputs)}",
            f"  ops:     {ops}",
            f"  precision={self.metadata.get(KEY_PRECISION, '?')} graph={self.metadata.get(KEY_GRAPH, '?')}",
        ])


def _value_info(v: onnx.ValueInfoProto) -> str:
    t = v.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
    return f"{v.name} {TensorProto.DataType.Name(t.elem_type).lower()} {dims}"


def census(path: str | Path) -> Census:
    path = Path(path)
    model = onnx.load(str(path))
    by_dtype: Counter[str] = Counter()
    for init in model.graph.initializer:
        by_dtype[TensorProto.DataType.Name(init.data_type).lower()] += int(np.prod(init.dims, dtype=np.int64))
    return Census(
        path=str(path), file_bytes=path.stat().st_size,
        ops=dict(Counter(n.op_type for n in model.graph.node)),
        params=sum(by_dtype.values()), params_by_dtype=dict(by_dtype),
        inputs=[_value_info(i) for i in model.graph.input], outputs=[_value_info(o) for o in model.graph.output],
        metadata=read_metadata(model),
    )
