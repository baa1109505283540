"""`protospect <command>`: one argparse sub-command per module, imported only when it runs.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``. A command whose
optional dependencies are missing stays listed and says which extra to install.

Exit codes (docs/contracts.md 0):
  0    ok
  1    user error: bad input, missing file or extra, unwritable or full target; one line on stderr, no traceback
  2    usage error: unknown option, missing or malformed argument (argparse's usage line and message)
  3    internal error: an exception protospect did not expect, i.e. a bug; one line saying so, the
       traceback only with --verbose
  130  interrupted (Ctrl-C / SIGINT)
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
import traceback

from protospect import __version__
from protospect.errors import MissingDependencyError, ProtospectError
from protospect.progress import quiet_when_redirected

EXIT_OK, EXIT_USER, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

# name -> (module, one-line help, pip extra it needs)
COMMANDS = {
    "demo-data": ("protospect.synthetic_parts", "write the embedded procedurally generated demo part set", "runtime"),
    "train": ("protospect.training.cli_train", "train a model on K good images and write an artifact", "train"),
    "eval": ("protospect.training.cli_eval", "few-shot evaluation over shots and seeds -> results.json", "train"),
    "export": ("protospect.export.cli_export", "artifact -> ONNX (FP32, --fp16, --int8)", "train"),
    "build-engine": ("protospect.export.cli_build_engine", "ONNX -> TensorRT engine + sidecar JSON", "trt"),
    "register": ("protospect.training.cli_register", "capture K shots + N good parts through the station's source, train, "
                 "export, set certified thresholds -> station bundle", "train"),
    "serve": ("protospect.runtime.cli_serve", "run a model on a camera/video/folder and log every verdict", "runtime"),
    "calibrate": ("protospect.runtime.cli_calibrate", "OK/NG threshold from good parts seen by the station's camera", "runtime"),
    "bench": ("protospect.runtime.cli_bench", "per-stage latency of a model on a source", "runtime"),
    "soak": ("protospect.runtime.cli_soak", "replay a source for N frames and print resident memory", "runtime"),
}


# pip extra -> the modules a command of that extra imports when it runs (checked without importing them:
# the command modules import their heavy dependencies lazily, so importing the module alone proves nothing)
EXTRA_NEEDS = {"train": ("torch",)}


def _missing_for(extra: str) -> str | None:
    for top in EXTRA_NEEDS.get(extra, ()):
        if importlib.util.find_spec(top) is None:
            return top
    return None


def _load(name: str):
    module, _, extra = COMMANDS[name]
    missing = _missing_for(extra)
    if missing is not None:
        return None, f"needs {missing}, which is not installed in this environment: pip install 'protospect[{extra}]'"
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
            p.set_defaults(_run=module.run, _usage=p.format_usage())  # for usage errors found after parsing
        else:
            p.set_defaults(_unavailable=why)
    return parser


def _os_error_line(err: OSError) -> str:
    """A failed read/write of the environment's making (full disk, read-only or missing target, no permission)."""
    what = err.strerror or str(err)
    where = f": {err.filename}" if err.filename else ""
    return f"{what}{where}"


# Native libraries' own log lines (OpenCV's "[ WARN:0] ... can't open camera by index", ffmpeg's "[tcp @ 0x..]
# Connection refused") would print around our one-line errors: errors only from OpenCV, nothing from ffmpeg
# (our error says what failed). Set before any command module imports cv2; a user's own setting wins.
NATIVE_LOG_ENV = {"OPENCV_LOG_LEVEL": "ERROR", "OPENCV_FFMPEG_LOGLEVEL": "-8", "OPENCV_VIDEOIO_DEBUG": "0"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    for key, value in NATIVE_LOG_ENV.items():
        os.environ.setdefault(key, value)
    # Before any command module is imported: tqdm reads TQDM_DISABLE once, when it is first imported.
    quiet_when_redirected()  # no carriage-return progress bars in a redirected log
    # Import only the chosen command's module, so `protospect serve` never pays for torch.
    chosen = next((a for a in argv if a in COMMANDS), None)
    parser = build_parser(only=chosen)
    args, unknown = parser.parse_known_args(argv)
    if getattr(args, "_unavailable", None):  # whatever its arguments: say which extra to install
        print(f"protospect {args.command}: {args._unavailable}", file=sys.stderr)
        return EXIT_USER
    if unknown:
        args = parser.parse_args(argv)  # usage errors: argparse prints usage and exits 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not hasattr(args, "_run"):
        build_parser(only="").print_help(sys.stderr)
        return EXIT_USAGE
    name = f"protospect {args.command}"
    try:
        return int(args._run(args) or 0)
    except ProtospectError as err:
        if args.verbose:
            traceback.print_exc()
        print(f"{name}: error: {err}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as err:  # full disk, read-only target, permission: the environment, not a bug
        if args.verbose:
            traceback.print_exc()
        print(f"{name}: error: {_os_error_line(err)}", file=sys.stderr)
        return EXIT_USER
    except ModuleNotFoundError as err:
        if args.verbose:
            traceback.print_exc()
        extra = COMMANDS[args.command][2]
        print(f"{name}: error: needs {err.name}, which is not installed: pip install 'protospect[{extra}]'", file=sys.stderr)
        return EXIT_USER
    except Exception as err:  # noqa: BLE001 (the one place a bug becomes an exit code)
        if args.verbose:
            traceback.print_exc()
            return EXIT_INTERNAL
        print(f"{name}: internal error (a bug in protospect, please report it): {type(err).__name__}: "
              f"{str(err).splitlines()[0] if str(err) else ''} (--verbose shows the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
