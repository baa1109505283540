"""The embedded demo data: procedurally generated machined flanges with planted defects.

MVTec images can never ship, so the README's main command runs on these. numpy + OpenCV only
(the torch-free runtime tests use it too). Everything is drawn from the numpy Generator passed in,
so a seed reproduces every image and mask bit for bit.

A part is a turned steel flange seen from above on a dark belt: outer rim with chamfer, raised
hub, centre bore and a bolt circle, with concentric turning marks, the bow-tie highlight of a
turned face, a drop shadow, a lighting gradient and sensor noise. Defects (exact pixel masks):
    scratch  thin bright or dark curved line on the face
    dent     dark elliptical blob with a shaded (lit) flank
    missing  a bite out of the rim, or a bolt hole that was never drilled
    stain    rust or oil coloured contamination with an irregular outline
"""
from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from protospect.errors import ConfigError, DataError


DEFECT_TYPES = ("scratch", "dent", "missing", "stain")
CATEGORY = "flange"
_FIXED_SEED = 20240607  # texture and pose of jitter=False parts
_MARKER = "README.txt"  # written into every generated set; lets --out be regenerated safely
_N_HOLES = 6


@dataclass(frozen=True)
class _Pose:
    cx: float
    cy: float
    radius: float  # outer rim radius in pixels
    angle: float  # bolt circle rotation, radians
    light: float  # direction the light travels (lamp -> scene, image plane), radians
    gradient: float  # lighting gradient strength across the image
    tint: tuple[float, float, float]


@dataclass
class _Part:
    """A clean rendering and the geometry that defects need."""

    image: np.ndarray  # float32 HxWx3, 0..255, before sensor noise
    face: np.ndarray  # float32 HxWx3: the metal as if it had no bolt holes (for an undrilled hole)
    background: np.ndarray  # float32 HxWx3: belt + shadow (for a missing chunk)
    metal: np.ndarray  # bool HxW: solid metal, away from edges (where face defects may go)
    disc: np.ndarray  # float32 HxW coverage of the outer disc
    holes: list[tuple[float, float, float]]  # bolt holes (x, y, r)
    pose: _Pose


def _pose(rng: np.random.Generator, size: int, jitter: bool) -> _Pose:
    # Plain Python floats: a numpy float64 scalar would promote every float32 image op to float64.
    if not jitter:
        return _Pose(size / 2, size / 2, 0.40 * size, 0.0, float(np.deg2rad(-60)), 0.25, (1.0, 0.99, 0.96))
    shift = 0.03 * size
    return _Pose(cx=size / 2 + float(rng.uniform(-shift, shift)), cy=size / 2 + float(rng.uniform(-shift, shift)),
                 radius=0.40 * size * float(rng.uniform(0.98, 1.02)), angle=float(rng.uniform(0, 2 * np.pi / _N_HOLES)),
                 light=float(np.deg2rad(-60 + rng.uniform(-12, 12))), gradient=float(rng.uniform(0.15, 0.35)),
                 tint=(1.0, float(rng.uniform(0.97, 1.0)), float(rng.uniform(0.93, 0.98))))


