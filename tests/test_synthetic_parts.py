"""The embedded demo set: deterministic, exact masks, MVTec layout, no torch needed."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

from protospect.errors import ConfigError, DataError
from protospect.synthetic_parts import CATEGORY, DEFECT_TYPES, render_part, write_mvtec_layout


def test_render_shapes_and_types():
    for defect in (None, *DEFECT_TYPES):
        img, mask = render_part(np.random.default_rng(0), size=96, defect=defect)
        assert img.shape == (96, 96, 3) and img.dtype == np.uint8
        assert mask.shape == (96, 96) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert (mask.sum() > 0) == (defect is not None)


def test_same_seed_same_pixels_other_seed_other_pixels():
    a = render_part(np.random.default_rng(3), 64, "scratch")
    b = render_part(np.random.default_rng(3), 64, "scratch")
    c = render_part(np.random.default_rng(4), 64, "scratch")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("defect", DEFECT_TYPES)
@pytest.mark.parametrize("jitter", [True, False])
def test_mask_marks_exactly_where_the_defect_changed_the_part(defect, jitter):
    """For one seed, the part with a defect differs from the part without it inside the mask only."""
    for seed in range(4):
        clean, none = render_part(np.random.default_rng(seed), 128, None, jitter=jitter)
        bad, mask = render_part(np.random.default_rng(seed), 128, defect, jitter=jitter)
        diff = np.abs(bad.astype(int) - clean.astype(int)).max(axis=2)
        assert none.sum() == 0 and mask.sum() > 0
        assert diff[mask == 0].max() == 0, "pixels outside the mask changed"
        changed = (diff[mask == 1] >= 8).mean()
        assert changed > 0.6, f"only {changed:.0%} of the {defect} mask is visibly changed"


def test_fixed_pose_parts_differ_only_by_noise_without_defect():
    a, _ = render_part(np.random.default_rng(1), 96, None, jitter=False)
    b, _ = render_part(np.random.default_rng(2), 96, None, jitter=False)
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.mean() < 3.5 and diff.max() < 25  # sensor noise (sigma 2) only
    c, _ = render_part(np.random.default_rng(3), 96, None, jitter=True)
    d, _ = render_part(np.random.default_rng(4), 96, None, jitter=True)
    assert np.abs(c.astype(int) - d.astype(int)).mean() > 5  # pose/texture jitter is real


def test_bad_arguments():
    with pytest.raises(ConfigError, match="unknown defect 'crack'"):
        render_part(np.random.default_rng(0), 64, "crack")
    with pytest.raises(ConfigError, match="too small"):
        render_part(np.random.default_rng(0), 16)


def test_layout_is_readable_and_masks_match(tmp_path):
    from protospect.imageio import read_mask, read_rgb

    cat_dir = write_mvtec_layout(tmp_path, seed=1, n_train=3, n_test_good=2, n_per_defect=2, size=64)
    assert cat_dir == tmp_path / CATEGORY and (cat_dir / "README.txt").is_file()
    assert len(list((cat_dir / "train" / "good").glob("*.png"))) == 3
    assert sorted(p.name for p in (cat_dir / "test").iterdir()) == sorted(["good", *DEFECT_TYPES])
    for defect in DEFECT_TYPES:
        images = sorted((cat_dir / "test" / defect).glob("*.png"))
        assert len(images) == 2
        for image in images:
            mask_file = cat_dir / "ground_truth" / defect / f"{image.stem}_mask.png"
            raw = cv2.imread(str(mask_file), cv2.IMREAD_UNCHANGED)
            assert raw.ndim == 2 and set(np.unique(raw)) == {0, 255}
            assert read_mask(mask_file, expected_hw=read_rgb(image).shape[:2]).sum() > 0
    assert not (cat_dir / "ground_truth" / "good").exists()


@pytest.mark.torch
def test_layout_loads_with_the_training_reader(tmp_path):
    pytest.importorskip("torch")
    from protospect.training.data import MVTecCategory, load_item

    write_mvtec_layout(tmp_path, seed=0, n_train=2, n_test_good=2, n_per_defect=1, size=64)
    cat = MVTecCategory(tmp_path, CATEGORY)
    assert cat.has_masks and cat.defect_types == sorted(DEFECT_TYPES) and len(cat.train_good) == 2
    for item in cat.test:
        _, mask = load_item(item, 64)
        assert (mask.sum() > 0) == bool(item.label)


def test_layout_is_deterministic_by_seed(tmp_path):
    a = write_mvtec_layout(tmp_path / "a", seed=5, n_train=2, n_test_good=1, n_per_defect=1, size=64)
    b = write_mvtec_layout(tmp_path / "b", seed=5, n_train=2, n_test_good=1, n_per_defect=1, size=64)
    c = write_mvtec_layout(tmp_path / "c", seed=6, n_train=2, n_test_good=1, n_per_defect=1, size=64)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 2 + 1 + 2 * len(DEFECT_TYPES)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)


def test_regenerates_its_own_output_but_never_foreign_folders(tmp_path):
    write_mvtec_layout(tmp_path, seed=0, n_train=3, n_test_good=1, n_per_defect=1, size=64)
    write_mvtec_layout(tmp_path, seed=0, n_train=1, n_test_good=1, n_per_defect=1, size=64)
    assert len(list((tmp_path / CATEGORY / "train" / "good").iterdir())) == 1  # no stale files
    foreign = tmp_path / "other"
    (foreign / CATEGORY).mkdir(parents=True)
    (foreign / CATEGORY / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not written by 'protospect demo-data'"):
        write_mvtec_layout(foreign)
    assert (foreign / CATEGORY / "precious.txt").is_file()


def test_cli_command(tmp_path, capsys):
    from protospect.cli import main

    assert main(["demo-data", "--out", str(tmp_path), "--size", "64", "--n-train", "2", "--n-test-good", "1",
                 "--n-per-defect", "1"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / CATEGORY) in out and "protospect eval" in out
    assert len(list((tmp_path / CATEGORY).rglob("*.png"))) == 2 + 1 + 2 * len(DEFECT_TYPES)
    # A folder it did not write is refused with one line and exit code 1.
    (tmp_path / "other" / CATEGORY).mkdir(parents=True)
    assert main(["demo-data", "--out", str(tmp_path / "other")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("protospect demo-data: error:") and "\n" not in err


def test_imports_and_renders_without_torch(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
                return None
        sys.meta_path.insert(0, BlockTorch())
        import numpy as np
        from protospect.synthetic_parts import render_part, write_mvtec_layout
        render_part(np.random.default_rng(0), 64, "dent")
        write_mvtec_layout({str(tmp_path)!r}, n_train=1, n_test_good=1, n_per_defect=1, size=64)
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_line_video_has_defects_exactly_in_the_listed_frames(tmp_path):
    import json

    import cv2

    from protospect.synthetic_parts import write_line_video

    path = write_line_video(tmp_path / "line.avi", n_frames=20, seed=3, defect_every=5, frame_size=(96, 96))
    truth = json.loads((tmp_path / "line.avi.json").read_text())
    assert truth["frames"] == 20
    assert sorted(int(i) for i in truth["defective"]) == [4, 9, 14, 19]
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 20


def test_good_parts_clip_has_no_defects_and_other_parts_than_the_line_video(tmp_path):
    import json

    import cv2

    from protospect.synthetic_parts import GOOD_LINE_STREAM, write_line_video

    line = write_line_video(tmp_path / "line.avi", n_frames=3, seed=0, frame_size=(64, 64))
    good = write_line_video(tmp_path / "good.avi", n_frames=3, seed=0, defect_every=None, frame_size=(64, 64),
                            stream=GOOD_LINE_STREAM)
    assert json.loads((tmp_path / "good.avi.json").read_text()) == {"frames": 3, "defective": {}}
    first = [cv2.VideoCapture(str(p)).read()[1].astype(int) for p in (line, good)]
    assert np.abs(first[0] - first[1]).mean() > 1.0  # a different part, not the line video's first frame
