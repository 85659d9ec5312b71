"""The ``captum-vit`` command line: a thin layer over the library.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; add one line to ``SUBCOMMANDS`` to register a new one.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("captum_vit.demo", "explain built-in images with every method; write a figure and a table"),
    "evaluate": ("captum_vit.evaluate", "score methods on a dataset with the papers' metrics (torchrun-shardable)"),
    "export": ("captum_vit.export.cli", "export a trained explainer to ONNX (and a TensorRT engine)"),
    "train-models": ("captum_vit.training.train_classifier", "train the shipped synthetic-benchmark ViT and CNN"),
    "train-diffmask": ("captum_vit.training.diffmask_train", "train Vision DiffMask gates for a shipped ViT"),
    "pretrain-ltx": ("captum_vit.training.ltx_pretrain", "pretrain an LTX/EEA explainer (pLTX) for a shipped model"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captum-vit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
