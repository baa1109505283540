"""The split path: features graph -> prototype top-k outside the graph -> head graph.

Folder written by `protospect export ART --split --out DIR` (docs/contracts.md 6):
  features.onnx  image -> queries [1,N,D] (+ guide [1,G,h,w] for PCSNet)
  bank.npy       prototypes [M,D] float32
  head.onnx      knn_sqdist [1,N,k] (+ guide) -> anomaly_map, image_score
  features.engine / head.engine (+ .json sidecars) when built for a GPU

On a GPU (TensorRT + cuda-python + the compiled kernel) the three steps run on one CUDA stream
with no host copies in between (protospect.cpp_ext.launcher.ProtoTopK). On CPU the graphs run
in ONNX Runtime and the top-k is the numpy reference (protospect.cpp_ext.reference.knn_sqdist),
which is how the split path is tested without a GPU.
"""
from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path

import numpy as np

from protospect.contract import ANOMALY_MAP, GUIDE, IMAGE_SCORE, INPUT, KEY_BANK_SHA256, KNN_SQDIST, QUERIES, bank_sha256, sidecar_path
from protospect.errors import ArtifactError
from protospect.runtime import cuda
from protospect.runtime.backends.base import BackendBase, check_output_shapes
from protospect.runtime.backends.ort import open_session, session_info
from protospect.runtime.model_info import ModelInfo

log = logging.getLogger(__name__)

FILES_CPU = ("features.onnx", "bank.npy", "head.onnx")
FILES_GPU = ("features.engine", "bank.npy", "head.engine")


def is_split_dir(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "bank.npy").is_file() and (
        all((path / f).is_file() for f in FILES_CPU) or all((path / f).is_file() for f in FILES_GPU))


def load_bank(path: Path) -> np.ndarray:
    try:
        bank = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ArtifactError(f"cannot read prototype bank {path}: {err}") from err
    if bank.ndim != 2 or bank.shape[0] == 0:
        raise ArtifactError(f"prototype bank {path} has shape {bank.shape}; expected [M, D] with M > 0")
    return np.ascontiguousarray(bank, dtype=np.float32)


def check_pieces(features: ModelInfo, head: ModelInfo, bank: np.ndarray, folder: Path) -> None:
    """features, head and bank.npy are one export: the same artifact, and the bank both graphs were written with."""
    if features.artifact_sha256 != head.artifact_sha256:
        raise ArtifactError(f"{folder}: features and head graphs come from different artifacts (artifact_sha256 "
                            f"{features.artifact_sha256[:12]} vs {head.artifact_sha256[:12]}); "
                            "re-export the folder: protospect export ART --split --out DIR")
    hashes = {name: info.props.get(KEY_BANK_SHA256) for name, info in (("features", features), ("head", head))}
    if not any(hashes.values()):
        log.warning("%s: graphs carry no protospect.bank_sha256 (older export): bank.npy not checked", folder)
        return
    found = bank_sha256(bank)
    for name, want in hashes.items():
        if want is not None and want != found:
            raise ArtifactError(f"{folder}/bank.npy is not the bank the {name} graph was exported with (bank sha256 "
                                f"{found[:12]}, graph {want[:12]}); re-export the folder: protospect export ART --split --out DIR")


def _split_k(info: ModelInfo, bank: np.ndarray, where: str) -> int:
    if info.split_k is None:
        raise ArtifactError(f"{where} lacks protospect.split_k; it is not a split features graph (re-export with --split)")
    if not 1 <= info.split_k <= bank.shape[0]:
        raise ArtifactError(f"{where}: split_k={info.split_k} but the bank has {bank.shape[0]} prototypes")
    return info.split_k


