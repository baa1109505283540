"""`protospect register --source SRC --out STATION_DIR --shots K --good N [--frr A] [--review-frr B] [--method pcsnet]
[--preset edge] [--int8] [--every N] [--allow-uncertified] [--trigger plc --modbus HOST:PORT ...]`: register a part at the station in one command
(training/register.py; the bundle's contract is protospect/station.py). Serve it with `protospect serve STATION_DIR`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from protospect.runtime.cli_calibrate import add_rate_arguments
from protospect.training.cli_train import add_method_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True,
                   help="the station's own source: camera index, URL, GStreamer pipeline, genicam:..., video file or "
                        "image folder (live sources: Enter confirms each capture)")
    p.add_argument("--out", required=True, type=Path, metavar="STATION_DIR", help="station folder to create (must not exist)")
    p.add_argument("--shots", required=True, type=int, metavar="K", help="good parts to learn from (captured first)")
    p.add_argument("--good", required=True, type=int, metavar="N",
                   help="further good parts that set the thresholds (N >= 1/A - 1: 99 for A = 1 %%, 19 for 5 %%)")
    add_rate_arguments(p)
    p.add_argument("--int8", action="store_true", help="also export an INT8 graph and serve it (thresholds measured on it)")
    p.add_argument("--every", type=int, default=1, metavar="N", help="files and folders: take every N-th frame (default 1)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    add_method_arguments(p, default_method="pcsnet")
    line = p.add_argument_group("line settings stored in the bundle: `serve STATION_DIR` uses them unless its own "
                                "flags say otherwise (docs/integration.md)")
    line.add_argument("--trigger", choices=("free", "plc", "hardware"), default=None, help="serve's --trigger")
    for flag, metavar in (("--trigger-source", "LINE"), ("--modbus", "[HOST]:PORT"), ("--opcua", "opc.tcp://HOST:PORT"),
                          ("--mqtt", "mqtt://HOST:PORT/PREFIX"), ("--station", "NAME")):
        line.add_argument(flag, default=None, metavar=metavar, help=f"serve's {flag}")


def run(args: argparse.Namespace) -> int:
    from protospect.training.register import register

    out = register(args)
    print(f"station registered: {out}\n  serve it:  protospect serve {out} --source {args.source} --sink OUT/\n"
          f"  report:    {out / 'report.html'}")
    return 0
