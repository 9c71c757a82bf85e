"""The ``kubefusion`` command line.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``; only the
chosen one is imported, so ``kubefusion --help`` and ``kubefusion data validate`` never pay for importing
TensorFlow or torch they do not use. A :class:`~kubefusion.errors.UserError` becomes one ``error:`` line on
stderr and exit code 2; a rank's failure under torchrun surfaces the same way. So does an ``OSError`` about a
path (a folder where a file was expected, a permission): the input's problem, not a traceback (``-v`` shows it).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys

from kubefusion import __version__
from kubefusion.errors import UserError

# (words, module, one-line help). The module implements add_arguments(parser) and run(args) -> int.
COMMANDS: list[tuple[tuple[str, ...], str, str]] = [
    (("data", "synth"), "kubefusion.data.synth", "write the built-in demo dataset"),
    (("data", "validate"), "kubefusion.data.validate", "check, join and count a dataset"),
    (("preprocess",), "kubefusion.preprocess.cli", "export the preprocessing graph (SavedModel + ONNX)"),
    (("train",), "kubefusion.train.cli", "train (under torchrun, or as one process)"),
    (("run",), "kubefusion.local", "run a MultimodalTrainJob file end to end (--local)"),
    (("export",), "kubefusion.serve.export", "export a trained checkpoint as ONNX"),
    (("predict",), "kubefusion.serve.predict", "predict with the ONNX artifacts alone"),
]


def _usage(group: str | None = None) -> str:
    head = f"kubefusion {group}: " if group else f"kubefusion {__version__}: multimodal training, local or on Kubernetes"
    lines = [head.rstrip(": ") + (" commands" if group else ""), "", "commands:"]
    for words, _, help_ in COMMANDS:
        if group is None or words[0] == group:
            lines.append(f"  {' '.join(words):<16} {help_}")
    lines += ["", "run 'kubefusion COMMAND --help' for a command's options"]
    return "\n".join(lines)


GROUPS = {words[0] for words, _, _ in COMMANDS if len(words) > 1}
"""First words that only name a group of commands (``data``): ``kubefusion data --help`` lists them."""


class Parser(argparse.ArgumentParser):
    """argparse, except that an option's value may start with a minus sign and a digit or a dot
    (``--numeric -0.19,0.7``): argparse alone takes only a plain negative number (``-0.19``) for a value, and
    reads ``-0.19,0.7`` as an unknown option. No kubefusion option looks like that, so nothing is ambiguous."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")


def _find(argv: list[str]) -> tuple[tuple[str, ...], str, str] | None:
    for entry in sorted(COMMANDS, key=lambda c: -len(c[0])):
        words = entry[0]
        if tuple(argv[: len(words)]) == words:
            return entry
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 1 and argv[0] == "help":
        argv = [*argv[1:], "--help"]  # `kubefusion help data` is `kubefusion data --help`, as in git and go
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"kubefusion {__version__}")
        return 0
    entry = _find(argv)
    if entry is None:
        group = argv[0] if argv[0] in GROUPS else None
        if group and (len(argv) == 1 or argv[1] in ("-h", "--help", "help")):
            print(_usage(group), file=sys.stdout if len(argv) > 1 else sys.stderr)
            return 0 if len(argv) > 1 else 2
        print(_usage(group), file=sys.stderr)
        named = " ".join(word for word in argv[:2] if word not in ("-h", "--help", "help"))
        print(f"\nerror: unknown command {named!r}", file=sys.stderr)
        return 2
    words, module_name, help_ = entry
    parser = Parser(prog="kubefusion " + " ".join(words), description=help_)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and the libraries' own logs")
    module = importlib.import_module(module_name)
    module.add_arguments(parser)
    args = parser.parse_args(argv[len(words):])
    # kubefusion's own progress at INFO; the libraries (the ONNX optimiser's hundred "Removed N unused nodes",
    # "Replaced initializer ..." lines) only when they warn, or all of it with -v.
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s",
    )
    logging.getLogger("kubefusion").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(module.run(args) or 0)
    except UserError as exc:
        rank = os.environ.get("RANK")
        prefix = f"error (rank {rank})" if rank not in (None, "0") else "error"
        print(f"{prefix}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.filename is None or args.verbose:
            raise  # not about a path the user gave: a bug to see in full (or -v asked for the traceback)
        print(f"error: {exc.filename}: {(exc.strerror or type(exc).__name__).lower()}", file=sys.stderr)
        return 2
