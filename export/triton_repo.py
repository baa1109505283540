"""A Triton Inference Server model repository from an exported graph (issue 18): `export ART --triton-repo DIR`.

    DIR/<name>/config.pbtxt
    DIR/<name>/<version>/model.onnx        (+ model.py with --triton-backend python)

``onnxruntime_onnx`` (default) is for GPU servers; the ``python`` variant runs the same graph with ONNX
Runtime inside Triton's Python backend, for CPU servers (its model.py needs numpy and onnxruntime in
the server's Python). The graph has a dynamic batch (export --batch dynamic): max_batch_size is how many
frames Triton may stack, and dynamic_batching lets it form batches from concurrent requests. Every
protospect.* metadata key (threshold, map range, input size, metadata hash, ...) is copied into the
config's ``parameters`` so a client can judge without the graph (runtime/backends/triton.py does). The
tests parse every config into Triton's ModelConfig protobuf; the python variant is also loaded by a real
CPU tritonserver in tests/runtime/test_rt_triton.py. ``tensorrt_plan`` (write_plan_repo) copies an engine
from build-engine, whose static shapes mean max_batch_size 0 and no dynamic batching.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import onnx

from protospect.contract import PREFIX
from protospect.errors import ConfigError
from protospect.export.triton_model_py import MODEL_PY
from protospect.files import write_atomic

BACKENDS = ("onnxruntime", "python", "tensorrt_plan")
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
DTYPES = {onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.FLOAT: "TYPE_FP32",
          onnx.TensorProto.FLOAT16: "TYPE_FP16", onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.INT32: "TYPE_INT32"}
MAX_QUEUE_DELAY_US = 2000  # a batch waits at most 2 ms for more frames
EXECUTION_ENV_PATH = "EXECUTION_ENV_PATH"  # python backend: the environment its stub runs model.py in


def check_name(name: str, what: str = "--name") -> str:
    if not NAME_RE.match(name or ""):
        raise ConfigError(f"{what} {name!r} is not a Triton model name (letters, digits, '_', '.', '-')")
    return name


def check_version(version) -> int:
    text = str(version)
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"--version {version!r} is not a Triton model version (a whole number >= 1)")
    return int(text)


def model_paths(repo: Path, name: str, version: int) -> tuple[Path, Path]:
    """(the graph's path, config.pbtxt's path) inside the repository."""
    return repo / name / str(version) / "model.onnx", repo / name / "config.pbtxt"


def _tensors(values, where: str) -> list[tuple[str, str, list[int]]]:
    """(name, TYPE_*, per-item dims) of graph inputs/outputs whose first dim is the symbolic batch."""
    out = []
    for v in values:
        tt = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if not dims or dims[0] is not None:
            raise ConfigError(f"{where} '{v.name}' has no dynamic batch dimension (shape {dims}); export with --batch dynamic")
        if any(d is None for d in dims[1:]):
            raise ConfigError(f"{where} '{v.name}' has symbolic dims besides the batch ({dims}); Triton needs them fixed")
        if tt.elem_type not in DTYPES:
            raise ConfigError(f"{where} '{v.name}' has an ONNX element type {tt.elem_type} with no Triton type here")
        out.append((v.name, DTYPES[tt.elem_type], dims[1:]))
    return out


def _tensor_block(kind: str, tensors) -> str:
    items = []
    for name, dtype, dims in tensors:
        # a per-item scalar (image_score [batch]) is dims [1] reshaped to [] (Triton needs a non-empty dims)
        shape = f"dims: [ {', '.join(str(d) for d in dims)} ]" if dims else "dims: [ 1 ]\n    reshape: { shape: [ ] }"
        items.append(f"  {{\n    name: \"{name}\"\n    data_type: {dtype}\n    {shape}\n  }}")
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def config_text(graph: onnx.ModelProto, name: str, *, backend: str = "onnxruntime", max_batch_size: int = 8,
                instances: int = 1, python_env: str | None = None) -> str:
    """config.pbtxt (protobuf text format of Triton's ModelConfig) for ``graph``."""
    if backend not in BACKENDS[:2]:
        raise ConfigError(f"--triton-backend {backend!r}: choose one of {', '.join(BACKENDS[:2])} for an ONNX graph")
    if max_batch_size < 1:
        raise ConfigError(f"--triton-max-batch {max_batch_size} must be >= 1")
    inits = {i.name for i in graph.graph.initializer}
    inputs = _tensors([i for i in graph.graph.input if i.name not in inits], "graph input")
    outputs = _tensors(graph.graph.output, "graph output")
    head = (f'name: "{name}"\n' + ('platform: "onnxruntime_onnx"\n' if backend == "onnxruntime" else 'backend: "python"\n')
            + f"max_batch_size: {max_batch_size}\n")
    kind = "KIND_GPU" if backend == "onnxruntime" else "KIND_CPU"
    params = {p.key: p.value for p in graph.metadata_props if p.key.startswith(PREFIX)}
    if python_env is not None:  # the python backend's stub runs model.py in this venv/conda env (numpy<2, onnxruntime)
        if backend != "python":
            raise ConfigError("--triton-python-env is for --triton-backend python")
        params[EXECUTION_ENV_PATH] = python_env
    param_text = _param_text(params)
    return (head + _tensor_block("input", inputs) + _tensor_block("output", outputs)
            + f"dynamic_batching {{\n  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}\n}}\n"
            + f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]\n" + param_text)


def _param_text(params: dict) -> str:
    return "".join(f"parameters {{\n  key: {json.dumps(k)}\n  value: {{ string_value: {json.dumps(v)} }}\n}}\n"
                   for k, v in sorted(params.items()))


def write_repo(graph_path: Path, repo: Path, name: str, version: int, *, backend: str = "onnxruntime",
               max_batch_size: int = 8, instances: int = 1, python_env: str | None = None) -> list[Path]:
    """config.pbtxt (and model.py for the python backend) beside the graph already at model_paths(); returns them."""
    graph = onnx.load(str(graph_path))
    config = model_paths(repo, name, version)[1]
    written = [config]
    write_atomic(config, config_text(graph, name, backend=backend, max_batch_size=max_batch_size,
                                     instances=instances, python_env=python_env).encode())
    if backend == "python":
        model_py = graph_path.parent / "model.py"
        write_atomic(model_py, MODEL_PY.encode())
        written.append(model_py)
    return written


def plan_config_text(meta: dict, name: str, *, instances: int = 1) -> str:
    """config.pbtxt for a TensorRT engine from `protospect build-engine` (its sidecar's onnx_metadata).

    build-engine builds static shapes (no optimization profile), so the engine's batch is the graph's
    static batch (1 unless export --batch N): max_batch_size 0 (the batch is in dims), no dynamic_batching.
    """
    from protospect.contract import KEY_BATCH
    from protospect.metadata import input_hw_of_props

    h, w = input_hw_of_props(meta, "the engine's sidecar")
    batch = str(meta.get(KEY_BATCH, "1"))
    if not batch.isdigit():
        raise ConfigError(f"the engine's graph has batch {batch!r}; build-engine builds static shapes only")
    n = int(batch)
    tensors = _tensor_block("input", [("image", "TYPE_UINT8", [n, h, w, 3])]) + _tensor_block(
        "output", [("anomaly_map", "TYPE_FP32", [n, 1, h, w]), ("image_score", "TYPE_FP32", [n])])
    params = {k: str(v) for k, v in meta.items() if k.startswith(PREFIX)}
    return (f'name: "{name}"\nplatform: "tensorrt_plan"\nmax_batch_size: 0\n' + tensors
            + f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_GPU\n  }}\n]\n" + _param_text(params))


def write_plan_repo(engine: Path, repo: Path, name: str, version: int, *, instances: int = 1) -> list[Path]:
    """DIR/<name>/<version>/model.plan (a copy of ``engine``) and its config.pbtxt, from the engine's sidecar."""
    from protospect.contract import sidecar_path
    from protospect.errors import ArtifactError

    engine, side = Path(engine), sidecar_path(engine)
    if not engine.is_file() or not side.is_file():
        raise ArtifactError(f"--triton-engine {engine}: needs the engine and its sidecar {side.name} from "
                            "`protospect build-engine`")
    meta = json.loads(side.read_text()).get("onnx_metadata") or {}
    text = plan_config_text(meta, name, instances=instances)
    plan, config = repo / name / str(version) / "model.plan", model_paths(repo, name, version)[1]
    plan.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(plan, engine.read_bytes())
    write_atomic(config, text.encode())
    return [plan, config]
