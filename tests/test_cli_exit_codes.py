"""The exit-code scheme of protospect/cli.py: 0 ok, 1 user error, 2 usage error, 3 internal error (issue 20),
and a command whose pip extra is missing says which one to install (one line, exit 1)."""
from __future__ import annotations

import errno
import types

import pytest

from protospect import cli
from protospect.errors import ConfigError


def _shown(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


@pytest.fixture
def fake_command(monkeypatch):
    """Registers `protospect boom --what X`: raises what X names."""
    def run(args):
        if args.what == "user":
            raise ConfigError("--what user is a user mistake")
        if args.what == "disk":
            raise OSError(errno.ENOSPC, "No space left on device", "/full/model.onnx")
        if args.what == "bug":
            raise ZeroDivisionError("division by zero")
        if args.what == "missing":
            raise ModuleNotFoundError("No module named 'torch'", name="torch")
        return 0

    module = types.ModuleType("protospect_fake_boom")
    module.add_arguments = lambda p: p.add_argument("--what", required=True)
    module.run = run
    monkeypatch.setitem(__import__("sys").modules, "protospect_fake_boom", module)
    monkeypatch.setitem(cli.COMMANDS, "boom", ("protospect_fake_boom", "raise on purpose", "runtime"))


@pytest.mark.parametrize("what, code, needle", [
    ("ok", 0, None),
    ("user", 1, "protospect boom: error: --what user is a user mistake"),
    ("disk", 1, "protospect boom: error: No space left on device: /full/model.onnx"),
    ("missing", 1, "pip install 'protospect[runtime]'"),
    ("bug", 3, "internal error (a bug in protospect"),
])
def test_exit_code_scheme(fake_command, capsys, what, code, needle):
    assert cli.main(["boom", "--what", what]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if needle is None:
        assert err == ""
    else:
        assert len(_shown(err)) == 1 and needle in err, err


def test_internal_error_shows_the_traceback_only_with_verbose(fake_command, capsys):
    assert cli.main(["--verbose", "boom", "--what", "bug"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err


@pytest.mark.parametrize("argv", [["boom"], ["boom", "--what", "ok", "--bogus"], ["no-such-command"], []])
def test_usage_errors_exit_2(fake_command, capsys, argv):
    with pytest.raises(SystemExit) as exc:
        rc = cli.main(argv)
        raise SystemExit(rc)
    assert exc.value.code == 2


@pytest.mark.parametrize("command", ["train", "eval", "export"])
def test_missing_torch_names_the_extra_in_one_line(monkeypatch, capsys, command):
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    rc = cli.main([command, "--data", "somewhere", "--shots", "1", "--out", "x"])
    err = capsys.readouterr().err
    assert rc == 1 and len(_shown(err)) == 1, err
    assert "needs torch" in err and "pip install 'protospect[train]'" in err and "Traceback" not in err
    listing = cli.build_parser().format_help()
    assert "needs torch" in listing  # the listing says so before anyone tries
