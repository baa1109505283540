"""`protospect register`: a part registered at the station in one command (docs/runtime.md, Register).

    capture  K good shots, then N good calibration parts, through the runtime's own source classes
             (camera / stream / GenICam: the operator confirms each capture with Enter; video files and
             folders: frames in order, every --every-th)
    train    the training room's fit, the same path as `protospect train` (cli_train.train_artifact)
    export   the ONNX graph (+ INT8 with --int8), parity-checked against PyTorch
    score    the N calibration parts through the exported graph in the runtime's backend
    thresholds  split conformal (protospect/conformal.py): NG at A, REVIEW at B
    write    STATION_DIR built in a temporary folder beside it and renamed at the end: a failed run
             leaves nothing (protospect/station.py is the bundle's contract)

Where training and runtime meet: it needs the `train` extra (torch); the bundle it writes is served by
the torch-free runtime (`protospect serve STATION_DIR`).
"""
from __future__ import annotations

import html
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from protospect import __version__, station
from protospect.errors import ConfigError, DataError, ProtospectError, SourceError

log = logging.getLogger("protospect.register")

OPSET = 17
REPORT_DIR = "report"
SHOTS_DIR = "shots/train/good"   # MVTec layout: `protospect train --data STATION_DIR/shots` works on it too
GOOD_IN_REPORT = 4


@dataclass
class Captured:
    index: int          # frame number in the source (0-based, counting every frame read)
    origin: str         # file name (folders), "" for streams
    rgb: np.ndarray     # full resolution, uint8 RGB


@dataclass
class Capture:
    shots: list[Captured]
    parts: list[Captured]
    source_name: str
    live: bool
    corrupt: list[dict] = field(default_factory=list)  # frames skipped: {"frame", "origin", "reason"}
    sizes: list[tuple[int, int]] = field(default_factory=list)  # distinct W x H seen


