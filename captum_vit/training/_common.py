"""What the training commands share: the record of the command that produced a result,
where ``--register NAME`` writes (the user registry, or the package with the maintainers'
``--ship``), and the training / validation / held-out images of any dataset.

Light at import (argparse and the standard library only), so that ``captum-vit <command>
--help`` stays quick.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from captum_vit._cli_common import CLIError, output_dir

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import Dataset


def command_line(command: str, add_arguments: Callable[[argparse.ArgumentParser], None], args: Any) -> str:
    """The ``captum-vit`` command that reproduces ``args``: every option whose value differs
    from its default, in the order the command declares them.

    Parameters
    ----------
    command : str
        The subcommand, e.g. ``"pretrain-ltx"``.
    add_arguments : callable
        The subcommand's ``add_arguments``, which defines the options and their defaults.
    args : argparse.Namespace
        The parsed options.

    Examples
    --------
    >>> def add(p):
    ...     p.add_argument("--lr", type=float, default=1e-3)
    ...     p.add_argument("--models", nargs="+", default=["a"])
    ...     p.add_argument("--resume", action="store_true")
    ...     p.add_argument("--out", type=Path, default=Path("runs/x"))
    >>> ns = argparse.Namespace(lr=1e-3, models=["a", "b"], resume=True, out=Path("my run"))
    >>> command_line("demo", add, ns)
    "captum-vit demo --models a b --resume --out 'my run'"
    """
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    parts = ["captum-vit", command]
    for action in parser._actions:
        if not action.option_strings:
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
            continue
        flag = next(s for s in action.option_strings if s.startswith("--"))  # the first long name
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts += [flag, *(str(v) for v in value)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def add_register_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--register NAME`` and the maintainers' hidden ``--ship``."""
    parser.add_argument(
        "--register",
        metavar="NAME",
        default=None,
        help=f"also add the {what} to the user registry under NAME ($CAPTUM_VIT_HOME/weights, default "
        "~/.cache/captum_vit/weights), where the explanation methods find it by the model's fingerprint",
    )
    # Maintainers only: the shipped weights are produced by these commands (captum_vit.training).
    parser.add_argument("--ship", action="store_true", help=argparse.SUPPRESS)


def registry_folder(args: argparse.Namespace) -> Path:
    """Where ``--register`` writes: the package's shipped folder with ``--ship``, else the user
    registry."""
    from captum_vit.models.registry import SHIPPED_DIR, user_registry_dir

    return SHIPPED_DIR if getattr(args, "ship", False) else user_registry_dir()


def check_register(args: argparse.Namespace) -> None:
    """Check ``--register NAME`` before training: a valid name, not a shipped one (unless
    ``--ship``), and a registry folder that can be written."""
    from captum_vit.models.registry import NAME_PATTERN, SHIPPED_DIR, read_manifest

    if args.ship and not args.register:
        raise CLIError("--ship needs --register NAME")
    if not args.register:
        return
    if not NAME_PATTERN.fullmatch(args.register):
        raise CLIError(f"--register: {args.register!r} is not a valid name (letters, digits, '.', '_', '-')")
    if not args.ship and args.register in read_manifest(SHIPPED_DIR):
        raise CLIError(f"--register: {args.register!r} is shipped with captum_vit; choose another name")
    output_dir(registry_folder(args), "--register")


