"""The kernel's constants for the Python side, read from ``proto_topk_config.h`` (their one source).

The launcher, the torch op and the tests take their numbers from here instead of copying them; the header's
``constexpr int kName = expression;`` lines are parsed (integer literals, earlier names, + - * / ( )), so a
change to the header reaches every host. ``tests/cpp_ext/test_topk_compile.py`` checks these values against
the compiled module's ``proto_topk_config`` array and ``proto_topk.h``.

    from protospect.cpp_ext.kernel_config import CONFIG
    CONFIG["kMaxK"]   # 256
"""
from __future__ import annotations

import ast
import operator
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG_HEADER = HERE / "proto_topk_config.h"
# Every file of the kernel's device code: the NVRTC program (proto_topk.cuh) and the headers it includes,
# handed to NVRTC by name and hashed into the launcher's cubin cache key.
KERNEL_HEADERS = ("proto_topk.cuh", "proto_topk_config.h", "proto_topk_tiles.cuh", "proto_topk_select.cuh",
                  "proto_topk_partial.cuh", "proto_topk_merge.cuh", "proto_topk_compare.cuh")

_LINE = re.compile(r"^\s*constexpr\s+int\s+(k\w+)\s*=\s*([^;]+);", re.M)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
        ast.Div: operator.floordiv}


def _eval(node: ast.AST, names: dict[str, int]) -> int:
    if isinstance(node, ast.Expression):
        return _eval(node.body, names)
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left, names), _eval(node.right, names))
    raise ValueError(f"cannot evaluate {ast.dump(node)}")


def parse_config(text: str) -> dict[str, int]:
    """``{name: value}`` of every ``constexpr int`` in the header text (C integer literals, hex included)."""
    names: dict[str, int] = {}
    for name, expr in _LINE.findall(text):
        expr = re.sub(r"\b(0[xX][0-9a-fA-F]+|\d+)[uU]?\b", lambda m: str(int(m.group(1), 0)), expr.strip())
        names[name] = _eval(ast.parse(expr, mode="eval"), names)
    return names


CONFIG: dict[str, int] = parse_config(CONFIG_HEADER.read_text())


def cand_cap(k: int) -> int:
    """Candidate slots per query and split (cand_cap in proto_topk_config.h)."""
    return min(2 * k + CONFIG["kCandSlack"], CONFIG["kMaxCandCap"])
