"""Registered weights: one typed manifest entry, two registry folders, one lookup.

A *registry folder* holds ``manifest.json`` and the ``.safetensors`` files it lists. Two are
searched, in this order:

1. the **user registry**, where ``--register NAME`` writes: ``$CAPTUM_VIT_HOME/weights`` when
   ``CAPTUM_VIT_HOME`` is set, else ``$XDG_CACHE_HOME/captum_vit/weights`` (default
   ``~/.cache/captum_vit/weights``), see :func:`user_registry_dir`;
2. the **shipped** folder inside the installed package (:data:`SHIPPED_DIR`), read-only at run
   time. Only the maintainers' training commands write there (their hidden ``--ship`` flag,
   documented with the training commands).

Every entry is a :class:`~captum_vit.models.weights_entry.WeightsEntry` (as timm's
``PretrainedCfg``, one schema for every kind of weights): the file and its sha256, the kind (``"classifier"``, ``"pltx"``, ``"diffmask"``),
what builds the module, and for an explainer the name and
:func:`~captum_vit.models.fingerprint.model_fingerprint` of the explainee it was trained for;
plus how the weights were produced (command, figures). :func:`find_explainer_entry` is *the*
lookup "the registered explainer of kind K for this model". :func:`register_weights` is the one
way weights get written (safetensors, atomic, normal permissions, sha256, manifest entry).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from captum_vit._io import atomic_write
from captum_vit.models.weights_entry import (
    EXPLAINER_KINDS,
    KINDS,
    NAME_PATTERN,
    SHIPPED_DIR,
    ManifestError,
    WeightsEntry,
)

__all__ = [
    "EXPLAINER_KINDS",
    "FORMAT_VERSION",
    "KINDS",
    "NAME_PATTERN",
    "SHIPPED_DIR",
    "ManifestError",
    "WeightsEntry",
    "all_entries",
    "find_entry",
    "find_entry_for_file",
    "find_explainer_entry",
    "read_manifest",
    "register_weights",
    "registry_dirs",
    "save_weights",
    "sha256_file",
    "user_registry_dir",
    "write_entry",
]

#: Manifest format read and written by this version (1: the two-schema format before 0.2).
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"


def user_registry_dir() -> Path:
    """The folder ``--register`` writes to (see the module docstring); it may not exist yet.

    Examples
    --------
    >>> import os
    >>> os.environ["CAPTUM_VIT_HOME"] = "/tmp/cv-home"
    >>> user_registry_dir()
    PosixPath('/tmp/cv-home/weights')
    >>> del os.environ["CAPTUM_VIT_HOME"]
    """
    home = os.environ.get("CAPTUM_VIT_HOME")
    if home:
        return Path(home).expanduser() / "weights"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "captum_vit" / "weights"


def read_manifest(folder: str | os.PathLike[str] | None = None) -> dict[str, WeightsEntry]:
    """The entries of the manifest in ``folder`` (default: the shipped one); ``{}`` when the
    folder has no manifest.

    Raises
    ------
    ManifestError
        Corrupt JSON, a format other than :data:`FORMAT_VERSION`, or an invalid entry; the
        message names the file.

    Examples
    --------
    >>> read_manifest()["synthetic-vit-pltx"].explainee
    'synthetic-vit'
    """
    directory = Path(folder) if folder is not None else SHIPPED_DIR
    path = directory / MANIFEST_NAME
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"weights manifest {path} is not readable JSON ({e}); restore or delete it") from None
    version = data.get("format") if isinstance(data, dict) else None
    if version != FORMAT_VERSION or not isinstance(data.get("models"), dict):
        raise ManifestError(
            f"weights manifest {path} has format {version!r}; this captum_vit reads format {FORMAT_VERSION} "
            "(an object with 'format' and 'models'): re-register the weights with this version"
        )
    try:
        return {n: WeightsEntry.from_json(n, e, directory) for n, e in sorted(data["models"].items())}
    except (ManifestError, TypeError) as e:
        raise ManifestError(f"weights manifest {path}: {e}") from None


def write_entry(entry: WeightsEntry, folder: str | os.PathLike[str] | None = None) -> Path:
    """Add or replace ``entry`` in the manifest of ``folder`` (default: ``entry.folder``),
    keeping every other entry; written atomically. Returns the manifest's path."""
    directory = Path(folder) if folder is not None else entry.folder
    if directory is None:
        raise ValueError("write_entry needs a folder: the entry was not read from a registry folder")
    models = {n: e.to_json() for n, e in read_manifest(directory).items()}
    models[entry.name] = entry.to_json()
    text = json.dumps({"format": FORMAT_VERSION, "models": dict(sorted(models.items()))}, indent=2) + "\n"
    return atomic_write(directory / MANIFEST_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def registry_dirs(weights_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The folders searched, in order: ``[weights_dir]`` when given, else the user registry
    and the shipped folder."""
    return [Path(weights_dir)] if weights_dir is not None else [user_registry_dir(), SHIPPED_DIR]


def all_entries(weights_dir: str | os.PathLike[str] | None = None) -> dict[str, WeightsEntry]:
    """Every registered entry by name (a shipped name cannot be shadowed by the user registry)."""
    found: dict[str, WeightsEntry] = {}
    for directory in reversed(registry_dirs(weights_dir)):
        found = read_manifest(directory) | found
    return dict(sorted(found.items()))


def find_entry(name: str, weights_dir: str | os.PathLike[str] | None = None) -> WeightsEntry:
    """The entry registered as ``name``.

    Raises
    ------
    ValueError
        An unknown name (the message lists the known ones).
    """
    entries = all_entries(weights_dir)
    if name not in entries:
        raise ValueError(f"unknown pretrained model name {name!r}; known names: {sorted(entries)}")
    return entries[name]


def _explainee_fingerprints(entry: WeightsEntry) -> set[str | None]:
    """The fingerprints that find ``entry``: its explainee's, and those of its half-precision copies."""
    return {entry.explainee_fingerprint, *entry.explainee_half_fingerprints.values()}


def find_explainer_entry(
    fingerprint: str, kind: str, weights_dir: str | os.PathLike[str] | None = None
) -> WeightsEntry | None:
    """The registered explainer of ``kind`` trained for the model whose
    :func:`~captum_vit.models.fingerprint.model_fingerprint` is ``fingerprint`` (or for the
    model of which it is a bfloat16/float16 copy), if any.

    The user registry is searched before the shipped folder, so an explainer registered for a
    shipped model replaces the shipped one.

    Raises
    ------
    ValueError
        A bad ``kind``, or several matching explainers in one registry folder (the message
        names them: pass one explicitly).

    Examples
    --------
    >>> from captum_vit.models.pretrained import load_pretrained
    >>> from captum_vit.models.fingerprint import model_fingerprint
    >>> fp = model_fingerprint(load_pretrained("synthetic-vit"))
    >>> find_explainer_entry(fp, "diffmask", weights_dir=SHIPPED_DIR).name
    'synthetic-vit-diffmask'
    """
    if kind not in EXPLAINER_KINDS:
        raise ValueError(f"kind must be one of {', '.join(EXPLAINER_KINDS)}, got {kind!r}")
    for directory in registry_dirs(weights_dir):
        entries = read_manifest(directory).values()
        hits = [e for e in entries if e.kind == kind and fingerprint in _explainee_fingerprints(e)]
        if len(hits) > 1:
            names = ", ".join(e.name for e in hits)
            raise ValueError(
                f"several {kind} explainers in {directory} were trained for this model ({names}); pass one"
            )
        if hits:
            return hits[0]
    return None


def find_entry_for_file(
    path: str | os.PathLike[str], weights_dir: str | os.PathLike[str] | None = None
) -> WeightsEntry | None:
    """The registered entry whose weights are byte-identical to ``path`` (by sha256), if any:
    a registered file passed explicitly loads with its entry's settings."""
    digest = sha256_file(path)
    return next((e for e in all_entries(weights_dir).values() if e.sha256 == digest), None)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_weights(
    path: str | os.PathLike[str],
    state: Mapping[str, Any],
    metadata: Mapping[str, str] | None = None,
    storage_dtype: Any = None,
) -> str:
    """Write a state dict as safetensors, atomically with normal file permissions.

    Parameters
    ----------
    path : str or Path
        The ``.safetensors`` file.
    state : mapping of str to Tensor
        Copied to the CPU; floating-point tensors are cast to ``storage_dtype`` when given
        (integer buffers, such as a fingerprint, are stored as they are).
    metadata : mapping of str to str, optional
        The file's safetensors metadata.
    storage_dtype : torch.dtype, optional
        E.g. ``torch.float16`` to halve the file (loaders cast back to float32).

    Returns
    -------
    str
        The file's sha256.
    """
    from safetensors.torch import save_file

    cast = {
        k: v.to(storage_dtype) if storage_dtype is not None and v.is_floating_point() else v for k, v in state.items()
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in cast.items()}
    meta = dict(metadata or {})
    written = atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return sha256_file(written)


def register_weights(
    name: str,
    kind: str,
    state: Mapping[str, Any],
    folder: str | os.PathLike[str] | None = None,
    *,
    metadata: Mapping[str, str] | None = None,
    storage_dtype: Any = None,
    **fields: Any,
) -> WeightsEntry:
    """Write ``folder/name.safetensors`` (:func:`save_weights`) and its manifest entry.

    Parameters
    ----------
    name, kind :
        The registered name and its :data:`KINDS` kind.
    state, metadata, storage_dtype :
        As :func:`save_weights`.
    folder : str or Path, optional
        The registry folder (default: :func:`user_registry_dir`).
    **fields :
        The other :class:`WeightsEntry` fields (``explainee``, ``kwargs``, ``training``...).

    Returns
    -------
    WeightsEntry
        The written entry.

    Raises
    ------
    ValueError
        A shipped name registered in the user registry, or an invalid entry (checked before
        anything is written).

    Examples
    --------
    >>> import tempfile, torch
    >>> folder = tempfile.mkdtemp()
    >>> entry = register_weights("lin", "classifier", torch.nn.Linear(2, 2).state_dict(), folder,
    ...                          storage_dtype=torch.float16, timm_name="none")
    >>> entry.storage_dtype, entry.sha256 == sha256_file(entry.path), list(read_manifest(folder))
    ('float16', True, ['lin'])
    """
    directory = Path(folder) if folder is not None else user_registry_dir()
    if directory.resolve() == user_registry_dir().resolve() and name in read_manifest(SHIPPED_DIR):
        raise ValueError(f"{name!r} is the name of weights shipped with captum_vit; register under another name")
    floats = {str(v.dtype) for v in state.values() if v.is_floating_point()}
    stored = str(storage_dtype) if storage_dtype is not None else (floats.pop() if len(floats) == 1 else "float32")
    entry = WeightsEntry(
        name=name,
        kind=kind,
        file=f"{name}.safetensors",
        sha256="0" * 64,  # validated now, replaced by the written file's digest below
        storage_dtype=stored.removeprefix("torch."),
        folder=directory,
        **fields,
    )
    digest = save_weights(entry.path, state, metadata, storage_dtype)
    entry = dataclasses.replace(entry, sha256=digest)
    write_entry(entry, directory)
    return entry
