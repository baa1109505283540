"""Image decoding and the one resize that training, export parity checks and the runtime all share.

numpy + OpenCV only (the runtime imports this). Every frame becomes uint8 RGB HxWx3 here, whatever
it arrived as (gray, 16-bit, BGRA, BGR from OpenCV), so the model always sees the same thing.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

# OpenCV's own decoder warnings (libpng "iCCP: known incorrect sRGB profile", "imread_: can't open") would
# print around our one-line errors: errors only, unless the user set a level.
_USER_CV_LOG_LEVEL = "OPENCV_LOG_LEVEL" in os.environ
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # ffmpeg's own lines ("[tcp @ 0x..] Connection refused")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from protospect.errors import DataError  # noqa: E402

# the image files every command reads (train/eval folders, export --int8-calib-images, serve/register folders,
# textures): one set, so a folder one command replays is one the others accept
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})

log = logging.getLogger(__name__)
if not _USER_CV_LOG_LEVEL and hasattr(cv2, "setLogLevel"):  # cv2 may have been imported before this module
    cv2.setLogLevel(2)  # LOG_LEVEL_ERROR


def to_rgb_uint8(img: np.ndarray, *, bgr: bool = True) -> np.ndarray:
    """Convert gray / 16-bit / float / 4-channel / BGR arrays to contiguous uint8 RGB HxWx3.

    ``bgr`` says how 3- and 4-channel input is ordered (OpenCV decodes and captures BGR).
    Raises DataError with the reason for anything that is not an image.
    """
    if not isinstance(img, np.ndarray) or img.size == 0:
        raise DataError("frame is empty or not an array")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
        raise DataError(f"frame has shape {img.shape}; expected HxW, HxWx1, HxWx3 or HxWx4")
    if img.dtype == np.uint16:
        img = uint16_to_uint8(img)
    elif img.dtype in (np.float32, np.float64):
        img = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8) if img.max() <= 1.0 else np.clip(img, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise DataError(f"frame dtype {img.dtype} is not supported (uint8, uint16, float)")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    # cvtColor, not img[:, :, ::-1]: same pixels, ~40x faster at 640x480 (measured 0.22 vs 8.8 ms).
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if bgr else np.ascontiguousarray(img)


LOW_BIT_MAX = 4096  # a 16-bit image whose every sample is below this holds 12-bit (or less) camera data
_warned_low_bits = False


def uint16_to_uint8(img: np.ndarray) -> np.ndarray:
    """16-bit samples -> 8 bits. The rule (docs/contracts.md 1), the same for every image so that shots,
    test images and frames agree:

    * max >= 4096: 16-bit data, the top 8 bits (``>> 8``; exact for 8-bit data stored in 16);
    * max < 4096: 12-bit data in a 16-bit container (what machine-vision cameras write), ``>> 4``, with one
      warning per process. ``>> 8`` would leave it near-black (at most 15 of 255). A camera's frames with a
      declared pixel format (GenICam Mono10/12/14) are scaled by that format in runtime/pixel_formats.py.
    """
    peak = int(img.max()) if img.size else 0
    if peak >= LOW_BIT_MAX:
        return (img >> 8).astype(np.uint8)
    global _warned_low_bits
    if not _warned_low_bits:
        _warned_low_bits = True
        log.warning("16-bit image with every sample below 4096 (max %d): read as 12-bit data (>> 4), "
                    "not >> 8 (near-black); save 8-bit or full-range 16-bit images to avoid this", peak)
    return (img >> 4).astype(np.uint8)


def _decode(path: str | Path, flags: int, what: str) -> np.ndarray:
    """cv2.imdecode of a file (np.fromfile: works for non-ASCII paths); DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        return decode_bytes(np.fromfile(str(path), dtype=np.uint8), flags)
    except DataError as err:
        raise DataError(f"cannot decode {what} ({err}): {path}") from None


