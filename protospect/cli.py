"""`protospect <command>`: one argparse sub-command per module, imported only when it runs.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``. A command whose
optional dependencies are missing stays listed and says which extra to install.
Exit codes: 0 ok, 1 user error (one line, no traceback), 2 internal error.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from protospect import __version__
from protospect.errors import MissingDependencyError, ProtospectError

# name -> (module, one-line help, pip extra it needs)
COMMANDS = {
    "demo-data": ("protospect.synthetic_parts", "write the embedded procedurally generated demo part set", "runtime"),
    "train": ("protospect.training.cli_train", "train a model on K good images and write an artifact", "train"),
    "eval": ("protospect.training.cli_eval", "few-shot evaluation over shots and seeds -> results.json", "train"),
    "export": ("protospect.export.cli_export", "artifact -> ONNX (FP32, --fp16, --int8)", "train"),
    "build-engine": ("protospect.export.cli_build_engine", "ONNX -> TensorRT engine + sidecar JSON", "trt"),
    "serve": ("protospect.runtime.cli_serve", "run a model on a camera/video/folder and log every verdict", "runtime"),
    "calibrate": ("protospect.runtime.cli_calibrate", "OK/NG threshold from good parts seen by the station's camera", "runtime"),
    "bench": ("protospect.runtime.cli_bench", "per-stage latency of a model on a source", "runtime"),
    "soak": ("protospect.runtime.soak", "replay a source for N frames and print resident memory", "runtime"),
}


def _load(name: str):
    module, _, extra = COMMANDS[name]
    try:
        return importlib.import_module(module), None
    except MissingDependencyError as err:
        return None, str(err)
    except ImportError as err:
        return None, f"unavailable ({err.name or err}): pip install 'protospect[{extra}]'"


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="protospect", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"protospect {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show debug logs and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text, _) in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text, add_help=False)
            continue
        module, why = _load(name)
        p = sub.add_parser(name, help=help_text if module else f"{help_text} [{why}]", description=help_text)
        if module is not None:
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
        else:
            p.set_defaults(_unavailable=why)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Import only the chosen command's module, so `protospect serve` never pays for torch.
    chosen = next((a for a in argv if a in COMMANDS), None)
    args = build_parser(only=chosen).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "_unavailable", None):
        print(f"protospect {args.command}: {args._unavailable}", file=sys.stderr)
        return 1
    if not hasattr(args, "_run"):
        build_parser(only="").print_help()
        return 1
    try:
        return int(args._run(args) or 0)
    except ProtospectError as err:
        if args.verbose:
            raise
        print(f"protospect {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"protospect {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
