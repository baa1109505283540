"""runtime/station_config.py (issue 18): the [[camera]] tables of a station file, and one-line errors naming
the table and key; the per-camera PLC endpoints and hardware trigger line, the [line] MQTT feed."""
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
modbus = ":5021"
opcua = "opc.tcp://127.0.0.1:4841"
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
    assert (right.modbus, right.opcua, right.opcua_user) == (":5021", "opc.tcp://127.0.0.1:4841", None)
    assert (cfg.mqtt, cfg.station) == (None, None)


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as err:
        parse_station(text, "st.toml")
    message = str(err.value)
    assert "\n" not in message and message.startswith("st.toml: ")
    return message


CAM = '[[camera]]\nname = "a"\nsource = "a.mp4"\nmodel = "m.onnx"\n'


@pytest.mark.parametrize("text, expected", [
    (CAM + 'treshold = 0.3\n', "[[camera]] #1 ('a') key 'treshold': unknown key (allowed: name, source, model, threshold, trigger, sink, modbus"),
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


PLC = CAM + 'trigger = "plc"\n'
CAM_B = '[[camera]]\nname = "b"\nsource = "b.mp4"\nmodel = "m.onnx"\n'


def test_plc_hardware_and_line_keys_parse(tmp_path):
    text = ('[line]\nmqtt = "mqtt://broker:1883/plant/hall2"\nstation = "st7"\n' + PLC + 'modbus = "127.0.0.1:5021"\n'
            + CAM_B + 'trigger = "plc"\nopcua = "opc.tcp://0.0.0.0:4841"\nopcua_user = "users.txt"\n'
            + '[[camera]]\nname = "c"\nsource = "genicam:/opt/x.cti"\nmodel = "m.onnx"\ntrigger = "hardware"\n'
            + 'trigger_source = "Line1"\n')
    cfg = parse_station(text, tmp_path / "st.toml")
    a, b, c = cfg.cameras
    assert (a.modbus, a.opcua, b.modbus, b.opcua) == ("127.0.0.1:5021", None, None, "opc.tcp://0.0.0.0:4841")
    assert b.opcua_user == tmp_path / "users.txt" and c.trigger_source == "Line1" and c.trigger == "hardware"
    assert (cfg.mqtt, cfg.station) == ("mqtt://broker:1883/plant/hall2", "st7")


@pytest.mark.parametrize("text, expected", [
    (PLC, "[[camera]] #1 ('a') key 'trigger': 'plc' needs this camera's PLC endpoint: modbus = "),
    (PLC + 'modbus = "5021"\n', "[[camera]] #1 ('a') key 'modbus': expected [HOST]:PORT, e.g. modbus = "),
    (PLC + 'modbus = "h:99999"\n', "key 'modbus': expected [HOST]:PORT"),
    (PLC + 'opcua = "127.0.0.1:4841"\n', "[[camera]] #1 ('a') key 'opcua': expected opc.tcp://HOST:PORT"),
    (PLC + 'modbus = 5021\n', "key 'modbus': must be a string, got an integer"),
    (CAM + 'modbus = ":5021"\n', "key 'modbus': carries the PLC trigger handshake: add trigger = \"plc\""),
    (PLC + 'opcua = "opc.tcp://0.0.0.0:4841"\n', "key 'opcua': anonymous OPC UA is allowed on 127.0.0.1 only"),
    (PLC + 'modbus = ":5021"\nopcua_user = "u.txt"\n', "key 'opcua_user': is for the camera's OPC UA server"),
    (PLC + 'modbus = ":5021"\n' + CAM_B + 'trigger = "plc"\nmodbus = "127.0.0.1:5021"\n',
     "[[camera]] #2 ('b') key 'modbus': port 5021 is also camera 'a''s modbus port"),
    (PLC + 'modbus = ":5021"\nopcua = "opc.tcp://127.0.0.1:5021"\n',
     "[[camera]] #1 ('a') key 'opcua': port 5021 is also camera 'a''s modbus port"),
    (CAM + 'trigger = "hardware"\n', "key 'trigger': 'hardware' needs a GenICam camera"),
    (CAM + 'trigger_source = "Line1"\n', "key 'trigger_source': sets the camera's hardware trigger line"),
    ('[line]\nmqtt = "broker:1883"\n' + CAM, "[line] key 'mqtt': expected mqtt://HOST[:PORT]/PREFIX"),
    ('[line]\nstation = "st7"\n' + CAM, "[line] key 'mqtt': missing"),
    ('[line]\nmqtt = "mqtt://b/p"\nbroker = "x"\n' + CAM, "[line] key 'broker': unknown key (allowed: mqtt, station"),
    ('[line]\nmqtt = "mqtt://b/p"\nstation = "st 7"\n' + CAM, "[line] key 'station': 'st 7' is an MQTT topic level"),
    ('[line]\nmqtt = "mqtt://b/p"\n[[camera]]\nname = "a/b"\nsource = "a"\nmodel = "m"\n',
     "[[camera]] #1 ('a/b') key 'name': with [line] mqtt the name is an MQTT topic level"),
    ('line = "mqtt://b/p"\n' + CAM, "'line' must be a table"),
])
def test_line_key_errors_are_one_line_naming_table_and_key(text, expected):
    assert expected in _error(text)
