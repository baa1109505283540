"""runtime/station_config.py (issue 18): the [[camera]] tables of a station file, and one-line errors naming
the table and key. Only the parser exists; serve --config is not written yet."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from protospect.errors import ConfigError
from protospect.runtime.station_config import CameraConfig, load_station, parse_station

MINIMAL = '''
[[camera]]
name = "left"
source = "left.mp4"
model = "flange.onnx"

[[camera]]
name = "right"
source = 0
model = "/models/flange.engine"
threshold = 0.5
trigger = "plc"
sink = "runs/right"
'''


def test_minimal_and_full_tables_parse(tmp_path):
    path = tmp_path / "station.toml"
    path.write_text(MINIMAL)
    cfg = load_station(path)
    assert [c.name for c in cfg.cameras] == ["left", "right"]
    assert cfg.camera("left") == CameraConfig(name="left", source="left.mp4", model=tmp_path / "flange.onnx")
    right = cfg.camera("right")
    assert (right.source, right.model, right.threshold, right.trigger, right.sink) == \
        ("0", Path("/models/flange.engine"), 0.5, "plc", tmp_path / "runs" / "right")


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as err:
        parse_station(text, "st.toml")
    message = str(err.value)
    assert "\n" not in message and message.startswith("st.toml: ")
    return message


CAM = '[[camera]]\nname = "a"\nsource = "a.mp4"\nmodel = "m.onnx"\n'


@pytest.mark.parametrize("text, expected", [
    (CAM + 'treshold = 0.3\n', "[[camera]] #1 ('a') key 'treshold': unknown key (allowed: name, source, model, threshold, trigger, sink)"),
    (CAM + CAM, "[[camera]] #2 ('a') key 'name': camera name 'a' is already used by [[camera]] #1"),
    (CAM + '[[camera]]\nname = "b"\nsource = "b.mp4"\n', "[[camera]] #2 ('b') key 'model': missing"),
    ('[[camera]]\nsource = "b.mp4"\nmodel = "m.onnx"\n', "[[camera]] #1 key 'name': missing"),
    (CAM + 'threshold = "high"\n', "[[camera]] #1 ('a') key 'threshold': must be a number, got a string"),
    (CAM + 'threshold = nan\n', "key 'threshold': must be finite"),
    (CAM + 'threshold = true\n', "key 'threshold': must be a number, got a boolean"),
    ('[[camera]]\nname = 3\nsource = "a"\nmodel = "m"\n', "[[camera]] #1 key 'name': must be a string, got an integer"),
    ('[[camera]]\nname = "a"\nsource = ["x"]\nmodel = "m"\n', "key 'source': must be a string or a camera index, got an array"),
    (CAM + 'trigger = "sometimes"\n', "key 'trigger': 'sometimes' is not one of free, plc, hardware"),
    (CAM + 'sink = 5\n', "key 'sink': must be a string, got an integer"),
    ('[[camera]]\nname = " "\nsource = "a"\nmodel = "m"\n', "key 'name': is empty"),
    ('[camera]\nname = "a"\n', "write each camera as [[camera]], not [camera]"),
    ('sink = "x"\n' + CAM, "unknown top-level key 'sink'"),
    ('', "no [[camera]] table"),
    ('[[camera]\nname = "a"', "not valid TOML"),
])
def test_errors_are_one_line_naming_table_and_key(text, expected):
    assert expected in _error(text)


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="station file not found"):
        load_station(tmp_path / "nope.toml")


def test_python_310_path_uses_tomli_or_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tomllib", None)  # as on Python 3.10: no tomllib in the standard library
    try:
        import tomli  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(ConfigError, match="pip install tomli"):
            parse_station(CAM)
        monkeypatch.setitem(sys.modules, "tomli", None)
    else:
        assert parse_station(CAM).cameras[0].name == "a"
        monkeypatch.setitem(sys.modules, "tomli", None)
        with pytest.raises(ConfigError, match="needs the tomli backport: pip install tomli"):
            parse_station(CAM)
