"""The ``captum-vit`` command line: a thin layer over the library.

Each subcommand lives in its own module exposing ``add_arguments(parser)``, an optional
``check(args)`` and ``run(args) -> int``; add one line to ``SUBCOMMANDS`` to register a new one.
The conventions they follow are in :mod:`captum_vit._cli_common`.

Only the chosen subcommand's module is imported: ``captum-vit --help`` lists the table below
without importing torch, so it answers at once.

Examples
--------
>>> main(["no-such-command"])
2
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from captum_vit._cli_common import CLIError

PROG = "captum-vit"

#: name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("captum_vit.demo", "explain built-in images with every method; write a figure and a table"),
    "evaluate": ("captum_vit.evaluate_cli", "score methods on a dataset with the papers' metrics (torchrun-shardable)"),
    "export": ("captum_vit.export.cli", "export a trained explainer to ONNX (and a TensorRT engine)"),
    "serve": ("captum_vit.export.serve_cli", "serve exported explainers over HTTP with dynamic batching"),
    "train-models": ("captum_vit.training.train_classifier", "train the shipped synthetic-benchmark ViT and CNN"),
    "train-diffmask": ("captum_vit.training.diffmask", "train Vision DiffMask gates for any ViT, on any dataset"),
    "pretrain-ltx": ("captum_vit.training.ltx_pretrain", "pretrain an LTX/EEA explainer (pLTX) for any model, on any dataset"),
}


class _UsageError(CLIError):
    """An error found by argparse; ``prog`` is the (sub)command whose parser found it."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """Reports a parse error as :class:`CLIError`, so that :func:`main` prints it as one line."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(self.prog, message)


def _command_in(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv``: the top level takes no option with a value."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the options of ``command`` only (``None``: just the subcommand list).

    Parameters
    ----------
    command
        A key of :data:`SUBCOMMANDS` whose module is imported to add its options; any other
        value imports nothing, and parsing then reports the unknown name.

    Examples
    --------
    >>> p = build_parser()
    >>> sorted(p._subparsers._group_actions[0].choices) == sorted(SUBCOMMANDS)
    True
    """
    parser = _Parser(
        prog=PROG,
        description="Explanations for Vision Transformers (and CNNs): demo, evaluation, training, export.",
        epilog=f"Run '{PROG} COMMAND --help' for the options of a command.",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        # Exact option names only: an abbreviation could silently pick another option.
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``captum-vit`` on ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    A user error (:class:`CLIError`, a parse error, or a ``ValueError``/``TypeError``/
    ``FileNotFoundError`` raised by the command's ``check(args)`` step) is printed as one
    line, ``captum-vit <command>: error: <message>``, and gives status 2. Errors raised while
    a command computes (in ``run``) other than ``CLIError`` keep their traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_in(argv)
    prog = f"{PROG} {command}" if command in SUBCOMMANDS else PROG
    try:
        args = build_parser(command).parse_args(argv)
        module = importlib.import_module(SUBCOMMANDS[args.command][0])
        check = getattr(module, "check", None)
        if check is not None:
            try:
                check(args)
            except (ValueError, TypeError, FileNotFoundError) as e:
                raise CLIError(_one_line(e)) from e
        return int(module.run(args) or 0)
    except CLIError as e:
        # The top-level parser reports a subcommand's unknown options: name the subcommand.
        where = e.prog if isinstance(e, _UsageError) and e.prog != PROG else prog
        print(f"{where}: error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
