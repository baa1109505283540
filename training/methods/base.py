"""What every method's deployable model returns, and the metadata it carries."""
from __future__ import annotations

from typing import NamedTuple

import torch

from protospect import contract
from protospect.imageio import size_record


class ModelOutputs(NamedTuple):
    """Field names become the ONNX output names (docs/contracts.md section 6)."""

    anomaly_map: torch.Tensor  # (B, 1, S, S) float32, higher = more anomalous, already blurred
    image_score: torch.Tensor  # (B,) float32, max of anomaly_map; NG when >= calibration["threshold"]


# the core names the graph's outputs (export writes, the torch-free runtime reads them); the fields must be them
assert ModelOutputs._fields == contract.OUTPUTS, (ModelOutputs._fields, contract.OUTPUTS)


class EvalSplit(NamedTuple):
    """What a method's prepare_eval (bpgg) hands the evaluation loop: the settings, the defective images the
    method learns from (passed to ``fit(..., defects=, defect_names=)``: images never travel in
    config_overrides) and the test items left to score (never one it learned from)."""

    overrides: dict
    defects: list            # [(uint8 RGB image, uint8 mask), ...] at file resolution
    defect_names: list[str]  # one per defect, e.g. "broken_large/003.png"
    remaining: list          # the test items to score


def holdout_kwargs(fit, holdout_rgb=None) -> dict:
    """{"holdout": images} for a method whose fit chooses on held-out good images (pcsnet geometry=auto), else {}.
    ``takes_holdout(fit)`` says whether it does, before any image is read."""
    return {"holdout": list(holdout_rgb)} if holdout_rgb and takes_holdout(fit) else {}


def takes_holdout(fit) -> bool:
    import inspect  # noqa: PLC0415

    return "holdout" in inspect.signature(fit).parameters


def model_meta(method: str, preset: str, backbone_name: str, input_size: int | tuple[int, int], spec, config: dict,
               **extra) -> dict:
    """The meta every AnomalyModel carries (contracts section 4); ``spec`` is the backbone's BackboneSpec.
    ``input_size``: S for an S x S input, (H, W) otherwise (stored as [H, W])."""
    return {"method": method, "preset": preset, "backbone": backbone_name, "input_size": size_record(input_size),
            "mean": [float(v) for v in spec.mean], "std": [float(v) for v in spec.std], "config": config, **extra}
