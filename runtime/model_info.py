"""What the runtime knows about a model, read from ONNX metadata_props or the engine sidecar.

Nothing is guessed from pixel values or file names: input size, threshold and heatmap colour
range come from the ``protospect.*`` properties that export writes (docs/contracts.md 6-7).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from protospect.contract import PREFIX, check_contract
from protospect.errors import ArtifactError
from protospect.imageio import parse_hw, size_text

REQUIRED = ("input_size", "threshold", "map_range")


@dataclass(frozen=True)
class ModelInfo:
    input_hw: tuple[int, int]            # (H, W): the model takes H x W x 3 uint8 RGB (H == W for square models)
    threshold: float                     # NG when image_score >= threshold
    map_range: tuple[float, float]       # anomaly map values mapped to the colour scale's ends
    method: str = "unknown"
    preset: str = "unknown"
    precision: str = "fp32"
    graph: str = "full"
    artifact_sha256: str = ""
    split_k: int | None = None           # split graphs only
    grid: tuple[int, int] | None = None  # split graphs only
    threshold_source: str = "model (set on the registration shots at export)"  # or a line calibration
    review_threshold: float | None = None  # REVIEW when review_threshold <= score < threshold (conformal files)
    operating_point: object = field(default=None, compare=False)  # protospect.conformal.OperatingPoint
    props: dict = field(default_factory=dict, compare=False)

    @classmethod
    def from_metadata(cls, props: dict, where: str) -> "ModelInfo":
        """A graph's or engine sidecar's metadata: contract version and layout checked, then parsed.

        What every backend calls; from_props alone parses without the contract check.
        """
        check_contract(props, where)
        return cls.from_props(props, where)

    @classmethod
    def from_props(cls, props: dict, where: str) -> "ModelInfo":
        """Parse protospect.* metadata (keys with or without the prefix); ArtifactError naming ``where``."""
        p = _unprefixed(props)
        missing = [k for k in REQUIRED if k not in p]
        if missing:
            raise ArtifactError(
                f"{where} lacks metadata {', '.join(PREFIX + k for k in missing)}; "
                "it was not written by `protospect export` (re-export the artifact)")
        try:
            input_hw = _input_hw(p["input_size"])
            lo, hi = (float(v) for v in _json(p["map_range"]))
            if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
                raise ValueError(f"map_range {p['map_range']} is not a finite [lo, hi] with hi > lo")
            threshold = float(p["threshold"])
            if not math.isfinite(threshold):  # score >= nan is False: every part would pass as OK
                raise ValueError(f"threshold {p['threshold']} is not a finite number")
            grid = p.get("grid")
            return cls(
                input_hw=input_hw,
                threshold=threshold,
                map_range=(lo, hi),
                method=str(p.get("method", "unknown")),
                preset=str(p.get("preset", "unknown")),
                precision=str(p.get("precision", "fp32")),
                graph=str(p.get("graph", "full")),
                artifact_sha256=str(p.get("artifact_sha256", "")),
                split_k=int(p["split_k"]) if "split_k" in p else None,
                grid=tuple(int(g) for g in _json(grid)) if grid is not None else None,
                props={PREFIX + k: str(v) for k, v in p.items()},
            )
        except (ValueError, TypeError) as err:
            raise ArtifactError(f"{where} has malformed protospect metadata: {err}") from err

    def describe(self) -> str:
        review = "" if self.review_threshold is None else f" review={self.review_threshold:.6g}"
        return (f"{self.method}/{self.preset} {self.precision} {size_text(self.input_hw)}px "
                f"threshold={self.threshold:.6g}{review} ({self.threshold_source}) graph={self.graph}")


def _input_hw(value) -> tuple[int, int]:
    """protospect.input_size "[H, W]" (export writes this) or a bare S -> (H, W); ValueError unless two positive ints."""
    hw = parse_hw(_json(value))
    if hw is None:
        raise ValueError(f"input_size {value} is not [H, W] with two positive integers")
    return hw


def _unprefixed(props: dict) -> dict:
    return {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in props.items()}


def _json(value):
    return json.loads(value) if isinstance(value, str) else value