def decode_bytes(data: np.ndarray, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """cv2.imdecode of an encoded file's bytes; DataError with the reason (empty, corrupt PNG, a header declaring
    more pixels than OpenCV decodes, not an image) and never a cv2.error or a line printed by libpng."""
    if not data.size:
        raise DataError("empty file")
    problem = png_problem(data.tobytes()) if data[:8].tobytes() == PNG_SIGNATURE else None
    if problem:  # checked here, so libpng never prints its own error beside ours
        raise DataError(f"corrupt PNG: {problem}")
    try:
        img = cv2.imdecode(data, flags)
    except cv2.error as err:
        raise DataError("its header declares more pixels than OpenCV decodes" if "MAX_IMAGE_PIXELS" in str(err)
                        else str(err).strip().splitlines()[-1]) from None
    if img is None:
        raise DataError("corrupt or not an image")
    return img


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_problem(data: bytes) -> str | None:
    """What is wrong with a PNG's chunk structure (a chunk's CRC, a cut-off file, no IHDR/IEND), or None.

    zlib.crc32 over the bytes already read: about 1 ms per MB, against the decode that follows."""
    import struct  # noqa: PLC0415
    import zlib  # noqa: PLC0415

    pos, first = 8, True
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            return f"cut off inside chunk {kind.decode('latin-1')!r}"
        if first and kind != b"IHDR":
            return "first chunk is not IHDR"
        first = False
        if zlib.crc32(data[pos + 4:pos + 8 + length]) != struct.unpack(">I", data[pos + 8 + length:end])[0]:
            return f"CRC error in chunk {kind.decode('latin-1')!r}"
        if kind == b"IEND":
            return None
        pos = end
    return "cut off (no IEND chunk)"


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 RGB HxWx3; DataError naming the file if missing or unreadable."""
    return to_rgb_uint8(_decode(path, cv2.IMREAD_UNCHANGED, "image"), bgr=True)


def read_mask(path: str | Path, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a mask to uint8 {0,1} HxW. With ``expected_hw``, a mask of another size is a DataError."""
    m = _decode(path, cv2.IMREAD_GRAYSCALE, "mask")
    if expected_hw is not None and tuple(m.shape[:2]) != tuple(expected_hw):
        raise DataError(f"mask {path} is {m.shape[1]}x{m.shape[0]} but its image is {expected_hw[1]}x{expected_hw[0]}")
    # 0/255 masks (MVTec) cut at 127; 0/1 or class-index masks (converted sets) count any non-zero value
    return (m > (127 if m.max() > 127 else 0)).astype(np.uint8)


def hw_of(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """(H, W) of a model input size (square models keep the int form S): an int S is S x S; a pair (list from JSON, or tuple) is (H, W)."""
    if isinstance(size, (list, tuple)):
        if len(size) != 2:
            raise DataError(f"input size {size!r} is neither S nor [H, W]")
        return int(size[0]), int(size[1])
    return int(size), int(size)


def canonical_size(size: int | tuple[int, int] | list[int]) -> int | tuple[int, int]:
    """S when the input is square, else the tuple (H, W): one hashable form for caches and records."""
    h, w = hw_of(size)
    return h if h == w else (h, w)


def parse_hw(value) -> tuple[int, int] | None:
    """A stored input size (S, or [H, W]: ints, not bools, all positive) as (H, W); None when it is neither.
    The one strict reader for model meta, graph metadata and line-threshold files."""
    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    dims = [value, value] if is_int(value) else value
    if not (isinstance(dims, (list, tuple)) and len(dims) == 2 and all(is_int(v) and v > 0 for v in dims)):
        return None
    return int(dims[0]), int(dims[1])


def size_record(size: int | tuple[int, int] | list[int]) -> int | list[int]:
    """The input size as records and meta store it (JSON): S when square, else [H, W]."""
    h, w = hw_of(size)
    return h if h == w else [h, w]


def size_text(size: int | tuple[int, int] | list[int]) -> str:
    """A model input size for logs: "512" for 512 x 512, "HxW" ("704x384") when not square."""
    h, w = hw_of(size)
    return str(h) if h == w else f"{h}x{w}"


def resize_image(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize an RGB image to the model input (S, or (H, W)): area filter when shrinking (no aliasing),
    bilinear when growing."""
    th, tw = hw_of(size)
    h, w = img.shape[:2]
    interp = cv2.INTER_AREA if (h > th or w > tw) else cv2.INTER_LINEAR
    return cv2.resize(img, (tw, th), interpolation=interp)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """The same geometry as resize_image, for a {0,1} mask (nearest, stays binary).

    INTER_NEAREST_EXACT samples each output pixel's centre, as the area / bilinear image resize does;
    plain INTER_NEAREST samples its top-left corner and shifts the mask by up to half an input cell.
    """
    th, tw = hw_of(size)
    return cv2.resize(mask, (tw, th), interpolation=cv2.INTER_NEAREST_EXACT)
