"""Rooms without cycles (issue 19 item 5): every import between the rooms goes an allowed direction.

The rooms are the import packages protospect.training, .export, .calibration, .runtime and .cpp_ext over
the core (protospect/, import name ``protospect`` itself). Every import of every module is read with ast,
module level and function level alike (and ``importlib.import_module("protospect....")`` with a literal
name), so a lazy import inside a function counts as much as one at the top. Allowed directions:

    every room  -> core
    export      -> training     (the artifact, the model to trace, the parity check's data and metrics)
    export      -> calibration  (INT8 Q/DQ and the FP16 float-region rule)
    calibration -> training     (decided: the INT8 calibration frames include NSA pseudo anomalies from
                                 training/synthesis.py, the very synthesis the model was trained with, so
                                 the quantisation ranges cover what a defect produces; a copy in the core
                                 would be a second implementation to keep equal)
    training    -> cpp_ext      (the fused top-k torch op)
    runtime     -> cpp_ext      (the split path's launcher and its numpy reference)
    cpp_ext     -> core only;  runtime -> core (+ cpp_ext) only, never torch-side rooms
    core        -> no room (protospect/cli.py names the command modules as strings: the dispatcher sits
                   above every room and is not an import edge)

One exception: training/register.py and training/cli_register.py are the ``protospect register``
orchestrator. They drive the whole product (train, export + INT8, score through the runtime backend,
set the threshold with the runtime's calibrate), so they may import runtime, export and calibration. In
the room graph they are their own node ``register`` (-> training and the others), which keeps the graph
acyclic: nothing imports the orchestrator.

The test fails on any edge outside this set and on any cycle in the room graph.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("training", "export", "calibration", "runtime", "cpp_ext")
CORE = "core"
REGISTER = "register"
ORCHESTRATOR = {"training/register.py", "training/cli_register.py"}
DISPATCHER = {"protospect/cli.py"}

ALLOWED = {
    CORE: set(),
    "cpp_ext": {CORE},
    "runtime": {CORE, "cpp_ext"},
    "training": {CORE, "cpp_ext"},
    "calibration": {CORE, "training"},
    "export": {CORE, "training", "calibration"},
    REGISTER: {CORE, "training", "export", "calibration", "runtime", "cpp_ext"},
}


def _modules():
    for folder in ("protospect", *ROOMS):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "__pycache__" not in path.parts:
                yield path


def _node_of(rel: str) -> str:
    if rel in ORCHESTRATOR:
        return REGISTER
    top = rel.split("/")[0]
    return CORE if top == "protospect" else top


def _room_of_module(name: str) -> str | None:
    """The room (or core) an absolute module name belongs to; None for third-party modules."""
    parts = name.split(".")
    if parts[0] != "protospect":
        return None
    if len(parts) > 1 and parts[1] in ROOMS:
        if ".".join(parts[1:3]) in ("training.register", "training.cli_register"):
            return REGISTER
        return parts[1]
    return CORE


def _package_of(path: Path) -> list[str]:
    rel = path.relative_to(ROOT)
    parts = list(rel.parent.parts)
    return parts if parts[0] == "protospect" else ["protospect", *parts]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in ``path``, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(path)[: len(_package_of(path)) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((node.lineno, module))
            # `from protospect import training` names a room as the imported thing
            if module == "protospect":
                out += [(node.lineno, f"protospect.{a.name}") for a in node.names if a.name in ROOMS]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value))
    return out


def room_edges() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    for path in _modules():
        rel = path.relative_to(ROOT).as_posix()
        if rel in DISPATCHER:
            continue
        src = _node_of(rel)
        for line, module in imported_modules(path):
            dst = _room_of_module(module)
            if dst is None or dst == src:
                continue
            edges.setdefault((src, dst), []).append(f"{rel}:{line} imports {module}")
    return edges


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_every_import_between_rooms_goes_an_allowed_direction():
    edges = room_edges()
    bad = [f"{src} -> {dst}: " + "; ".join(where[:3]) for (src, dst), where in sorted(edges.items())
           if dst not in ALLOWED[src]]
    assert not bad, "imports outside the allowed room directions (see tests/test_rooms.py):\n" + "\n".join(bad)


def test_room_graph_has_no_cycle():
    graph: dict[str, set[str]] = {}
    for src, dst in room_edges():
        graph.setdefault(src, set()).add(dst)
    assert _cycle(graph) is None, f"import cycle between rooms: {' -> '.join(_cycle(graph))}"


def test_the_allowed_set_itself_is_acyclic():
    assert _cycle(ALLOWED) is None


def test_the_scan_sees_function_level_and_relative_imports(tmp_path):
    # the checker must not go blind: register's lazy runtime imports and the runtime's import_module of
    # the launcher are real edges it reports
    edges = room_edges()
    assert any("training/register.py" in w for w in edges.get((REGISTER, "runtime"), ()))
    assert ("runtime", "cpp_ext") in edges
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


def test_every_command_module_is_a_cli_module_of_its_room():
    # the command table names modules as strings; each is a room's cli_*.py (issue 19 item 9: soak was runtime/soak.py)
    from protospect.cli import COMMANDS

    for name, (module, _, _) in COMMANDS.items():
        parts = module.split(".")
        if parts[1] not in ROOMS:  # a core command (demo-data)
            continue
        assert parts[-1].startswith("cli_"), f"{name}: {module}"
        assert (ROOT / parts[1] / (parts[-1] + ".py")).is_file(), module
