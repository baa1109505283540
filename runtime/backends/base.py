"""The one interface every backend offers, and the checks they share.

    with backend:                      # loads the model, allocates buffers (constructors do nothing)
        amap, score = backend.infer(img)   # img: uint8 H x W x 3 RGB -> (H x W float32, float)
    backend.describe()                 # dict for logs and the JSON-lines records

``last_device_ms`` is the GPU-only time of the last infer() where the backend can measure it
(TensorRT with CUDA events), else None. ``last_stage_ms`` splits infer() further where useful
(the split path: features / topk / head).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from protospect.contract import ANOMALY_MAP, IMAGE_SCORE
from protospect.errors import ArtifactError, ConfigError
from protospect.imageio import canonical_size, size_text
from protospect.runtime.model_info import ModelInfo

BANK_INPUT_HINT = ("it takes the prototype bank as input 'bank' (exported with --bank-as-input), which protospect "
                   "does not feed; re-export without --bank-as-input, or feed 'bank' from your own code")


def check_output_shapes(shapes: dict, hw: tuple[int, int], where: str) -> None:
    """anomaly_map [1,1,H,W] and image_score [1] (contract 6), checked at load so a wrong graph fails
    here and not with a reshape error on the first frame. Dynamic dims (not a non-negative int) pass."""
    h, w = hw
    for name, want in ((ANOMALY_MAP, (1, 1, h, w)), (IMAGE_SCORE, (1,))):
        got = shapes.get(name)
        if got is None:
            continue
        if len(got) != len(want) or any(isinstance(d, int) and d >= 0 and d != x for d, x in zip(got, want)):
            raise ArtifactError(f"{where}: output '{name}' has shape {list(got)} but its metadata (input size "
                                f"{size_text(hw)}) says {list(want)}; re-export it with `protospect export`")


@runtime_checkable
class Backend(Protocol):
    name: str
    info: ModelInfo | None
    last_device_ms: float | None
    last_stage_ms: dict

    def __enter__(self) -> "Backend": ...

    def __exit__(self, *exc) -> None: ...

    def infer(self, image_u8: np.ndarray) -> tuple[np.ndarray, float]: ...

    def describe(self) -> dict: ...


class BackendBase:
    """Shared plumbing: activation state, the input check, describe()."""

    name = "base"

    def __init__(self) -> None:
        self.info: ModelInfo | None = None
        self.last_device_ms: float | None = None
        self.last_stage_ms: dict = {}
        self._depth = 0  # open `with backend:` blocks: the outermost one opens and closes it

    @property
    def _active(self) -> bool:
        return self._depth > 0

    def __enter__(self):
        # Re-entrant: an inner `with` (Pipeline.run inside serve's) neither reloads nor tears down a
        # backend that an outer block opened; whoever opens it closes it.
        if self._depth == 0:
            self.activate()
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0:
            self.deactivate()

    def activate(self) -> None:
        raise NotImplementedError

    def deactivate(self) -> None:
        raise NotImplementedError

    def infer(self, image_u8: np.ndarray) -> tuple[np.ndarray, float]:
        if not self._active:
            raise RuntimeError(f"{self.name} backend used outside `with backend:`")
        h, w = self.info.input_hw
        if image_u8.dtype != np.uint8 or image_u8.shape != (h, w, 3):
            raise ConfigError(f"{self.name} backend expects uint8 {h}x{w}x3 RGB (H x W x 3), got {image_u8.dtype} "
                              f"{image_u8.shape} (frames go through runtime.preprocess first)")
        amap, score = self.infer_impl(np.ascontiguousarray(image_u8))
        return amap.reshape(h, w), float(np.asarray(score).reshape(-1)[0])

    def infer_impl(self, image_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def describe(self) -> dict:
        d = {"backend": self.name}
        if self.info is not None:
            d.update(method=self.info.method, precision=self.info.precision, input_size=canonical_size(self.info.input_hw),
                     threshold=self.info.threshold, threshold_source=self.info.threshold_source)
            if self.info.review_threshold is not None:
                d["review_threshold"] = self.info.review_threshold
            op = self.info.operating_point
            if op is not None:
                d["operating_point"] = {k: v for k, v in op.to_dict().items() if k != "scores"}
        return d
