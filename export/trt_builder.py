"""ONNX -> TensorRT engine + sidecar JSON, for TensorRT 10.3 (JetPack 6) and 11.x.

* Strongly typed network: precision comes from the ONNX (FP32 graph, FP16 graph, INT8 Q/DQ graph).
  10.x: `1 << STRONGLY_TYPED`; 11.x: the flag is deprecated and always on, so no flag is passed.
* No BuilderFlag precision flags, no calibrators (deprecated in 10.x, removed in 11).
* Timing cache read before and written after the build (valid only for the same GPU, CUDA,
  TensorRT version and flags: a mismatching or unreadable cache is refused, never silently ignored).
* Workspace memory pool limit when asked.
* Sidecar `<engine>.json` (docs/contracts.md section 7, schema in docs/export.md) that the
  runtime checks before it loads the engine, with the engine's sha256 to tie the two together.
`trt` and the GPU query are parameters so the logic is testable without TensorRT.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import onnx

from protospect import __version__
from protospect._optional import require
from protospect.errors import ArtifactError, ConfigError, EngineBuildError
from protospect.files import write_atomic
from protospect.contract import KEY_PRECISION, SIDECAR_REQUIRED, check_contract, sidecar_path, version_key
from protospect.metadata import read_metadata

log = logging.getLogger(__name__)

MIN_TRT = (10, 3)  # JetPack 6; older TensorRT lacks what the strongly typed Q/DQ path needs


@dataclass
class EngineBuild:
    engine: Path
    sidecar: Path
    timing_cache: Path | None
    sidecar_data: dict
    inputs: tuple[str, ...] = ()  # the graph's input names ("bank" too for a --bank-as-input graph)


def trt_version(trt) -> tuple[int, int]:
    """"10.3.0.30" -> (10, 3); a piece like "3rc1" counts its digits (contract.version_key)."""
    return version_key(trt.__version__, parts=2)


def network_flags(trt) -> int:
    """Creation flags for a strongly typed network on this TensorRT; EngineBuildError below 10.3."""
    version = trt_version(trt)
    if version < MIN_TRT:
        raise EngineBuildError(f"TensorRT {trt.__version__} is too old; protospect needs TensorRT >= 10.3")
    if version[0] >= 11:
        return 0  # STRONGLY_TYPED is deprecated and ignored: every network is strongly typed
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} has no strongly typed networks; protospect needs TensorRT >= 10.3")
    return 1 << int(flag)


def engine_from_onnx(onnx_path, out_path, *, timing_cache=None, workspace_mb: int | None = None,
                     trt=None, gpu=None, verbose: bool = False) -> EngineBuild:
    """Build ``out_path`` from a protospect ONNX graph; writes ``out_path``.json next to it."""
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not onnx_path.is_file():
        raise ArtifactError(f"ONNX file not found: {onnx_path}")
    if workspace_mb is not None and workspace_mb <= 0:
        raise ConfigError(f"--workspace {workspace_mb} must be a positive number of MiB")
    graph = onnx.load(str(onnx_path), load_external_data=False)
    metadata = read_metadata(graph)
    check_contract(metadata, onnx_path)
    trt = trt or require("tensorrt", extra="trt")
    flags = network_flags(trt)
    if gpu is None:
        from protospect.gpu import current_gpu

        gpu = current_gpu()

    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise EngineBuildError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: " + "; ".join(_parser_errors(parser)))
    config = builder.create_builder_config()
    if workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    cache_path = Path(timing_cache) if timing_cache else None
    if cache_path is not None:
        previous = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = config.create_timing_cache(previous)
        if cache is None:  # TensorRT returns None, not an error, for bytes it cannot read; the file is kept
            raise EngineBuildError(f"timing cache {cache_path} cannot be read by TensorRT {trt.__version__} "
                                   "(corrupt or from another version); delete it or pass another --timing-cache")
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            raise EngineBuildError(f"timing cache {cache_path} was made on another GPU/CUDA/TensorRT; "
                                   "delete it or pass another --timing-cache")
    log.info("building %s (precision %s from the graph, TensorRT %s, %s)", out_path,
             metadata.get(KEY_PRECISION, "?"), trt.__version__, gpu.name)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} failed to build {onnx_path} (see its log above); "
                               "try a larger --workspace or the FP32 graph")
    engine_bytes = bytes(serialized)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out_path, engine_bytes)
    if cache_path is not None:
        write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    sidecar = {
        "tensorrt_version": str(trt.__version__),
        "gpu_name": gpu.name,
        "compute_capability": gpu.compute_capability,
        "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "engine_sha256": hashlib.sha256(engine_bytes).hexdigest(),
        "onnx_metadata": metadata,
        "onnx_file": onnx_path.name,
        "strongly_typed": True,
        "workspace_mb": workspace_mb,
        "protospect_version": __version__,
    }
    assert all(k in sidecar for k in SIDECAR_REQUIRED)  # what every reader refuses an engine without
    sidecar_file = sidecar_path(out_path)
    write_atomic(sidecar_file, (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode())
    return EngineBuild(out_path, sidecar_file, cache_path, sidecar, tuple(i.name for i in graph.graph.input))


def _parser_errors(parser) -> list[str]:
    """Every ONNX parser error with the node it points at (name, op type, index) when TensorRT tells."""
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        where = []
        for label, attr in (("node", "node_name"), ("op", "node_operator"), ("index", "node")):
            value = getattr(err, attr, None)
            value = value() if callable(value) else value
            if value not in (None, "", -1):
                where.append(f"{label} {value}")
        out.append(f"[{', '.join(where) or 'graph'}] {err.desc()}")
    return out or ["no error detail from the parser"]


