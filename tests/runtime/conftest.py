"""Runtime test fixtures: a small "difference from reference" ONNX model and replay media, no torch."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fixture_models import (build_diff_model, calibrate_threshold, decode_video, reference_rgb, render_part,
                            write_video)

SIZE = 64
FRAME = (160, 120)   # W x H of the replayed frames: not square, so preprocess really resizes
DEFECT_FRAMES = {3, 11, 12, 20}
N_FRAMES = 24


@dataclass
class Fixture:
    model: Path
    threshold: float
    video: Path
    defect_frames: set
    n_frames: int
    ref: np.ndarray


@pytest.fixture(scope="session")
def fx(tmp_path_factory) -> Fixture:
    root = tmp_path_factory.mktemp("rt_fixture")
    ref = reference_rgb(SIZE, FRAME)
    rng = np.random.default_rng(7)
    provisional = build_diff_model(root / "model.onnx", ref, threshold=1.0)
    # Threshold from good frames only, through the same MJPG codec as the replay video.
    good = decode_video(write_video(root / "good.avi", [render_part(rng, FRAME) for _ in range(10)]))
    threshold = calibrate_threshold(provisional, good)
    model = build_diff_model(root / "model.onnx", ref, threshold=threshold, map_range=(0.0, 0.3))
    frames = [render_part(rng, FRAME, defect=i in DEFECT_FRAMES) for i in range(N_FRAMES)]
    video = write_video(root / "parts.avi", frames)
    return Fixture(model, threshold, video, set(DEFECT_FRAMES), N_FRAMES, ref)