def check_resume(args: argparse.Namespace, model: nn.Module) -> None:
    """With ``--resume`` and an existing ``OUT/last.pt``, refuse before training a file that is
    not a readable training checkpoint, one trained for other explainee weights than
    ``model``'s (:func:`~captum_vit.models.fingerprint.model_fingerprint`), or one written
    with another ``--batch-size`` or ``--seed`` (an exact resume needs both).

    A checkpoint that does not record the fingerprint (DiffMask, before it was stored) cannot
    be checked: it is resumed with a warning on stderr.
    """
    import sys

    from captum_vit.models.fingerprint import model_fingerprint
    from captum_vit.training.checkpoint import checkpoint_fingerprint, load_checkpoint, resume_conflict
    from captum_vit.training.trainer import LAST

    if not args.resume:
        return
    path = Path(args.out) / LAST
    if not path.exists():
        return  # nothing to resume: a fresh start, as documented
    fresh = "remove it, or run without --resume to start afresh (which overwrites it)"
    try:
        state = load_checkpoint(path)
    except ValueError as e:
        raise CLIError(f"--resume: {e}; {fresh}") from None
    missing = [k for k in ("model", "optimizer", "rng", "step") if k not in state]
    if missing:
        raise CLIError(
            f"--resume: {path} is not a readable checkpoint (no {', '.join(map(repr, missing))}: not a last.pt "
            f"written by training); {fresh}"
        )
    if checkpoint_fingerprint(state) is None:
        print(
            f"warning: --resume: {path} does not record the weights fingerprint of the model it was trained for; "
            "make sure --model/--weights are the ones it was trained with",
            file=sys.stderr,
        )
    conflict = resume_conflict(
        state, {"explainee_fingerprint": model_fingerprint(model), "batch_size": args.batch_size, "seed": args.seed}
    )
    if conflict is None:
        return
    name, theirs, ours = conflict
    if name == "explainee_fingerprint":
        raise CLIError(
            f"--resume: {path} was trained for the model with weights fingerprint {theirs}; this model's "
            f"fingerprint is {ours} (other architecture or other weights): resume with the --model/--weights "
            "it was trained for, or train afresh in another --out"
        )
    flag = "--" + name.replace("_", "-")
    raise CLIError(
        f"{flag}: {path} was written with {flag} {theirs}, got {flag} {ours}: an exact resume needs the "
        f"same value (pass {flag} {theirs}, or train afresh in another --out)"
    )


def training_splits(
    args: argparse.Namespace, model: nn.Module, val_seed: int, default_train_size: int, held_out: int = 0
) -> tuple[Dataset, Dataset, Dataset | None]:
    """``(train, validation, held-out or None)`` images for ``model`` from the data options.

    ``--dataset synthetic`` renders each split with its own seed
    (:mod:`captum_vit.data.splits`: :data:`~captum_vit.data.splits.EXPLAINER_TRAIN_SEED`,
    ``val_seed``, :data:`~captum_vit.data.splits.HELD_OUT_SEED`), ``--train-size`` images for
    training (default ``default_train_size``). Any other dataset is split at random (seed
    :data:`~captum_vit.data.datasets.SPLIT_SEED`, whatever ``--seed``): ``--val-size`` images
    for validation, ``held_out`` more for the held-out figures, the rest (or its first
    ``--train-size``) for training.
    """
    from captum_vit.data.datasets import SPLIT_SEED, dataset_from_args, first, held_out_splits, input_hw
    from captum_vit.data.splits import EXPLAINER_TRAIN_SEED, HELD_OUT_SEED
    from captum_vit.data.synthetic import SyntheticDataset

    if args.dataset == "synthetic":
        size = input_hw(model)[0]
        train = SyntheticDataset(args.train_size or default_train_size, seed=EXPLAINER_TRAIN_SEED, image_size=size)
        val = SyntheticDataset(args.val_size, seed=val_seed, image_size=size)
        held = SyntheticDataset(held_out, seed=HELD_OUT_SEED, image_size=size) if held_out else None
        return train, val, held
    dataset = dataset_from_args(args, model)
    parts = held_out_splits(dataset, [args.val_size, *([held_out] if held_out else [])], seed=SPLIT_SEED)
    if len(parts[-1]) < args.batch_size:
        raise ValueError(
            f"--batch-size {args.batch_size} is larger than the {len(parts[-1])} training images left after the "
            "held-out splits"
        )
    return first(parts[-1], args.train_size), parts[0], parts[1] if held_out else None


def check_labels(train: Dataset, model: nn.Module, what: str = "--target label") -> None:
    """Refuse training images without labels, or with labels the model has no class for."""
    from captum_vit.data.datasets import labels_of
    from captum_vit.models.preprocess import num_classes_of

    labels = labels_of(train)
    if (labels < 0).any():
        raise ValueError(f"{what} needs labelled images; this dataset has none: use --target predicted")
    classes = num_classes_of(model)
    if int(labels.max()) >= classes:
        raise ValueError(
            f"{what}: the images have labels up to {int(labels.max())} but the model has {classes} classes; "
            "use --target predicted (or a folder whose sorted class subfolders are the model's classes)"
        )
