"""Torch-free test fixtures: ONNX models with the protospect I/O contract, built with onnx.helper,
and frames of a simple part with an optional planted defect.

The "difference from a reference" model is a real anomaly model with the contract's I/O:
    map   = box blur of mean_c |image/255 - ref|          anomaly_map [1,1,H,W] (H x W = the reference's size)
    score = max(map)                                       image_score [1]
Run as a script to write one for `protospect bench` / `serve`:
    python tests/runtime/fixture_models.py --out /tmp/fixture --size 256
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def render_part(rng: np.random.Generator, size: tuple[int, int] = (160, 120), defect: bool = False,
                noise: float = 2.0) -> np.ndarray:
    """A BGR uint8 frame (W x H = size): a machined disc on a dark belt; defect = a dark pit on the disc."""
    w, h = size
    img = np.full((h, w, 3), 50, np.uint8)
    cx, cy, r = w // 2, h // 2, int(0.38 * min(w, h))
    cv2.circle(img, (cx, cy), r, (170, 175, 180), -1, cv2.LINE_AA)
    cv2.circle(img, (cx, cy), int(0.55 * r), (120, 125, 130), 3, cv2.LINE_AA)
    cv2.circle(img, (cx, cy), int(0.15 * r), (30, 30, 30), -1, cv2.LINE_AA)
    if defect:
        ang = rng.uniform(0, 2 * np.pi)
        rad = rng.uniform(0.65, 0.85) * r
        px, py = int(cx + rad * np.cos(ang)), int(cy + rad * np.sin(ang))
        cv2.ellipse(img, (px, py), (max(3, r // 5), max(2, r // 8)), float(rng.uniform(0, 180)), 0, 360, (20, 25, 90), -1, cv2.LINE_AA)
    if noise:
        img = np.clip(img.astype(np.float32) + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
    return img


def reference_rgb(size: int | tuple[int, int], frame_size=(160, 120)) -> np.ndarray:
    """The noise-free good part as the model sees it: RGB, resized to the model input (S, or (H, W)) like the
    runtime does."""
    from protospect.imageio import resize_image, to_rgb_uint8

    return resize_image(to_rgb_uint8(render_part(np.random.default_rng(0), frame_size, noise=0.0)), size)


def _meta(model: onnx.ModelProto, props: dict) -> None:
    """Set the graph's metadata as export does (protospect.metadata.set_metadata: metadata_sha256 over the keys)."""
    from protospect.metadata import set_metadata

    set_metadata(model, {k: v if isinstance(v, str) else json.dumps(v) for k, v in props.items()})


def contract_props(size: int | list[int], threshold: float, map_range, graph: str = "full", **extra) -> dict:
    """The protospect.* props export writes (protospect.metadata.build_metadata), for a refdiff model
    (``size``: S, or [H, W] as a non-square model's meta holds it)."""
    from protospect.metadata import build_metadata

    meta = {"method": "refdiff", "preset": "test", "input_size": size, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    calibration = {"threshold": float(threshold), "map_range": [float(x) for x in map_range]}
    return build_metadata(meta, calibration, artifact_sha256="0" * 64, graph=graph, extra=extra)


def _normalised_nchw_nodes(ref_rgb: np.ndarray):
    """image uint8 [1,H,W,3] -> |x/255 - ref| mean over channels as [1,1,H,W] ('diff')."""
    ref = (ref_rgb.astype(np.float32) / 255.0)[None]
    inits = [numpy_helper.from_array(ref, "ref"), numpy_helper.from_array(np.array(255.0, np.float32), "c255")]
    nodes = [
        helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["xf", "c255"], ["x01"]),
        helper.make_node("Sub", ["x01", "ref"], ["d"]),
        helper.make_node("Abs", ["d"], ["ad"]),
        helper.make_node("ReduceMean", ["ad"], ["m_nhwc"], axes=[3], keepdims=1),
        helper.make_node("Transpose", ["m_nhwc"], ["diff"], perm=[0, 3, 1, 2]),
    ]
    return nodes, inits


def _meta_size(h: int, w: int) -> int | list[int]:
    """meta["input_size"] as training writes it: S when square, [H, W] otherwise."""
    return h if h == w else [h, w]


