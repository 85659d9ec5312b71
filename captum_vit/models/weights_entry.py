"""One registered set of weights: the typed manifest entry shared by every kind of weights."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captum_vit.models.fingerprint import is_fingerprint

#: The kinds of registered weights.
KINDS = ("classifier", "pltx", "diffmask")
EXPLAINER_KINDS = ("pltx", "diffmask")
#: What a registered name may look like (it also names the weights file).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: The weights shipped inside the package (read-only at run time).
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "weights"


class ManifestError(ValueError):
    """A manifest that cannot be read: corrupt JSON, an unknown format version, a bad entry."""


@dataclass(frozen=True)
class WeightsEntry:
    """One registered set of weights (one ``manifest.json`` entry).

    Attributes
    ----------
    name : str
        The registered name (``load_pretrained(name)``).
    kind : str
        ``"classifier"`` (a timm model), ``"pltx"`` (an LTX/EEA explainer network) or
        ``"diffmask"`` (Vision DiffMask gates).
    file, sha256 : str
        The safetensors file (relative to the registry folder) and its hex sha256.
    storage_dtype : str
        Floating-point dtype of the stored tensors (loaders cast to float32).
    timm_name, pretrained_cfg, class_names :
        Classifiers: ``timm.create_model(timm_name, **kwargs)`` and its preprocessing.
    kwargs : dict
        Builder keyword arguments: timm's for a classifier; the explainee architecture and λ
        for ``"pltx"``; the gate configuration for ``"diffmask"``.
    explainee, explainee_fingerprint : str, optional
        Explainers: the explainee's registered name and the fingerprint of its weights (the
        lookup key of :func:`find_explainer_entry`).
    explainee_half_fingerprints : dict, optional
        Explainers: the fingerprints of the explainee cast to bfloat16 and float16
        (:func:`~captum_vit.models.fingerprint.half_fingerprints`), so that a half-precision
        copy of the explainee finds the explainer too.
    training, held_out : dict
        How the weights were produced (``command``, seeds, wall time...) and measured figures.
    folder : Path, optional
        The registry folder the entry was read from (not stored).
    """

    name: str
    kind: str
    file: str
    sha256: str
    storage_dtype: str = "float32"
    timm_name: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    explainee: str | None = None
    explainee_fingerprint: str | None = None
    explainee_half_fingerprints: dict[str, str] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    held_out: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise ManifestError(f"weights entry {self.name!r}: {problem}")

    def _problem(self) -> str:
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            return "a name is letters, digits, '.', '_' and '-' (starting with a letter or digit)"
        if self.kind not in KINDS:
            return f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}"
        if not isinstance(self.file, str) or not self.file.endswith(".safetensors") or "/" in self.file:
            return f"file must be a .safetensors file name in the registry folder, got {self.file!r}"
        if not is_fingerprint(self.sha256):
            return f"sha256 must be 64 lowercase hex characters, got {self.sha256!r}"
        if self.kind == "classifier" and not self.timm_name:
            return "a classifier needs timm_name"
        if self.kind in EXPLAINER_KINDS and not (self.explainee and is_fingerprint(self.explainee_fingerprint)):
            return "an explainer needs explainee (a name) and explainee_fingerprint (64 hex characters)"
        for name in ("kwargs", "pretrained_cfg", "training", "held_out", "explainee_half_fingerprints"):
            if not isinstance(getattr(self, name), dict):
                return f"{name} must be an object"
        if not all(is_fingerprint(v) for v in self.explainee_half_fingerprints.values()):
            return "explainee_half_fingerprints values must be fingerprints (64 hex characters)"
        return ""

    @property
    def path(self) -> Path:
        """The weights file (``folder / file``)."""
        return Path(self.folder or SHIPPED_DIR) / self.file

    def architecture(self) -> dict[str, Any]:
        """A classifier's ``timm_name``, ``kwargs`` and ``pretrained_cfg``: what builds it untrained."""
        return {"timm_name": self.timm_name, "kwargs": self.kwargs, "pretrained_cfg": self.pretrained_cfg}

    def to_json(self) -> dict[str, Any]:
        """The manifest form: every field but ``name`` and ``folder``, empty ones left out."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("name", "folder")}
        return {k: v for k, v in out.items() if v not in (None, {}, [])}

    @classmethod
    def from_json(cls, name: str, data: Any, folder: Path | None = None) -> WeightsEntry:
        """Validate one manifest entry.

        Raises
        ------
        ManifestError
            A field is missing, unknown or of the wrong type.
        """
        known = {f.name for f in dataclasses.fields(cls)} - {"name", "folder"}
        if not isinstance(data, dict):
            raise ManifestError(f"weights entry {name!r} must be an object, got {type(data).__name__}")
        unknown = sorted(set(data) - known)
        missing = sorted({"kind", "file", "sha256"} - set(data))
        if unknown or missing:
            raise ManifestError(f"weights entry {name!r}: unknown fields {unknown}, missing fields {missing}")
        return cls(name=name, folder=folder, **data)