class Stages:
    """Wall time of each stage, printed as it ends."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self._t = time.perf_counter()

    def done(self, name: str, what: str = "") -> None:
        now = time.perf_counter()
        self.times[name] = round(now - self._t, 3)
        self._t = now
        print(f"[{name}] {self.times[name]:.1f} s{'  ' + what if what else ''}", flush=True)


def check_arguments(args) -> None:
    """Everything that can be refused before a frame is captured."""
    from protospect import conformal

    if args.shots < 1:
        raise ConfigError(f"--shots {args.shots}: at least 1 good shot")
    if args.good < 1:
        raise ConfigError(f"--good {args.good}: at least 1 good calibration part")
    if args.every < 1:
        raise ConfigError(f"--every {args.every}: must be >= 1 (1: every frame)")
    conformal.check_rates(args.frr, args.review_frr)
    need = conformal.n_needed(args.frr)
    if args.good < need and not args.allow_uncertified:
        raise ConfigError(f"--good {args.good} good parts cannot certify a false-reject rate of {100 * args.frr:g} %: "
                          f"split conformal needs N >= 1/A - 1 = {need} good parts (--good {need}, a larger --frr, "
                          "or --allow-uncertified)")
    line_settings(args)
    out = Path(args.out)
    if out.exists():
        raise ConfigError(f"--out {out} exists; register writes a new station folder (remove it or choose another)")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise ConfigError(f"--out {out}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"--out {out}: cannot write in {parent}")


def line_settings(args) -> dict:
    """The line flags given to register -> station.json "line" (protospect/station.py LINE_KEYS), each value checked
    as serve checks it (one-line ConfigError before any capture); {} when none is given."""
    from protospect.runtime.line.modbus import parse_modbus
    from protospect.runtime.line.mqtt import parse_mqtt
    from protospect.runtime.line.opcua import parse_opcua

    line = {k: str(getattr(args, k)) for k in station.LINE_KEYS if getattr(args, k, None) is not None}
    trigger = line.get("trigger", "free")
    for key, parse in (("modbus", parse_modbus), ("opcua", parse_opcua), ("mqtt", parse_mqtt)):
        if key in line:
            parse(line[key])
            if key != "mqtt" and trigger != "plc":
                raise ConfigError(f"--{key} carries the PLC trigger handshake: add --trigger plc")
    if trigger == "plc" and "modbus" not in line and "opcua" not in line:
        raise ConfigError("--trigger plc needs a way for the PLC to trigger: --modbus HOST:PORT or --opcua opc.tcp://HOST:PORT")
    if "trigger_source" in line and trigger != "hardware":
        raise ConfigError("--trigger-source sets the camera's hardware trigger line: add --trigger hardware")
    return line


def capture(spec: str, k: int, n: int, *, every: int = 1, confirm=input, open_source=None) -> Capture:
    """K shots then N calibration parts from the source, in order; corrupt frames skipped and counted.

    SourceError when the source cannot open, dies on the way, or ends before K + N usable frames."""
    from protospect.imageio import to_rgb_uint8
    from protospect.runtime import sources as rt_sources

    src = (open_source or rt_sources.open_source)(spec, loop=False)
    src.open()  # SourceError: nothing to register from
    want = k + n
    got: list[Captured] = []
    cap = Capture([], [], src.name, bool(src.live))
    index = -1
    bar = tqdm(total=want, desc="capture", unit="part", disable=not sys.stderr.isatty())
    try:
        while len(got) < want:
            if src.live:
                role = "shot" if len(got) < k else "good part"
                i = len(got) + 1 if len(got) < k else len(got) - k + 1
                reply = confirm(f"{role} {i}/{k if len(got) < k else n}: put a good part in front of the camera, "
                                "Enter to capture (q to stop) ")
                if str(reply).strip().lower() == "q":
                    raise SourceError(f"stopped by the operator after {len(got)} of {want} parts; nothing written")
            raw = _read(src, len(got), want)
            if raw is None:
                break
            index += 1
            if not src.live and index % every:
                continue
            try:
                if not isinstance(raw, np.ndarray) or raw.size == 0:
                    raise DataError("empty or undecodable frame")
                rgb = to_rgb_uint8(raw, bgr=src.bgr)
            except DataError as err:
                cap.corrupt.append({"frame": index, "origin": src.origin, "reason": str(err)})
                log.warning("frame %d%s skipped: %s", index, f" ({src.origin})" if src.origin else "", err)
                continue
            size = (int(rgb.shape[1]), int(rgb.shape[0]))
            if size not in cap.sizes:
                if cap.sizes:
                    log.warning("frame %d is %dx%d, earlier frames %dx%d: resized to the model's input size the same way "
                                "as served frames (protospect.imageio.resize_image)", index, *size, *cap.sizes[0])
                cap.sizes.append(size)
            got.append(Captured(index, src.origin, rgb))
            bar.update(1)
    finally:
        bar.close()
        src.close()
    if len(got) < want:
        raise SourceError(f"the source {src.name} ended after {len(got)} usable frames ({index + 1} read, every "
                          f"{every}, {len(cap.corrupt)} corrupt); registration needs K + N = {k} + {n} = {want}; "
                          "nothing written")
    cap.shots, cap.parts = got[:k], got[k:]
    return cap


def _read(src, have: int, want: int):
    from protospect.runtime.sources import IDLE, SourceLost

    t0 = time.monotonic()
    while True:
        try:
            raw = src.read()
        except SourceLost as err:
            raise SourceError(f"the source {src.name} stopped during registration ({have} of {want} parts captured): "
                              f"{err}; nothing written") from err
        except ProtospectError:
            raise
        except (OSError, RuntimeError, cv2.error) as err:
            raise SourceError(f"the source {src.name} failed during registration ({have} of {want} parts captured): "
                              f"{err}; nothing written") from err
        if raw is not IDLE:
            return raw
        if time.monotonic() - t0 > 30:
            raise SourceError(f"the source {src.name} delivered no frame for 30 s ({have} of {want} parts captured); "
                              "nothing written")
        time.sleep(0.01)


def _png(path: Path, bgr: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise OSError(f"cannot encode {path.name}")
    path.write_bytes(buf.tobytes())


def _thumb(bgr: np.ndarray, width: int = 320) -> np.ndarray:
    h, w = bgr.shape[:2]
    if w <= width:
        return bgr
    return cv2.resize(bgr, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


def register(args) -> Path:
    """The whole registration; returns the station folder. Nothing exists at --out unless it succeeded."""
    check_arguments(args)
    from protospect.training.cli_train import config_overrides_from_args

    overrides = config_overrides_from_args(args)  # --size / --set refused now, not after the capture
    out = Path(args.out).resolve()
    stages = Stages()
    cap = capture(args.source, args.shots, args.good, every=args.every)
    stages.done("capture", f"{len(cap.shots)} shots + {len(cap.parts)} good parts from {cap.source_name}"
                f"{f'; {len(cap.corrupt)} corrupt frames skipped' if cap.corrupt else ''}")
    tmp = out.with_name(f".{out.name}.register-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        rec = _build(args, overrides, cap, tmp, out, stages)
        rec = station.seal(rec)
        (tmp / station.STATION_JSON).write_text(json.dumps(rec, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        os.rename(tmp, out)  # the bundle appears whole or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    stages.done("write", str(out))
    return out


def _build(args, overrides: dict, cap: Capture, tmp: Path, out: Path, stages: Stages) -> dict:
    from protospect.export import onnx_export
    from protospect.metadata import input_hw_of
    from protospect.export.parity import parity_from_model, shot_views
    from protospect.imageio import resize_image, size_record
    from protospect.runtime.backends import select_backend
    from protospect.conformal import operating_point
    from protospect.training.artifact import artifact_sha256
    from protospect.training.cli_train import train_artifact
    from protospect.training.data import HOLDOUT_GOOD

    shots_dir = tmp / SHOTS_DIR
    shots_dir.mkdir(parents=True)
    shot_paths = []
    for i, c in enumerate(cap.shots):
        p = shots_dir / f"shot_{i:02d}.png"
        _png(p, cv2.cvtColor(c.rgb, cv2.COLOR_RGB2BGR))
        shot_paths.append(p)

    overrides = {"category": "station", **overrides}
    model, art, train_s = train_artifact(shot_paths, method=args.method, preset=args.preset, seed=args.seed,
                                         overrides=overrides, out=tmp / station.ARTIFACT,
                                         data={"root": str(out), "category": "shots"},
                                         # geometry=auto chooses on good parts that are not shots: the first of the
                                         # calibration parts (the choice is between two models, so the FRR
                                         # certified on the same parts is at most mildly optimistic; docs/runtime.md)
                                         holdout_rgb=[c.rgb for c in cap.parts[:HOLDOUT_GOOD]])
    stages.done("train", f"{args.method} ({args.preset}) on K = {len(shot_paths)} shots")

    size = input_hw_of(model.meta)
    fp32 = tmp / station.MODEL
    onnx_export.onnx_from_model(model, model.meta, model.calibration, fp32, artifact_sha256=artifact_sha256(art),
                                opset=OPSET)
    report = parity_from_model(model, fp32, shot_views(shot_paths, size))
    print(report.format())
    if not report.ok:
        raise ConfigError("parity check of the exported graph against PyTorch FAILED; nothing written")
    served = fp32
    if args.int8:
        from protospect.calibration.augment import AugmentConfig
        from protospect.calibration.quantize import int8_from_onnx

        int8 = tmp / station.MODEL_INT8
        int8_from_onnx(fp32, int8, shot_paths, augment=AugmentConfig())
        report8 = parity_from_model(model, int8, shot_views(shot_paths, size))
        print(report8.format())
        served = int8
    stages.done("export", f"{served.name}, parity checked")

    backend = select_backend(served, "auto")
    scores, maps = [], []
    with backend:
        info = backend.info
        for c in tqdm(cap.parts, desc="score", unit="part", disable=not sys.stderr.isatty()):
            amap, score = backend.infer(resize_image(c.rgb, info.input_hw))
            scores.append(score)
            if len(maps) < GOOD_IN_REPORT:
                maps.append(amap)
    stages.done("score", f"{len(scores)} good parts through {served.name} ({backend.name})")

    op = operating_point(scores, args.frr, args.review_frr, allow_uncertified=args.allow_uncertified)
    for line in op.describe():
        print(line)
    stages.done("thresholds")

    _report(tmp, cap, op, maps, info.map_range, scores, stages, args)
    stages.done("report", f"{station.REPORT} + {REPORT_DIR}/*.png")

    return {
        "format": station.FORMAT, "format_version": station.FORMAT_VERSION, "protospect_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "operating_point": op.to_dict(),
        "certified_in_words": op.describe(),
        "source": {"spec": str(args.source), "name": cap.source_name, "live": cap.live, "every": args.every,
                   "corrupt_skipped": len(cap.corrupt), "corrupt": cap.corrupt, "frame_sizes": cap.sizes},
        "shots": [{"file": f"{SHOTS_DIR}/{p.name}", "frame": c.index, "origin": c.origin}
                  for p, c in zip(shot_paths, cap.shots)],
        "calibration_parts": [{"frame": c.index, "origin": c.origin, "score": float(s)}
                              for c, s in zip(cap.parts, scores)],
        "model": served.name,
        "model_int8": station.MODEL_INT8 if args.int8 else None,
        "method": args.method, "preset": args.preset, "seed": args.seed,
        "input_size": size_record(info.input_hw), "artifact_sha256": artifact_sha256(art),
        "train_seconds": round(train_s, 3),
        "timings_s": dict(stages.times),
        "files": station.hash_files(tmp),
        **({station.LINE: line} if (line := line_settings(args)) else {}),
        **({station.GEOMETRY_CHOICE: model.meta["geometry_choice"]} if "geometry_choice" in model.meta else {}),
        **({station.IMAGE_BRANCH_CHOICE: model.meta["image_branch_choice"]}
           if "image_branch_choice" in model.meta else {}),
    }


def _report(tmp: Path, cap: Capture, op, maps, map_range, scores, stages: Stages, args) -> None:
    from protospect.runtime.sinks import heat_overlay
    from protospect.runtime.stats import draw_histogram

    rep = tmp / REPORT_DIR
    rep.mkdir()
    shots = []
    for i, c in enumerate(cap.shots):
        name = f"shot_{i:02d}.png"
        _png(rep / name, _thumb(cv2.cvtColor(c.rgb, cv2.COLOR_RGB2BGR)))
        shots.append((name, c))
    goods = []
    for i, (c, amap) in enumerate(zip(cap.parts, maps)):
        name = f"good_{i:02d}.png"
        _png(rep / name, _thumb(heat_overlay(c.rgb, amap, map_range)))
        goods.append((name, c, scores[i]))
    markers = [("NG", op.ng_threshold, (0, 0, 200))]
    if op.review_threshold is not None:
        markers.append(("REVIEW", op.review_threshold, (0, 150, 230)))
    draw_histogram(np.asarray(scores), str(rep / "scores.png"), f"good calibration parts: {len(scores)} scores",
                   unit="image score", markers=markers)

    def frame(c: Captured) -> str:
        return html.escape(f"frame {c.index}" + (f" ({c.origin})" if c.origin else ""))

    words = "".join(f"<li>{html.escape(line)}</li>" for line in op.describe())
    body = [f"<h1>Station registration: {html.escape(str(args.out))}</h1>",
            f"<p>source {html.escape(cap.source_name)}; {len(cap.shots)} shots, {len(cap.parts)} good calibration parts; "
            f"{args.method} ({html.escape(args.preset)}); {len(cap.corrupt)} corrupt frames skipped</p>",
            f"<h2>Certified rates</h2><ul>{words}</ul>",
            '<h2>Good-part scores</h2><img src="report/scores.png" alt="histogram of good scores with both thresholds">',
            "<h2>Shots</h2>" + "".join(f'<figure><img src="report/{n}"><figcaption>{frame(c)}</figcaption></figure>'
                                       for n, c in shots),
            "<h2>Good parts with heatmaps</h2>" + "".join(
                f'<figure><img src="report/{n}"><figcaption>{frame(c)}, score {s:.4g}</figcaption></figure>'
                for n, c, s in goods),
            "<h2>Time per stage (s)</h2><table>" + "".join(
                f"<tr><td>{html.escape(k)}</td><td>{v:.1f}</td></tr>" for k, v in stages.times.items()) + "</table>"]
    page = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>protospect station report</title>"
            "<style>body{font-family:sans-serif;margin:2em} figure{display:inline-block;margin:0.5em}</style></head>"
            "<body>" + "\n".join(body) + "</body></html>\n")
    (tmp / station.REPORT).write_text(page, encoding="utf-8")