def _box_blur(src: str, dst: str, ksize: int):
    kernel = np.full((1, 1, ksize, ksize), 1.0 / ksize ** 2, np.float32)
    pad = ksize // 2
    return ([helper.make_node("Conv", [src, "blur_w"], [dst], pads=[pad] * 4)],
            [numpy_helper.from_array(kernel, "blur_w")])


def numpy_refdiff(img_u8, ref_u8, blur=5):
    """What build_diff_model's graph computes, in numpy: box blur of the channel mean of |img - ref| (zero padding)."""
    d = np.abs(img_u8.astype(np.float32) / 255 - ref_u8.astype(np.float32) / 255).mean(axis=2)
    pad = blur // 2
    padded = np.pad(d, pad)
    out = np.zeros_like(d)
    for dy in range(blur):
        for dx in range(blur):
            out += padded[dy:dy + d.shape[0], dx:dx + d.shape[1]]
    return out / blur ** 2


def build_diff_model(path: str | Path, ref_rgb: np.ndarray, *, threshold: float, map_range=(0.0, 0.5),
                     blur: int = 5, props_override: dict | None = None, map_pool: int = 1, batch: int | str = 1) -> Path:
    """The model's input is the reference's H x W (non-square when it is). ``map_pool`` > 1 average-pools the
    map: anomaly_map [1,1,H/p,W/p], against the contract (load-check tests).
    ``batch`` "dynamic" gives the batch dimension a name (as export --batch dynamic does, with its metadata)."""
    n = "batch" if batch == "dynamic" else batch
    h, w = ref_rgb.shape[:2]
    nodes, inits = _normalised_nchw_nodes(ref_rgb)
    blurred = "anomaly_map" if map_pool == 1 else "blurred"
    bn, bi = _box_blur("diff", blurred, blur)
    nodes += bn
    if map_pool > 1:
        nodes.append(helper.make_node("AveragePool", [blurred], ["anomaly_map"], kernel_shape=[map_pool] * 2,
                                      strides=[map_pool] * 2))
    nodes.append(helper.make_node("ReduceMax", ["anomaly_map"], ["score0"], axes=[1, 2, 3], keepdims=0))
    inits += bi
    graph = helper.make_graph(
        nodes, "refdiff",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [n, h, w, 3])],
        [helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [n, 1, h // map_pool, w // map_pool]),
         helper.make_tensor_value_info("image_score", TensorProto.FLOAT, [n])],
        inits)
    # ReduceMax over axes 1-3 of [1,1,S,S] is already [1]: rename instead of an extra node
    graph.node[-1].output[0] = "image_score"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    props = contract_props(_meta_size(h, w), threshold, map_range)
    if batch != 1:
        props["protospect.batch"] = str(batch)
    props.update(props_override or {})
    _meta(model, props)
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_split_model(folder: str | Path, ref_rgb: np.ndarray, *, k: int, cell: int, threshold: float,
                      map_range=(0.0, 0.5), bank: np.ndarray | None = None) -> Path:
    """features.onnx (cell-averaged RGB as queries, D=3), bank.npy (the reference's cells), head.onnx.

    head: map = upsample(sqrt(max(mean_k knn_sqdist, 0))), score = max(map).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    h, w = ref_rgb.shape[:2]
    gh, gw = h // cell, w // cell
    n = gh * gw
    c255 = numpy_helper.from_array(np.array(255.0, np.float32), "c255")
    fnodes = [
        helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["xf", "c255"], ["x01"]),
        helper.make_node("Transpose", ["x01"], ["x_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("AveragePool", ["x_nchw"], ["pooled"], kernel_shape=[cell, cell], strides=[cell, cell]),
        helper.make_node("Reshape", ["pooled", "shape_q"], ["q_cn"]),
        helper.make_node("Transpose", ["q_cn"], ["queries"], perm=[0, 2, 1]),
    ]
    fgraph = helper.make_graph(
        fnodes, "features", [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, h, w, 3])],
        [helper.make_tensor_value_info("queries", TensorProto.FLOAT, [1, n, 3])],
        [c255, numpy_helper.from_array(np.array([1, 3, n], np.int64), "shape_q")])
    fmodel = helper.make_model(fgraph, opset_imports=[helper.make_opsetid("", OPSET)])
    fmodel.ir_version = 8
    if bank is None:
        ref = ref_rgb.astype(np.float32) / 255.0
        bank = ref.reshape(gh, cell, gw, cell, 3).mean(axis=(1, 3)).reshape(n, 3)
    bank = np.ascontiguousarray(bank, np.float32)
    np.save(folder / "bank.npy", bank)
    bank_sha = hashlib.sha256(bank.tobytes()).hexdigest()  # what export writes: the bank's float32 bytes
    _meta(fmodel, contract_props(_meta_size(h, w), threshold, map_range, graph="features", split_k=k, grid=[gh, gw], bank_sha256=bank_sha))
    onnx.checker.check_model(fmodel)
    onnx.save(fmodel, str(folder / "features.onnx"))

    hnodes = [
        helper.make_node("ReduceMean", ["knn_sqdist"], ["mean_k"], axes=[2], keepdims=0),
        helper.make_node("Max", ["mean_k", "zero"], ["clamped"]),
        helper.make_node("Sqrt", ["clamped"], ["dist"]),
        helper.make_node("Reshape", ["dist", "shape_grid"], ["grid_map"]),
        helper.make_node("Resize", ["grid_map", "", "", "out_size"], ["anomaly_map"], mode="nearest"),
        helper.make_node("ReduceMax", ["anomaly_map"], ["image_score"], axes=[1, 2, 3], keepdims=0),
    ]
    hgraph = helper.make_graph(
        hnodes, "head", [helper.make_tensor_value_info("knn_sqdist", TensorProto.FLOAT, [1, n, k])],
        [helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [1, 1, h, w]),
         helper.make_tensor_value_info("image_score", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
         numpy_helper.from_array(np.array([1, 1, gh, gw], np.int64), "shape_grid"),
         numpy_helper.from_array(np.array([1, 1, h, w], np.int64), "out_size")])
    hmodel = helper.make_model(hgraph, opset_imports=[helper.make_opsetid("", OPSET)])
    hmodel.ir_version = 8
    _meta(hmodel, contract_props(_meta_size(h, w), threshold, map_range, graph="head", bank_sha256=bank_sha))
    onnx.checker.check_model(hmodel)
    onnx.save(hmodel, str(folder / "head.onnx"))
    return folder


def calibrate_threshold(model_path: Path, good_frames_bgr: list[np.ndarray], margin: float = 1.5) -> float:
    """Threshold from good frames only (never from the frames a test then judges)."""
    import onnxruntime as ort

    from protospect.imageio import resize_image, to_rgb_uint8

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    size = tuple(sess.get_inputs()[0].shape[1:3])  # (H, W)
    scores = [float(sess.run(["image_score"], {"image": resize_image(to_rgb_uint8(f), size)[None]})[0][0])
              for f in good_frames_bgr]
    return max(scores) * margin


def write_video(path: Path, frames_bgr: list[np.ndarray], fps: float = 10.0) -> Path:
    h, w = frames_bgr[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError("this OpenCV cannot write MJPG .avi")
    for f in frames_bgr:
        writer.write(f)
    writer.release()
    return path


def decode_video(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    return frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for model.onnx and a replay video parts.avi")
    ap.add_argument("--size", type=int, default=256, help="model input size S")
    ap.add_argument("--frames", type=int, default=200, help="frames in the video (every 10th has a defect)")
    ap.add_argument("--frame-size", default="640x480", help="video frame size WxH")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fw, fh = (int(v) for v in args.frame_size.split("x"))
    ref = reference_rgb(args.size, (fw, fh))
    tmp = build_diff_model(out / "model.onnx", ref, threshold=1.0)
    rng = np.random.default_rng(1)
    # Calibrate on good frames that went through the same MJPG codec as the replay video.
    good = decode_video(write_video(out / "good.avi", [render_part(rng, (fw, fh)) for _ in range(8)]))
    thr = calibrate_threshold(tmp, good)
    build_diff_model(out / "model.onnx", ref, threshold=thr)
    frames = [render_part(rng, (fw, fh), defect=(i % 10 == 5)) for i in range(args.frames)]
    write_video(out / "parts.avi", frames)
    print(f"wrote {out / 'model.onnx'} (S={args.size}, threshold={thr:.4f}) and {out / 'parts.avi'} ({args.frames} frames {fw}x{fh})")


if __name__ == "__main__":
    main()
