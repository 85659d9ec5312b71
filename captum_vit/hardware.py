"""Where a command computes: ``--device``, ``--amp``, ``--threads`` and ``--workers``.

* ``--device cpu|cuda|cuda:N``: the default is CUDA when there is a GPU. Under ``torchrun``
  a bare ``cuda`` becomes ``cuda:LOCAL_RANK`` (:func:`captum_vit.distributed.init_distributed`).
* ``--amp bf16|fp16``: mixed precision for training (``torch.autocast``; fp16 with a gradient
  scaler). fp16 needs a CUDA device; bf16 also runs on the CPU (slowly: it is there to try a
  configuration, not for speed).
* ``--threads N``: torch's CPU threads; ``--workers N``: ``DataLoader`` worker processes.

Light at import (no torch), so that a subcommand's ``--help`` stays quick.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from captum_vit._cli_common import non_negative_int, positive_int

AMP_CHOICES = ("bf16", "fp16")
_DEVICE = re.compile(r"cpu|cuda(?::(\d+))?")


def add_hardware_arguments(
    parser: argparse.ArgumentParser, *, amp: bool = False, workers: int | None = 2, threads: int | None = None
) -> None:
    """Add ``--device``, ``--threads``, and optionally ``--amp`` and ``--workers`` (default ``workers``).

    Examples
    --------
    >>> p = argparse.ArgumentParser()
    >>> add_hardware_arguments(p, amp=True)
    >>> a = p.parse_args(["--device", "cpu", "--amp", "bf16"])
    >>> a.device, a.amp, a.threads, a.workers
    ('cpu', 'bf16', None, 2)
    """
    g = parser.add_argument_group("hardware")
    g.add_argument(
        "--device",
        default=None,
        help="cpu, cuda or cuda:N (default: cuda when there is a GPU; torchrun: cuda:LOCAL_RANK)",
    )
    if amp:
        g.add_argument(
            "--amp", choices=AMP_CHOICES, default=None, help="mixed-precision training (fp16 needs a CUDA device)"
        )
    g.add_argument(
        "--threads",
        type=positive_int,
        default=threads,
        help="torch CPU threads" + (f" (default {threads})" if threads else ""),
    )
    if workers is not None:
        g.add_argument(
            "--workers", type=non_negative_int, default=workers, help=f"DataLoader worker processes (default {workers})"
        )


def check_device(text: str | None) -> str | None:
    """``text`` if it names a device this machine has (None: the default).

    Raises
    ------
    ValueError
        Another spelling, CUDA without a GPU, or a GPU index beyond the count.

    Examples
    --------
    >>> check_device("cpu")
    'cpu'
    >>> check_device("gpu0")
    Traceback (most recent call last):
    ...
    ValueError: --device: expected cpu, cuda or cuda:N, got 'gpu0'
    """
    if text is None:
        return None
    match = _DEVICE.fullmatch(text)
    if match is None:
        raise ValueError(f"--device: expected cpu, cuda or cuda:N, got {text!r}")
    if text.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {text}: CUDA is not available here (no GPU, or a CPU-only torch)")
        if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
            raise ValueError(f"--device {text}: this machine has {torch.cuda.device_count()} GPU(s)")
    return text


def device_type(text: str | None) -> str:
    """``"cuda"`` or ``"cpu"``: where ``--device`` (or its default) computes."""
    if text is not None:
        return "cuda" if text.startswith("cuda") else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_amp(amp: str | None, device: str | None) -> None:
    """Refuse a mixed precision the device cannot run.

    Raises
    ------
    ValueError
        fp16 on the CPU; bf16 on a GPU without bfloat16.

    Examples
    --------
    >>> check_amp("fp16", "cpu")
    Traceback (most recent call last):
    ...
    ValueError: --amp fp16 needs a CUDA device (--device cuda); on the CPU use --amp bf16 or no --amp
    """
    if amp is None:
        return
    if amp not in AMP_CHOICES:
        raise ValueError(f"--amp: expected one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    kind = device_type(device)
    if amp == "fp16" and kind == "cpu":
        raise ValueError("--amp fp16 needs a CUDA device (--device cuda); on the CPU use --amp bf16 or no --amp")
    if amp == "bf16" and kind == "cuda":
        import torch

        if not torch.cuda.is_bf16_supported():
            raise ValueError("--amp bf16: this GPU has no bfloat16 support; use --amp fp16")


def check_hardware(args: argparse.Namespace) -> None:
    """Check ``--device`` and ``--amp`` (a command's check step)."""
    check_device(args.device)
    check_amp(getattr(args, "amp", None), args.device)


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU threads from ``--threads`` (when given)."""
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def amp_dtype(amp: str | None) -> Any:
    """The ``torch.dtype`` of an ``--amp`` choice (None: no autocast)."""
    if amp is None:
        return None
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
