"""Where an artifact's shot images are (manifest "shots" + "data"), for --check and default INT8 calibration."""
from __future__ import annotations

from pathlib import Path

from protospect.errors import DataError


def shot_paths(manifest: dict) -> list[Path]:
    """The K good images the artifact was made from; DataError when they are not on this machine."""
    data = manifest.get("data") or {}
    root = Path(str(data.get("root", "")))
    category = data.get("category")
    folders = [root / category / "train" / "good"] if category else []
    folders.append(root / "train" / "good")  # data root given as the category folder itself
    names = manifest.get("shots") or []
    for folder in folders:
        paths = [folder / name for name in names]
        if paths and all(p.is_file() for p in paths):
            return paths
    raise DataError(f"the artifact's {len(names)} shot image(s) are not under {folders[0] if folders else root}; "
                    "pass a folder of good images (--check-images DIR / --int8-calib-images DIR)")