class SplitOrtBackend(BackendBase):
    """CPU (or ORT-CUDA) split path: two ORT sessions and the numpy top-k reference."""

    name = "split-ort"

    def __init__(self, folder: str | Path, *, device: str = "auto", threads: int | None = None):
        super().__init__()
        self.folder = Path(folder)
        self.device = device
        self.threads = threads
        self._features = self._head = self._bank = None
        self._knn = None
        self._has_guide = False
        self.k = 0

    def activate(self) -> None:
        missing = [f for f in FILES_CPU if not (self.folder / f).is_file()]
        if missing:
            raise ArtifactError(f"split model folder {self.folder} lacks {', '.join(missing)} "
                                "(write it with `protospect export ART --split --out DIR`)")
        self._knn = importlib.import_module("protospect.cpp_ext.reference").knn_sqdist
        self._features = open_session(self.folder / "features.onnx", device=self.device, threads=self.threads)
        self._head = open_session(self.folder / "head.onnx", device=self.device, threads=self.threads)
        self.info = session_info(self._features, self.folder / "features.onnx")
        self._bank = load_bank(self.folder / "bank.npy")
        check_pieces(self.info, session_info(self._head, self.folder / "head.onnx"), self._bank, self.folder)
        self.k = _split_k(self.info, self._bank, str(self.folder / "features.onnx"))
        f_out = {o.name for o in self._features.get_outputs()}
        h_in = {i.name for i in self._head.get_inputs()}
        if QUERIES not in f_out or KNN_SQDIST not in h_in:
            raise ArtifactError(f"{self.folder}: features.onnx must output 'queries' and head.onnx take 'knn_sqdist' "
                                f"(have {sorted(f_out)} -> {sorted(h_in)})")
        self._has_guide = GUIDE in f_out and GUIDE in h_in
        check_output_shapes({o.name: o.shape for o in self._head.get_outputs()}, self.info.input_hw,
                            str(self.folder / "head.onnx"))
        log.info("split path on CPU: features.onnx -> numpy top-%d over %d prototypes -> head.onnx%s",
                 self.k, self._bank.shape[0], " (with guide)" if self._has_guide else "")

    def deactivate(self) -> None:
        self._features = self._head = self._bank = None

    def infer_impl(self, image_u8: np.ndarray):
        t0 = time.perf_counter()
        names = [QUERIES] + ([GUIDE] if self._has_guide else [])
        outs = dict(zip(names, self._features.run(names, {INPUT: image_u8[None]})))
        queries = outs[QUERIES][0]
        if queries.shape[-1] != self._bank.shape[1]:
            raise ArtifactError(f"{self.folder}: queries have D={queries.shape[-1]} but bank.npy has D={self._bank.shape[1]}")
        t1 = time.perf_counter()
        dist = np.asarray(self._knn(queries, self._bank, self.k), dtype=np.float32)[None]
        t2 = time.perf_counter()
        feed = {KNN_SQDIST: dist}
        if self._has_guide:
            feed[GUIDE] = outs[GUIDE]
        amap, score = self._head.run([ANOMALY_MAP, IMAGE_SCORE], feed)
        t3 = time.perf_counter()
        self.last_stage_ms = {"features": (t1 - t0) * 1e3, "topk": (t2 - t1) * 1e3, "head": (t3 - t2) * 1e3}
        return amap, score

    def describe(self) -> dict:
        return {**super().describe(), "model": str(self.folder), "k": self.k,
                "prototypes": None if self._bank is None else int(self._bank.shape[0])}


