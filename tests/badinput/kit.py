"""What the bad-input suite generates: a tiny MVTec-layout part, bad and odd image files, and helpers that run
the real `protospect` executables and compare the files around them before and after."""
from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
TORCH_CLI = REPO / ".venv" / "bin" / "protospect"
STATION_CLI = REPO / ".venv-runtime" / "bin" / "protospect"
S = 64  # image side of the generated part


def part(rng: np.random.Generator, size: int = S, defect: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A striped part, RGB uint8, and its defect mask (a bright disc when ``defect``)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = 0.5 + 0.25 * np.sin(xx / size * 6 * np.pi + rng.uniform(-0.3, 0.3)) * np.cos(yy / size * 4 * np.pi)
    img = np.clip(np.stack([base * 0.9, base * 0.7, base * 0.5], -1) * 255 + rng.normal(0, 3, (size, size, 3)), 0, 255)
    img = img.astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    if defect:
        cv2.circle(mask, (int(rng.integers(12, size - 12)), int(rng.integers(12, size - 12))), 6, 255, -1)
        img[mask > 0] = (250, 40, 200)
    return img, mask


def write_png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(path.suffix or ".png", img[:, :, ::-1] if img.ndim == 3 and img.shape[2] == 3 else img)
    assert ok, path
    path.write_bytes(data.tobytes())
    return path


def make_category(root: Path, name: str = "part", n_train: int = 3, n_good: int = 2, n_defect: int = 2, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    cat = root / name
    for i in range(n_train):
        write_png(cat / "train" / "good" / f"{i:03d}.png", part(rng)[0])
    for i in range(n_good):
        write_png(cat / "test" / "good" / f"{i:03d}.png", part(rng)[0])
    for i in range(n_defect):
        img, mask = part(rng, defect=True)
        write_png(cat / "test" / "blob" / f"{i:03d}.png", img)
        write_png(cat / "ground_truth" / "blob" / f"{i:03d}_mask.png", mask)
    return cat


def _png_bytes(img: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", img)
    assert ok
    return data.tobytes()


def _huge_header() -> bytes:
    data = bytearray(_png_bytes(np.zeros((8, 8, 3), np.uint8)))
    data[16:24] = struct.pack(">II", 200_000, 200_000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _bad_crc() -> bytes:
    data = bytearray(_png_bytes(part(np.random.default_rng(3))[0]))
    data[20] ^= 1
    return bytes(data)


def _jpeg(img: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", img)
    assert ok
    return data.tobytes()


# name -> (file suffix, bytes): files that are not a decodable image
BAD_IMAGES = {
    "zero-byte": (".png", lambda: b""),
    "truncated-png": (".png", lambda: _png_bytes(part(np.random.default_rng(1))[0])[:300]),
    "truncated-jpeg": (".jpg", lambda: _jpeg(part(np.random.default_rng(2))[0])[:200]),
    "text-as-png": (".png", lambda: b"this is a text file, not a picture\n" * 20),
    "bad-crc-png": (".png", _bad_crc),
    "huge-header-png": (".png", _huge_header),
    "random-bytes-jpg": (".jpg", lambda: np.random.default_rng(4).integers(0, 256, 5000, dtype=np.uint8).tobytes()),
}


def _odd(kind: str) -> np.ndarray:
    img = part(np.random.default_rng(5))[0]
    if kind == "gray":
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    if kind == "rgba":
        return cv2.cvtColor(img, cv2.COLOR_RGB2BGRA)
    if kind == "16-bit":
        return img[:, :, ::-1].astype(np.uint16) << 8
    if kind == "12-bit":
        return img[:, :, ::-1].astype(np.uint16) << 4
    if kind == "odd-size":
        return cv2.resize(img, (77, 51))[:, :, ::-1]
    raise KeyError(kind)


ODD_IMAGES = ("gray", "rgba", "16-bit", "12-bit", "odd-size")


def odd_image_bytes(kind: str) -> bytes:
    """A valid but unusual image file (the pipeline converts it)."""
    return _png_bytes(_odd(kind))


# ---- running and watching -----------------------------------------------------------------------

@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        """stderr as a terminal shows it: text before a carriage return is overwritten; blank lines dropped."""
        shown = [line.split("\r")[-1].rstrip() for line in self.err.split("\n")]
        return [line for line in shown if line.strip()]


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    e.update(OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    return e


def run(cli: Path, *args, timeout: float = 120, cwd: Path | None = None) -> Result:
    out = subprocess.run([str(cli), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env(),
                         cwd=cwd or REPO)
    return Result(out.returncode, out.stdout, out.stderr)


def snapshot(*roots: Path) -> dict[Path, str]:
    """sha256 of every file under ``roots``."""
    files = {}
    for root in roots:
        if root.is_file():
            files[root] = hashlib.sha256(root.read_bytes()).hexdigest()
        elif root.is_dir():
            for p in root.rglob("*"):
                if p.is_file() and not p.is_symlink():
                    files[p] = hashlib.sha256(p.read_bytes()).hexdigest()
    return files


@dataclass
class Kit:
    root: Path      # everything below is shared: cases must never change it (checked after each case)
    data: Path      # the category folder (MVTec layout)
    art: Path       # artifact from `protospect train`
    model: Path     # model.onnx from `protospect export`
    frames: Path    # a folder of good frames (a station source)


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
