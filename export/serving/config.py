"""Settings of the explanation service and the one error type every request path raises."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ServeError(Exception):
    """A request the service refuses: HTTP ``status``, a machine-readable ``kind`` and a message.

    Examples
    --------
    >>> e = ServeError(415, "unsupported_format", "expected PNG or JPEG bytes")
    >>> e.status, e.kind, str(e)
    (415, 'unsupported_format', 'expected PNG or JPEG bytes')
    """

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.headers = status, kind, dict(headers or {})


def parse_model_spec(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (the name is then the file's stem) -> ``(name, path)``.

    Examples
    --------
    >>> parse_model_spec("out/synthetic-vit-pltx.onnx")
    ('synthetic-vit-pltx', PosixPath('out/synthetic-vit-pltx.onnx'))
    >>> parse_model_spec("pltx=out/e.onnx")
    ('pltx', PosixPath('out/e.onnx'))
    """
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = Path(spec).stem, spec
    if not _NAME_RE.match(name) or not path:
        raise ValueError(f"model must be NAME=PATH or PATH with a name of letters, digits, '_', '.', '-'; got {spec!r}")
    return name, Path(path)


@dataclass
class ServeConfig:
    """How the service loads its explainers and bounds its work.

    Parameters
    ----------
    models : dict of str to Path
        Model name -> exported ``.onnx`` file; the first is the default model.
    max_batch : int
        Largest batch the dynamic batcher forms (1 turns batching off).
    max_wait_ms : float
        How long the oldest queued request may wait for others to join its batch.
    max_queue : int
        Requests waiting for a batch, per model; beyond it the service answers 503.
    inference_workers : int
        Threads running onnxruntime (batches in flight at once, over all models).
    intra_op_threads : int
        onnxruntime threads inside one call (0: onnxruntime's default, one per core).
    decode_workers : int
        Threads decoding uploads and encoding PNG answers.
    max_upload_bytes : int
        Largest request body accepted (413 beyond it).
    max_image_side : int
        Largest image width or height accepted (413 beyond it), checked before decoding.
    retry_after_s : int
        The ``Retry-After`` header of a 503.

    Raises
    ------
    ValueError
        An empty ``models``, a bad name, or a setting out of range (named in the message).
    """

    models: dict[str, Path]
    max_batch: int = 32
    max_wait_ms: float = 2.0
    max_queue: int = 256
    inference_workers: int = 1
    intra_op_threads: int = 0
    decode_workers: int = 2
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_side: int = 4096
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models must name at least one exported .onnx file")
        self.models = {str(k): Path(v) for k, v in self.models.items()}
        for name in self.models:
            if not _NAME_RE.match(name):
                raise ValueError(f"model name {name!r} must be letters, digits, '_', '.' or '-'")
        limits = {
            "max_batch": (1, 4096),
            "max_queue": (1, 1_000_000),
            "inference_workers": (1, 256),
            "intra_op_threads": (0, 1024),
            "decode_workers": (1, 256),
            "max_upload_bytes": (1, 1 << 31),
            "max_image_side": (1, 1 << 16),
            "retry_after_s": (0, 3600),
        }
        for arg, (low, high) in limits.items():
            value = getattr(self, arg)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{arg} must be an int in [{low}, {high}], got {value!r}")
        if not isinstance(self.max_wait_ms, (int, float)) or not 0 <= self.max_wait_ms <= 60_000:
            raise ValueError(f"max_wait_ms must be a number in [0, 60000], got {self.max_wait_ms!r}")

    @property
    def default_model(self) -> str:
        return next(iter(self.models))
