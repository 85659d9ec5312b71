"""One fingerprint for a model's weights: which exact weights an explainer was trained for.

Registered explainers (:mod:`captum_vit.models.registry`), LTX explainer networks (a buffer in
their state dict), DiffMask gate files and exported ONNX graphs all store this digest.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping

import torch
from torch import nn

from captum_vit.models.view import unwrap_compiled

#: What a fingerprint looks like: a sha256 hex digest.
FINGERPRINT_PATTERN = re.compile(r"[0-9a-f]{64}")


#: The half precisions models are cast to for inference. A registered explainer records its
#: explainee's fingerprint at each (:func:`half_fingerprints`), so that ``model.to(dtype)``
#: still finds the explainer trained for ``model``.
HALF_PRECISIONS: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def model_fingerprint(model: nn.Module, precision: torch.dtype | None = None) -> str:
    """sha256 over the names, shapes and float32 bytes of ``model``'s state (parameters and
    buffers, in sorted name order).

    Floating-point tensors are hashed as float32, so a model stored in float16 and loaded back
    as float32 has one fingerprint whatever its storage; the digest does not depend on the
    device or on the order in which modules were registered. A ``torch.compile`` wrapper has
    the fingerprint of the module it compiled (the same weights). With ``precision``, the
    floating-point tensors are first rounded to it: ``model_fingerprint(m, torch.bfloat16)`` is
    the fingerprint of ``m.to(torch.bfloat16)``, computed without copying ``m``.

    Returns
    -------
    str
        64 lowercase hex characters.

    Examples
    --------
    >>> a = nn.Linear(2, 2)
    >>> b = nn.Linear(2, 2)
    >>> _ = b.load_state_dict(a.state_dict())
    >>> model_fingerprint(a) == model_fingerprint(b), len(model_fingerprint(a))
    (True, 64)
    >>> with torch.no_grad():
    ...     _ = b.bias.add_(1)
    >>> model_fingerprint(a) == model_fingerprint(b)
    False
    >>> model_fingerprint(a, torch.bfloat16) == model_fingerprint(a.to(torch.bfloat16))
    True
    """
    digest = hashlib.sha256()
    for name, value in sorted(unwrap_compiled(model).state_dict().items()):
        t = value.detach()
        if precision is not None and t.is_floating_point():
            t = t.to(precision)
        t = t.to("cpu", torch.float32 if t.is_floating_point() else t.dtype).contiguous()
        digest.update(f"{name}:{tuple(t.shape)};".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def half_fingerprints(model: nn.Module) -> dict[str, str]:
    """The fingerprints of ``model`` cast to each of :data:`HALF_PRECISIONS`, by dtype name.

    Examples
    --------
    >>> lin = nn.Linear(2, 2)
    >>> half_fingerprints(lin)["float16"] == model_fingerprint(lin.half())
    True
    """
    return {name: model_fingerprint(model, dtype) for name, dtype in HALF_PRECISIONS.items()}


class HalfCopies:
    """Mixin for an explainer tied to one explainee: the half-precision copies of that explainee
    it also accepts (:func:`half_fingerprints`, recorded by training, saved files and registry
    entries). They hold for the explainee fingerprint current when they were vouched for only,
    so weights of another explainee loaded later do not inherit them. A subclass gives that
    fingerprint as :meth:`_explainee_key`.

    Examples
    --------
    >>> class Tied(HalfCopies):
    ...     key = "a" * 64
    ...     def _explainee_key(self) -> str:
    ...         return self.key
    >>> t = Tied()
    >>> t.vouch_half_fingerprints({"bfloat16": "b" * 64})
    >>> list(t._half_metadata())
    ['explainee_half_fingerprints']
    >>> t.key = "c" * 64  # weights of another explainee: the vouching no longer holds
    >>> t._half_fingerprints()
    {}
    """

    def _explainee_key(self) -> str:
        raise NotImplementedError

    def vouch_half_fingerprints(self, half: Mapping[str, str]) -> None:
        """Accept the half-precision copies of the current explainee whose fingerprints are ``half``."""
        self._half = (self._explainee_key(), dict(half))

    def _half_fingerprints(self) -> dict[str, str]:
        held: tuple[str, dict[str, str]] | None = getattr(self, "_half", None)
        return held[1] if held is not None and held[0] == self._explainee_key() else {}

    def _half_metadata(self) -> dict[str, str]:
        """The safetensors metadata entry :func:`read_half_fingerprints` reads back (``{}`` if none)."""
        half = self._half_fingerprints()
        return {"explainee_half_fingerprints": json.dumps(half, sort_keys=True)} if half else {}


def read_half_fingerprints(metadata: Mapping[str, str], path: object = "the file") -> dict[str, str]:
    """The ``explainee_half_fingerprints`` a saved explainer's safetensors metadata records
    (``{}`` when it has none).

    Raises
    ------
    ValueError
        Naming ``path``, when the field is not a JSON object of fingerprints.

    Examples
    --------
    >>> read_half_fingerprints({}), read_half_fingerprints({"explainee_half_fingerprints": '{"float16": "' + "0" * 64 + '"}'})
    ({}, {'float16': '0000000000000000000000000000000000000000000000000000000000000000'})
    """
    text = metadata.get("explainee_half_fingerprints")
    if text is None:
        return {}
    try:
        half = json.loads(text)
    except json.JSONDecodeError:
        half = None
    if not isinstance(half, dict) or not all(isinstance(k, str) and is_fingerprint(v) for k, v in half.items()):
        raise ValueError(f"{path}: explainee_half_fingerprints metadata is not an object of fingerprints")
    return half


def is_fingerprint(value: object) -> bool:
    """Whether ``value`` is a :func:`model_fingerprint` (64 lowercase hex characters).

    Examples
    --------
    >>> is_fingerprint("0" * 64), is_fingerprint("052ca09f3ae066a0")
    (True, False)
    """
    return isinstance(value, str) and FINGERPRINT_PATTERN.fullmatch(value) is not None


def check_fingerprint(
    expected: str, model: nn.Module, what: str = "explainer", half: Mapping[str, str] | None = None
) -> None:
    """Raise ``ValueError`` unless ``model``'s fingerprint is ``expected`` or, for a half-precision
    copy, one of ``half`` (:func:`half_fingerprints` of the model ``expected`` names); the message
    names both fingerprints.

    Examples
    --------
    >>> check_fingerprint("0" * 64, nn.Linear(1, 1))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: explainer was trained for the model with weights fingerprint 000...; this model's fingerprint is ...
    """
    actual = model_fingerprint(model)
    if actual != expected and actual not in (half or {}).values():
        raise ValueError(
            f"{what} was trained for the model with weights fingerprint {expected}; this model's fingerprint "
            f"is {actual} (other architecture or other weights): train or register one for this model"
        )
