"""The ``usx-stream`` command line.

Each subcommand lives in its own module ``usx_stream.commands.<name>`` exposing
``add_arguments(parser)``, ``run(args) -> int`` and a module docstring (first line = help, the rest =
description with examples). Modules are imported only when their subcommand runs, so ``--help`` and
light commands start fast (torch/open3d cost ~4 s to import). Benchmarks are scripts, not subcommands:
``python benchmarks/<name>.py``.

Exit status: 0 success; 1 failure at run time (a bug shows its traceback); 2 bad input. Bad input is
an :class:`~usx_stream.errors.InputError` (a launch-file key, a malformed PLUS device set or sequence
file, ...) or an input path that cannot be opened; it is printed as one line,
``usx-stream COMMAND: error: MESSAGE``, and with ``-vv`` after its traceback.

A command that records how a file was made uses ``args.command_line``: the arguments :func:`main` parsed,
not ``sys.argv``, which belongs to the caller when ``main([...])`` runs in-process.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import sys
import traceback

from .errors import InputError

EXIT_INPUT_ERROR = 2  # as argparse exits for a bad option
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
# An input path that cannot be opened (the exception carries the file name) is bad input too.
_PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)

# name -> (module, one-line help). Keep the help here so `usx-stream --help` imports nothing heavy.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("usx_stream.commands.run", "run the streaming node from a launch file"),
    "demo": ("usx_stream.commands.demo", "simulate a phantom session, run it through the node, write demo_out/"),
    "simulate": ("usx_stream.commands.simulate", "write a simulated phantom session (sequence, X-ray, meshes)"),
    "compound": ("usx_stream.commands.compound", "reconstruct a volume from a PLUS sequence (VolumeReconstructor drop-in)"),
    "replay": ("usx_stream.commands.replay", "serve a PLUS sequence file over OpenIGTLink like PlusServer"),
    "listen": ("usx_stream.commands.listen", "connect to an OpenIGTLink server and print what arrives"),
    "dataset": ("usx_stream.commands.dataset", "generate paired US/X-ray/ground-truth completion data (HDF5)"),
    "train": ("usx_stream.commands.train", "train the completion network"),
    "eval": ("usx_stream.commands.eval", "evaluate completion models and compare them"),
    "error-head": ("usx_stream.commands.error_head", "fit or check the per-point completion uncertainty (error head)"),
    "export": ("usx_stream.commands.export", "export the completion network (torch.export / ONNX) and check it"),
    "calibrate-xray": ("usx_stream.commands.calibrate_xray", "compute XrayToReference from fiducial pairs"),
    "score": ("usx_stream.commands.score", "score a recording's published surfaces against a CT or meshes, registered"),
    "shape-model": ("usx_stream.commands.shape_model", "build or sample the lumbar spine shape model learnt from real CT surfaces"),
}


def _available() -> dict[str, tuple[str, str]]:
    found = {}
    for name, (module, help_) in SUBCOMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            found[name] = (module, help_)
    return found


def build_parser(argv_command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="usx-stream",
        description="Real-time completion of vertebra surfaces from tracked ultrasound and one lateral X-ray.",
        epilog="Run 'usx-stream COMMAND --help' for the options and examples of a command.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_) in _available().items():
        if argv_command == name:
            module = importlib.import_module(module_name)
            doc = (module.__doc__ or help_).strip()
            p = sub.add_parser(name, help=help_, description=doc,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
            module.add_arguments(p)
            p.set_defaults(_module=module)
        else:
            sub.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    args.command_line = command_line(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose + 1, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return EXIT_INPUT_ERROR
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C: the user's choice, not a failure to explain with a traceback
        if args.verbose >= 2:
            traceback.print_exc()
        print(f"usx-stream {args.command}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except (InputError, *_PATH_ERRORS) as e:
        if isinstance(e, OSError) and e.filename is None:
            raise  # not about a path the user gave: a bug, keep its traceback
        if args.verbose >= 2:
            traceback.print_exc()
        print(f"usx-stream {args.command}: error: {input_error_message(e)}", file=sys.stderr, flush=True)
        return EXIT_INPUT_ERROR


def command_line(argv: list[str]) -> str:
    """The shell command that runs ``main(argv)``: what a command records as the maker of its output file."""
    return "usx-stream " + shlex.join(argv)


def input_error_message(error: BaseException) -> str:
    """``error`` as one line: an OSError as ``path: reason``, anything else its message, whitespace folded."""
    if isinstance(error, OSError) and error.filename is not None:
        text = f"{error.filename}: {error.strerror or error}"
        if error.filename2 is not None:
            text += f" ({error.filename2})"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