def _coverage(dist_inside: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance (positive inside), 1 px wide transition."""
    return np.clip(dist_inside + 0.5, 0.0, 1.0).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std low-frequency noise."""
    n = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    return n / (n.std() + 1e-6)


def _turned_texture(rng: np.random.Generator, r: np.ndarray, theta: np.ndarray, size: int) -> np.ndarray:
    """Concentric turning marks: noise in polar coordinates, smeared along the tangential direction."""
    n_r, n_t = size, 720
    pad = 31  # theta is periodic: pad by wrapping so the blur and the lookup have no seam
    polar = np.pad(rng.standard_normal((n_r, n_t)).astype(np.float32), ((0, 0), (pad, pad)), mode="wrap")
    polar = cv2.blur(polar, (2 * pad - 1, 1)) * 4.0  # long along theta (axis 1)
    rings = np.interp(np.arange(n_r), np.arange(0, n_r, 2), rng.standard_normal((n_r + 1) // 2)).astype(np.float32)
    map_x = (((theta + np.pi) / (2 * np.pi) * n_t) % n_t + pad).astype(np.float32)
    map_y = np.clip(r * (n_r / (0.5 * size)), 0, n_r - 1).astype(np.float32)
    smeared = cv2.remap(polar, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return 0.6 * smeared + 1.0 * rings[np.clip(map_y.astype(int), 0, n_r - 1)]


def _render_clean(rng: np.random.Generator, size: int, pose: _Pose) -> _Part:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = xx - pose.cx, yy - pose.cy
    r = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx)
    R = pose.radius
    light = np.array([np.cos(pose.light), np.sin(pose.light)], np.float32)

    # Belt: dark, slightly mottled; the part casts a soft shadow downstream of the light.
    belt = 42.0 + 4.0 * _smooth_noise(rng, (size, size), size / 40) + 1.5 * rng.standard_normal((size, size), np.float32)
    shadow_r = np.hypot(dx - light[0] * 0.03 * size, dy - light[1] * 0.03 * size)
    shadow = cv2.GaussianBlur(_coverage(R - shadow_r), (0, 0), 0.02 * size)
    belt = belt * (1.0 - 0.45 * shadow)

    # Turned face: base level, turning marks, bow-tie highlight, raised hub with its own level.
    bowtie = np.cos(2 * (theta - pose.light - np.pi / 2))
    face = 138.0 + 5.0 * _turned_texture(rng, r, theta, size) + 16.0 * bowtie
    hub_r, bore_r = 0.45 * R, 0.27 * R
    face = np.where(r < hub_r, face + 14.0, face)
    # Chamfers/edges: brightness follows how much each edge faces the light.
    facing = (dx * light[0] + dy * light[1]) / np.maximum(r, 1e-3)
    for edge_r, width, sign in ((R, 0.035 * R, -1.0), (hub_r, 0.02 * R, -1.0), (bore_r, 0.03 * R, 1.0)):
        band = np.clip(1.0 - np.abs(r - edge_r) / width, 0.0, 1.0)
        face = face + band * (38.0 * sign * facing + 6.0)

    holes = []
    hole_r, bolt_r = 0.075 * R, 0.72 * R
    through = _coverage(r - bore_r)  # 1 where solid around the bore
    plain_face = face.copy()  # without hole rims: what an undrilled hole looks like
    pad = int(hole_r + 0.05 * R) + 2
    for i in range(_N_HOLES):
        a = pose.angle + 2 * np.pi * i / _N_HOLES
        hx, hy = pose.cx + bolt_r * np.cos(a), pose.cy + bolt_r * np.sin(a)
        holes.append((hx, hy, hole_r))
        # Work in the hole's window only: six full-image passes would dominate the render time.
        win = np.s_[max(int(hy) - pad, 0):int(hy) + pad + 1, max(int(hx) - pad, 0):int(hx) + pad + 1]
        hdx, hdy = xx[win] - hx, yy[win] - hy
        hr = np.hypot(hdx, hdy)
        rim = np.clip(1.0 - np.abs(hr - hole_r) / (0.02 * R), 0.0, 1.0)
        face[win] += rim * 30.0 * (hdx * light[0] + hdy * light[1]) / np.maximum(hr, 1e-3)
        through[win] *= _coverage(hr - hole_r)

    disc = _coverage(R - r)
    solid = disc * through
    # Brighter near the lamp, darker downstream.
    gradient = 1.0 - pose.gradient * ((xx - pose.cx) * light[0] + (yy - pose.cy) * light[1]) / size
    tint = np.array(pose.tint, np.float32)
    face_rgb = (face * gradient)[..., None] * tint
    plain_rgb = (plain_face * gradient)[..., None] * tint
    belt_rgb = np.repeat(belt[..., None], 3, axis=2)
    image = solid[..., None] * face_rgb + (1.0 - solid[..., None]) * belt_rgb

    # Defects go on plain metal, a few pixels away from every edge and hole.
    margin = 0.05 * R
    metal = ((r < R - margin) & (r > bore_r + margin)).astype(np.uint8)
    for hx, hy, hr_ in holes:
        cv2.circle(metal, (round(hx), round(hy)), int(np.ceil(hr_ + margin)), 0, thickness=-1)
    metal = metal.astype(bool)
    return _Part(image.astype(np.float32), plain_rgb.astype(np.float32), belt_rgb.astype(np.float32),
                 metal, disc, holes, pose)


def _random_metal_point(rng: np.random.Generator, part: _Part) -> tuple[float, float]:
    ys, xs = np.nonzero(part.metal)
    i = rng.integers(len(xs))
    return float(xs[i]), float(ys[i])


def _scratch(rng: np.random.Generator, part: _Part, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    for _ in range(20):  # retry until enough of the line lies on plain metal
        x0, y0 = _random_metal_point(rng, part)
        length = rng.uniform(0.10, 0.30) * size
        a = rng.uniform(0, np.pi)
        bend = rng.uniform(-0.15, 0.15) * length
        t = np.linspace(0, 1, 40)[:, None]
        p0 = np.array([x0, y0])
        p2 = p0 + length * np.array([np.cos(a), np.sin(a)])
        p1 = (p0 + p2) / 2 + bend * np.array([-np.sin(a), np.cos(a)])
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
        mask[:] = 0
        cv2.polylines(mask, [np.round(curve).astype(np.int32)], False, 1, thickness=int(rng.integers(1, 3)),
                      lineType=cv2.LINE_8)
        mask &= part.metal
        if mask.sum() >= 0.06 * size:
            break
    delta = float(rng.uniform(35, 70) * rng.choice([-1.0, 1.0]))
    part.image += (mask * delta)[..., None]
    return mask


def _dent(rng: np.random.Generator, part: _Part, size: int) -> np.ndarray:
    x0, y0 = _random_metal_point(rng, part)
    ax, ay = (float(v) * size for v in rng.uniform(0.022, 0.05, size=2))
    a = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = ((xx - x0) * np.cos(a) + (yy - y0) * np.sin(a)) / ax
    v = (-(xx - x0) * np.sin(a) + (yy - y0) * np.cos(a)) / ay
    q = u ** 2 + v ** 2
    mask = ((q <= 1.0) & part.metal).astype(np.uint8)
    depth = rng.uniform(40, 70)
    light = np.array([np.cos(part.pose.light), np.sin(part.pose.light)])
    # Crater: darker in the middle; its far wall faces the lamp (brighter), its near wall is in shade.
    flank = ((xx - x0) * light[0] + (yy - y0) * light[1]) / max(ax, ay)
    shade = -depth * (0.35 + 0.65 * (1.0 - q)) + 0.6 * depth * flank
    part.image += (mask * shade)[..., None]
    return mask


def _missing(rng: np.random.Generator, part: _Part, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if rng.random() < 0.5:  # a bite out of the rim: belt shows where metal was
        a = rng.uniform(0, 2 * np.pi)
        bx = part.pose.cx + part.pose.radius * np.cos(a)
        by = part.pose.cy + part.pose.radius * np.sin(a)
        bite = np.hypot(xx - bx, yy - by) <= rng.uniform(0.035, 0.07) * size
        mask = (bite & (part.disc > 0)).astype(np.uint8)
        part.image = np.where(mask[..., None] > 0, part.background, part.image)
    else:  # a bolt hole that was never drilled: plain face where the hole should be
        hx, hy, hr = part.holes[int(rng.integers(len(part.holes)))]
        mask = (np.hypot(xx - hx, yy - hy) <= hr + 1.0).astype(np.uint8)
        part.image = np.where(mask[..., None] > 0, part.face, part.image)
    return mask


def _stain(rng: np.random.Generator, part: _Part, size: int) -> np.ndarray:
    x0, y0 = _random_metal_point(rng, part)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    field = np.zeros((size, size), np.float32)
    scale = rng.uniform(0.02, 0.045) * size
    # A few overlapping blobs make an irregular outline; the first sits on (x0, y0), so the mask is never empty.
    for i in range(int(rng.integers(3, 7))):
        bx, by = (x0, y0) if i == 0 else (x0 + rng.normal(0, scale), y0 + rng.normal(0, scale))
        s = scale * rng.uniform(0.5, 1.0)
        field += np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * s * s))
    mask = ((field > 0.5) & part.metal).astype(np.uint8)
    rust, oil = np.array([1.0, 0.72, 0.48]), np.array([0.62, 0.70, 0.86])
    colour = rust if rng.random() < 0.5 else oil
    alpha = mask * np.clip(0.35 + 0.3 * field, 0.0, 0.65) * rng.uniform(0.8, 1.0)
    tinted = part.image * colour.astype(np.float32)
    part.image = part.image * (1 - alpha[..., None]) + tinted * alpha[..., None]
    return mask


_DEFECTS = {"scratch": _scratch, "dent": _dent, "missing": _missing, "stain": _stain}
assert tuple(_DEFECTS) == DEFECT_TYPES


def render_part(rng: np.random.Generator, size: int = 256, defect: str | None = None,
                jitter: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One part as (uint8 RGB size x size x 3, uint8 {0,1} mask of the defect; all zero if none).

    ``jitter=False`` renders the same pose, lighting and texture every time, so the only change
    between two parts is the planted defect (and the sensor noise, drawn from ``rng``). For one
    seed, the renders with and without a defect are identical outside the defect's mask.
    """
    if defect is not None and defect not in _DEFECTS:
        raise ConfigError(f"unknown defect '{defect}' (available: {', '.join(DEFECT_TYPES)})")
    if size < 32:
        raise ConfigError(f"part size {size} is too small (at least 32 px)")
    pose = _pose(rng, size, jitter)
    part = _render_clean(rng if jitter else np.random.default_rng(_FIXED_SEED), size, pose)
    # The defect has its own stream, drawn whether or not it is used, so the same seed gives the
    # same part and the same sensor noise with and without a defect: they differ inside the mask only.
    defect_rng = np.random.default_rng(rng.integers(2**63))
    mask = _DEFECTS[defect](defect_rng, part, size) if defect else np.zeros((size, size), np.uint8)
    image = part.image + rng.normal(0.0, 2.0, part.image.shape).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), mask.astype(np.uint8)


def _write_png(path: Path, array: np.ndarray) -> None:
    img = array[..., ::-1] if array.ndim == 3 else array  # OpenCV writes BGR
    if not cv2.imwrite(str(path), np.ascontiguousarray(img)):
        raise DataError(f"cannot write {path} (disk full or no permission?)")


def write_mvtec_layout(out_dir: str | Path, seed: int = 0, n_train: int = 16, n_test_good: int = 12,
                       n_per_defect: int = 8, size: int = 256) -> Path:
    """Write the demo set in MVTec layout under ``out_dir/flange`` and return that category folder.

    Every image has its own Generator seeded by (seed, split, index), so one image does not
    depend on how many others were drawn before it.
    """
    cat = Path(out_dir) / CATEGORY
    if cat.exists():
        if not (cat / _MARKER).is_file():
            raise DataError(f"{cat} exists and was not written by 'protospect demo-data'; choose another --out")
        shutil.rmtree(cat)  # our own earlier output: regenerate from scratch, no stale files
    splits = [("train/good", None, n_train), ("test/good", None, n_test_good)]
    splits += [(f"test/{d}", d, n_per_defect) for d in DEFECT_TYPES]
    for split_id, (folder, defect, count) in enumerate(splits):
        (cat / folder).mkdir(parents=True, exist_ok=True)
        if defect:
            (cat / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img, mask = render_part(np.random.default_rng([seed, split_id, i]), size=size, defect=defect)
            _write_png(cat / folder / f"{i:03d}.png", img)
            if defect:
                _write_png(cat / "ground_truth" / defect / f"{i:03d}_mask.png", mask * 255)
    (cat / _MARKER).write_text(
        "Procedurally generated by `protospect demo-data` "
        f"(seed {seed}, {size} px, {n_train} train, {n_test_good} test good, {n_per_defect} per defect type).\n"
        "No photograph or third-party image is involved: every pixel comes from protospect/synthetic_parts.py.\n"
        "Free to use, modify and ship (public domain, CC0 1.0).\n", encoding="utf-8")
    return cat


LINE_STREAM = 99       # random stream of the line video's parts
GOOD_LINE_STREAM = 98  # a good-parts clip for `protospect calibrate`: other parts than the line video's


def write_line_video(path: str | Path, n_frames: int = 200, seed: int = 0, defect_every: int | None = 10,
                     frame_size: tuple[int, int] = (320, 320), fps: float = 10.0, stream: int = LINE_STREAM) -> Path:
    """An inspection-line video: one part per frame, a defect planted in every ``defect_every``-th frame
    (None: good parts only).

    Writes MJPG ``path`` (.avi) and ``path`` + ``.json`` with the defective frame indices and their
    defect types, so a replay through ``protospect serve`` can be checked frame by frame.
    Frames use seeds disjoint from write_mvtec_layout's, so a video never repeats a training shot;
    ``stream`` keeps two videos of one seed apart.
    """
    path = Path(path)
    if n_frames < 1 or (defect_every is not None and defect_every < 1):
        raise ConfigError("n_frames and defect_every must be >= 1")
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = frame_size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise DataError(f"cannot write video {path} (OpenCV has no MJPG writer?)")
    truth = {}
    try:
        for i in range(n_frames):
            planted = defect_every is not None and i % defect_every == defect_every - 1
            defect = DEFECT_TYPES[(i // defect_every) % len(DEFECT_TYPES)] if planted else None
            img, _ = render_part(np.random.default_rng([seed, stream, i]), size=max(w, h), defect=defect)
            writer.write(np.ascontiguousarray(cv2.resize(img, (w, h))[..., ::-1]))
            if defect:
                truth[i] = defect
    finally:
        writer.release()
    Path(str(path) + ".json").write_text(json.dumps({"frames": n_frames, "defective": truth}, indent=1), encoding="utf-8")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="folder to write into (the set goes to OUT/flange)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every image and mask (default 0)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--n-train", type=int, default=16, help="good training images (default 16)")
    parser.add_argument("--n-test-good", type=int, default=12, help="good test images (default 12)")
    parser.add_argument("--n-per-defect", type=int, default=8, help=f"test images per defect type {DEFECT_TYPES} (default 8)")
    parser.add_argument("--video-frames", type=int, default=0,
                        help="also write OUT/line.avi: N frames of parts passing the camera, every 10th defective")
    parser.add_argument("--good-video-frames", type=int, default=0,
                        help="also write OUT/line_good.avi: N frames of other good parts (for `protospect calibrate`)")


def run(args: argparse.Namespace) -> int:
    for name in ("n_train", "n_test_good", "n_per_defect", "video_frames", "good_video_frames"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0")
    cat = write_mvtec_layout(args.out, seed=args.seed, n_train=args.n_train, n_test_good=args.n_test_good,
                             n_per_defect=args.n_per_defect, size=args.size)
    n = args.n_train + args.n_test_good + args.n_per_defect * len(DEFECT_TYPES)
    print(f"wrote {n} images (+ masks) to {cat}")
    if args.video_frames:
        video = write_line_video(Path(args.out) / "line.avi", n_frames=args.video_frames, seed=args.seed)
        print(f"wrote {video} ({args.video_frames} frames; defective frame indices in {video}.json)")
    if args.good_video_frames:
        video = write_line_video(Path(args.out) / "line_good.avi", n_frames=args.good_video_frames, seed=args.seed,
                                 defect_every=None, stream=GOOD_LINE_STREAM)
        print(f"wrote {video} ({args.good_video_frames} frames, good parts only)")
    print(f"next: protospect eval --data {args.out} --category {CATEGORY} --method patchcore --shots 1 2 4 --out runs/demo")
    return 0