class SplitTrtBackend(BackendBase):
    """GPU split path: features engine -> ProtoTopK kernel -> head engine, one stream, device memory only."""

    name = "split-trt"

    def __init__(self, folder: str | Path):
        super().__init__()
        self.folder = Path(folder)
        self._features = self._head = self._topk = None
        self._stream = None
        self._pinned_in = self._pinned_map = self._pinned_score = None
        self._events = ()
        self.k = 0

    def activate(self) -> None:
        from protospect.runtime.backends.trt import TrtEngine, load_sidecar

        missing = [f for f in FILES_GPU if not (self.folder / f).is_file()]
        if missing:
            raise ArtifactError(f"split model folder {self.folder} lacks {', '.join(missing)} for the GPU path "
                                "(build them with `protospect build-engine DIR/features.onnx` and DIR/head.onnx)")
        launcher = importlib.import_module("protospect.cpp_ext.launcher")
        f_path, h_path = self.folder / "features.engine", self.folder / "head.engine"
        self.info = ModelInfo.from_metadata(load_sidecar(f_path)["onnx_metadata"], str(sidecar_path(f_path)))
        bank = load_bank(self.folder / "bank.npy")
        head_info = ModelInfo.from_metadata(load_sidecar(h_path)["onnx_metadata"], str(sidecar_path(h_path)))
        check_pieces(self.info, head_info, bank, self.folder)
        self.k = _split_k(self.info, bank, str(sidecar_path(f_path)))
        h, w = self.info.input_hw
        try:
            self._stream = cuda.Stream()
            self._features = TrtEngine(f_path, {INPUT: (1, h, w, 3)}, (QUERIES,), optional_outputs=(GUIDE,))
            self._features.load()
            q = self._features.plan[QUERIES]
            n, d = int(q.shape[1]), int(q.shape[2])
            if d != bank.shape[1]:
                raise ArtifactError(f"{f_path}: queries have D={d} but bank.npy has D={bank.shape[1]}")
            head_inputs = {KNN_SQDIST: (1, n, self.k)}
            if GUIDE in self._features.plan:
                head_inputs[GUIDE] = self._features.plan[GUIDE].shape
            self._head = TrtEngine(h_path, head_inputs, (ANOMALY_MAP, IMAGE_SCORE))
            self._head.load()
            check_output_shapes({n: self._head.plan[n].shape for n in (ANOMALY_MAP, IMAGE_SCORE)}, (h, w), str(h_path))
            if self._head.plan[KNN_SQDIST].dtype != np.float32:
                raise ArtifactError(f"{h_path}: input knn_sqdist must be float32 (the kernel writes float32); "
                                    "export the head with fp32 I/O (keep_io_types)")
            if GUIDE in head_inputs:  # the head reads the guide where the features engine wrote it
                self._head.bind(GUIDE, self._features.buffers[GUIDE].ptr)
            if q.dtype not in (np.float16, np.float32):
                raise ArtifactError(f"{f_path}: queries are {q.dtype}; the top-k kernel takes float16 or float32")
            # The kernel owns its device copy of the bank, in the queries' dtype.
            self._topk = launcher.ProtoTopK(np.ascontiguousarray(bank, dtype=q.dtype))
            self._n = n
            self._pinned_in = cuda.PinnedBuffer(self._features.plan[INPUT].nbytes)
            self._pinned_map = cuda.PinnedBuffer(self._head.plan[ANOMALY_MAP].nbytes)
            self._pinned_score = cuda.PinnedBuffer(self._head.plan[IMAGE_SCORE].nbytes)
            self._events = tuple(cuda.Event() for _ in range(4))
        except Exception:
            self.deactivate()
            raise
        log.info("split path on GPU: features.engine -> ProtoTopK k=%d over %d prototypes -> head.engine", self.k, bank.shape[0])

    def deactivate(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
        for event in self._events:
            event.destroy()
        for owner in (self._pinned_in, self._pinned_map, self._pinned_score, self._features, self._head):
            if owner is not None:
                owner.free()
        if self._topk is not None:
            self._topk.close()
        if self._stream is not None:
            self._stream.destroy()
        self._features = self._head = self._topk = self._stream = None
        self._pinned_in = self._pinned_map = self._pinned_score = None
        self._events = ()

    def infer_impl(self, image_u8: np.ndarray):
        f, h, stream = self._features, self._head, self._stream
        e0, e1, e2, e3 = self._events
        self._pinned_in.write(image_u8[None])
        stream.upload(f.buffers[INPUT], self._pinned_in, f.plan[INPUT].nbytes)
        e0.record(stream)
        f.enqueue(stream)
        e1.record(stream)
        self._topk.run(f.buffers[QUERIES].ptr, self._n, self.k, h.buffers[KNN_SQDIST].ptr, 0, stream.handle)
        e2.record(stream)
        h.enqueue(stream)
        e3.record(stream)
        stream.download(self._pinned_map, h.buffers[ANOMALY_MAP], h.plan[ANOMALY_MAP].nbytes)
        stream.download(self._pinned_score, h.buffers[IMAGE_SCORE], h.plan[IMAGE_SCORE].nbytes)
        stream.synchronize()
        ms = cuda.Event.elapsed_ms
        self.last_stage_ms = {"features": ms(e0, e1), "topk": ms(e1, e2), "head": ms(e2, e3)}
        self.last_device_ms = ms(e0, e3)
        amap = self._pinned_map.view(h.plan[ANOMALY_MAP].dtype, h.plan[ANOMALY_MAP].shape).astype(np.float32)
        score = self._pinned_score.view(h.plan[IMAGE_SCORE].dtype, h.plan[IMAGE_SCORE].shape).astype(np.float32)
        return amap, score
