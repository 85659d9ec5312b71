"""Training checkpoints: atomic writes, safe loads, and the RNG states an exact resume needs."""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from captum_vit._io import atomic_write


def move_to(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def rng_state() -> dict[str, Any]:
    """The RNG states of torch (CPU and CUDA), numpy and Python, loadable with ``weights_only=True``."""
    np_state: tuple[Any, ...] = tuple(np.random.get_state())
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # numpy arrays are not allowed by torch.load(weights_only=True): store as a tensor.
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` recorded."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through :func:`captum_vit._io.atomic_write`: a kill mid-write leaves the
    previous file intact, and the file gets normal permissions."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


class UnreadableCheckpointError(ValueError):
    """A checkpoint file that exists but cannot be loaded (empty, truncated, not a checkpoint)."""


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :class:`~captum_vit.training.trainer.Trainer` (``weights_only=True``).

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    UnreadableCheckpointError
        (a ``ValueError``) When it exists but is not a readable checkpoint: empty, truncated by
        a copy, another kind of file, or not a dictionary. The message names the file.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = (Path(d) / "last.pt").write_bytes(b"")
    ...     load_checkpoint(Path(d) / "last.pt")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    captum_vit.training.checkpoint.UnreadableCheckpointError: .../last.pt is not a readable checkpoint (EOFError...
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch.load fails with EOFError, RuntimeError, KeyError, UnpicklingError, ...
        first = " ".join(str(e).split()).split(". ")[0]  # torch's messages go on with advice that does not apply
        reason = type(e).__name__ + (f": {first[:120]}" + ("..." if len(first) > 120 else "") if first else "")
        raise UnreadableCheckpointError(f"{path} is not a readable checkpoint ({reason})") from None
    if not isinstance(state, dict):
        raise UnreadableCheckpointError(f"{path} is not a readable checkpoint (it holds a {type(state).__name__})")
    return state


def checkpoint_fingerprint(state: Mapping[str, Any]) -> str | None:
    """The explainee's weights fingerprint a training checkpoint was made for, or None when it
    does not say: its ``metadata["explainee_fingerprint"]``, else (older checkpoints of LTX
    explainers) the ``explainee_sha256`` buffer in its model state."""
    meta = state.get("metadata") or {}
    if isinstance(meta, Mapping) and isinstance(meta.get("explainee_fingerprint"), str):
        return str(meta["explainee_fingerprint"])
    model = state.get("model")
    buffer = model.get("explainee_sha256") if isinstance(model, Mapping) else None
    if isinstance(buffer, Tensor) and buffer.dtype == torch.uint8 and buffer.numel() == 32:
        return bytes(buffer.cpu().tolist()).hex()
    return None


def resume_conflict(state: Mapping[str, Any], expected: Mapping[str, Any]) -> tuple[str, Any, Any] | None:
    """The first key of ``expected`` whose value the checkpoint ``state`` records differently,
    as ``(key, recorded, expected)``; ``None`` when none does. The checkpoint records ``seed``
    and ``batch_size`` at its top level, ``explainee_fingerprint`` as
    :func:`checkpoint_fingerprint` reads it, and any other key in its ``metadata``; a key an
    older checkpoint does not record never conflicts.

    Examples
    --------
    >>> resume_conflict({"seed": 0, "batch_size": 8}, {"batch_size": 8, "seed": 1})
    ('seed', 0, 1)
    >>> resume_conflict({"seed": 0}, {"seed": 0, "batch_size": 8}) is None
    True
    """
    recorded = dict(state.get("metadata") or {})
    fingerprint = checkpoint_fingerprint(state)  # also read from older LTX checkpoints
    if fingerprint is not None:
        recorded["explainee_fingerprint"] = fingerprint
    recorded |= {key: state[key] for key in ("seed", "batch_size") if state.get(key) is not None}
    for key, ours in expected.items():
        if key in recorded and recorded[key] != ours:
            return key, recorded[key], ours
    return None
