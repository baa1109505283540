"""`--set KEY=VALUE` of the wrong type is one line naming the key and the type it takes, before any work
(issue 20: `train --set steps=abc` said "'<' not supported between instances of 'str' and 'int'")."""
from __future__ import annotations

import pytest

from protospect.cli import main

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("command, method, setting, needle", [
    ("train", "pcsnet", "steps=abc", "'steps' takes an integer"),
    ("train", "pcsnet", "steps=2.5", "'steps' takes an integer"),
    ("train", "pcsnet", "steps=true", "'steps' takes an integer"),
    ("train", "patchcore", "input_size=[64]", "'input_size' takes an integer"),
    ("eval", "pcsnet", "steps=abc", "'steps' takes an integer"),
    ("eval", "patchcore", "stages=3", "'stages' takes a JSON list"),
])
def test_wrong_type_names_key_and_type(tmp_path, capsys, command, method, setting, needle):
    shots = ["--shots", "1"] if command == "train" else ["--shots", "1", "--seeds", "0"]
    rc = main([command, "--data", str(tmp_path / "nowhere"), "--method", method, *shots, "--out", str(tmp_path / "o"),
               "--set", setting])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0] and f"--set {setting.split('=')[0]}=" in lines[0], lines[0]
    assert not (tmp_path / "o").exists()


def test_right_types_pass_the_check():
    from protospect.training.cli_train import check_setting_types, parse_settings

    check_setting_types("pcsnet", "edge", parse_settings(["steps=3", "input_size=64"]))
    check_setting_types("patchcore", "edge", parse_settings(["stages=[2, 3]", "input_size=64", "unknown_key=1"]))
