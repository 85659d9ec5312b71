"""One model specification for every command and helper: your model, from a name or files.

A specification is one of:

* a **registered name**: shipped (``synthetic-vit``) or added with ``--register NAME``;
* ``timm:<architecture>`` with its weights: ``--pretrained`` (timm's hub weights, downloaded
  at your site) or ``--weights FILE`` (``.safetensors``, or a ``.pth``/``.pt``/``.bin`` state
  dict read with ``torch.load(weights_only=True)``), and optionally ``--num-classes`` and
  ``--img-size``;
* a local Hugging Face ``transformers`` model **folder** (``config.json``, the weights and
  ``preprocessor_config.json``), written as the path or as ``hf:<path>``.

Whatever the source, the loaded model is in eval mode on the CPU, returns logits, and carries
its preprocessing in ``model.pretrained_cfg`` (timm's convention), so
:func:`captum_vit.models.preprocess.normalize_for` and the datasets read it from there: for
timm, :func:`timm.data.resolve_data_config` with the input size of the model as built
(``--img-size``); for a Hugging Face folder, its image-processor configuration. Nothing is
hard-coded. A Hugging Face model comes wrapped in :class:`~captum_vit.models.spec_hf.HFImageClassifier` (its forward
returns the logits tensor; the ``transformers`` model is ``.model``); the explanation methods
do not take it yet (:mod:`captum_vit.models.spec_hf`).

The command-line form is :func:`add_model_arguments` + :func:`model_from_args`, shared by every
``captum-vit`` subcommand that takes a model.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from captum_vit._io import read_safetensors, read_torch_file

#: Suffixes of ``--weights`` files read with ``torch.load(weights_only=True)``.
PICKLE_SUFFIXES = (".pth", ".pt", ".bin")


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from (see the module docstring).

    Attributes
    ----------
    source : str
        ``"registry"``, ``"timm"`` or ``"hf"``.
    name : str
        The registered name, the timm architecture or the Hugging Face folder.
    pretrained, weights, num_classes, img_size :
        timm only: hub weights, a weights file, the classifier's classes, the input side.

    Examples
    --------
    >>> import tempfile, timm
    >>> from safetensors.torch import save_file
    >>> mine = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=5)  # "your" ViT
    >>> path = Path(tempfile.mkdtemp()) / "mine.safetensors"
    >>> save_file(mine.state_dict(), str(path))
    >>> spec = ModelSpec.parse("timm:vit_tiny_patch16_224", weights=path, num_classes=5, img_size=32)
    >>> spec.describe().replace(str(path), "mine.safetensors")
    'timm:vit_tiny_patch16_224 --weights mine.safetensors --num-classes 5 --img-size 32'
    >>> model = spec.load()
    >>> model.pretrained_cfg["input_size"], model.pretrained_cfg["interpolation"], model.training
    ((3, 32, 32), 'bicubic', False)
    >>> ModelSpec.parse("synthetic-vit", num_classes=3)
    Traceback (most recent call last):
    ...
    ValueError: --num-classes applies to timm:<architecture> models; 'synthetic-vit' is a registered model with its own weights and classes
    """

    source: str
    name: str
    pretrained: bool = False
    weights: Path | None = None
    num_classes: int | None = None
    img_size: int | None = None

    @classmethod
    def parse(
        cls,
        text: str,
        *,
        pretrained: bool = False,
        weights: str | Path | None = None,
        num_classes: int | None = None,
        img_size: int | None = None,
    ) -> ModelSpec:
        """Check a specification without loading anything.

        Raises
        ------
        ValueError
            An empty or unknown timm architecture, options that do not apply to the source,
            both or neither of ``pretrained`` and ``weights`` for timm, a weights file with
            another suffix, a folder without ``config.json``, a non-positive size.
        FileNotFoundError
            A missing weights file.
        """
        text = str(text).strip()
        if not text:
            raise ValueError("--model: expected a registered name, timm:<architecture> or a Hugging Face folder")
        timm_options = {
            "--pretrained": pretrained,
            "--weights": weights is not None,
            "--num-classes": num_classes is not None,
            "--img-size": img_size is not None,
        }
        for flag, value in (("--num-classes", num_classes), ("--img-size", img_size)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{flag}: expected a positive integer, got {value!r}")
        if text.startswith("timm:"):
            return cls._timm(text[len("timm:") :], pretrained, weights, num_classes, img_size)
        given = [flag for flag, on in timm_options.items() if on]
        folder = Path(text[len("hf:") :] if text.startswith("hf:") else text).expanduser()
        if text.startswith("hf:") or (folder.is_dir() and (folder / "config.json").is_file()):
            if given:
                raise ValueError(
                    f"{given[0]} applies to timm:<architecture> models; a Hugging Face folder holds its own"
                )
            if not (folder / "config.json").is_file():
                raise ValueError(f"--model: {folder} is not a Hugging Face model folder (no config.json)")
            return cls("hf", str(folder))
        if given:
            raise ValueError(
                f"{given[0]} applies to timm:<architecture> models; {text!r} is a registered model with its own "
                "weights and classes"
            )
        from captum_vit.models.registry import all_entries

        entries = all_entries()
        if text not in entries and folder.is_dir():
            raise ValueError(
                f"--model: {text} is a folder without config.json; a Hugging Face model folder holds config.json, "
                "the weights (model.safetensors) and preprocessor_config.json (save_pretrained writes them)"
            )
        if text not in entries or entries[text].kind != "classifier":
            known = ", ".join(n for n, e in entries.items() if e.kind == "classifier")
            what = f"a registered {entries[text].kind} explainer" if text in entries else "not a registered classifier"
            raise ValueError(
                f"--model: {text!r} is {what}; expected a registered classifier ({known}), timm:<architecture> "
                "or a Hugging Face model folder"
            )
        return cls("registry", text)

    @classmethod
    def _timm(
        cls, name: str, pretrained: bool, weights: str | Path | None, num_classes: int | None, img_size: int | None
    ) -> ModelSpec:
        import timm

        if not timm.is_model(name):
            close = timm.list_models(f"*{name.split('_')[0]}*")[:5] if name else []
            hint = f" (similar: {', '.join(close)})" if close else " (timm.list_models() lists them)"
            raise ValueError(f"--model: unknown timm architecture {name!r}{hint}")
        if pretrained and weights is not None:
            raise ValueError("--pretrained and --weights are exclusive: hub weights or your file")
        if not pretrained and weights is None:
            raise ValueError(
                f"--model timm:{name} needs its weights: --weights FILE (.safetensors, .pth, .pt) or --pretrained "
                "(timm's hub weights)"
            )
        path = None
        if weights is not None:
            path = Path(weights).expanduser()
            if path.suffix.lower() not in (".safetensors", *PICKLE_SUFFIXES):
                raise ValueError(f"--weights: expected a .safetensors, .pth, .pt or .bin file, got {path}")
            if not path.is_file():
                raise FileNotFoundError(f"--weights: no such file: {path}")
        return cls("timm", name, pretrained, path, num_classes, img_size)

    def describe(self) -> str:
        """The specification as command-line options (stored with registered explainers)."""
        if self.source == "registry":
            return self.name
        if self.source == "hf":
            return f"hf:{self.name}"
        parts = [f"timm:{self.name}"]
        parts += ["--pretrained"] if self.pretrained else ["--weights", str(self.weights)]
        parts += ["--num-classes", str(self.num_classes)] if self.num_classes is not None else []
        parts += ["--img-size", str(self.img_size)] if self.img_size is not None else []
        return " ".join(parts)

    def load(self) -> nn.Module:
        """The model, in eval mode, float32 on the CPU, with its preprocessing in ``pretrained_cfg``.

        Raises
        ------
        ValueError
            An unknown registered name, a weights file that does not fit the architecture (the
            message lists the mismatching tensors), ``--img-size`` for a model that fixes it.
        ImportError
            A Hugging Face folder without ``transformers`` installed.
        """
        if self.source == "registry":
            from captum_vit.models.pretrained import load_pretrained

            return load_pretrained(self.name)
        if self.source == "hf":
            from captum_vit.models.spec_hf import load_hf_folder

            return load_hf_folder(self.name)
        return _load_timm(self)

    def architecture(self, model: nn.Module) -> dict[str, Any] | None:
        """What builds ``model`` (this specification, loaded) untrained: ``timm_name``,
        ``kwargs``, ``pretrained_cfg``, as a registry entry stores it, so that a registered
        explainer can be rebuilt without the weights; None for a Hugging Face folder."""
        if self.source == "registry":
            from captum_vit.models.registry import find_entry

            entry = find_entry(self.name)
            return entry.architecture() if entry.kind == "classifier" else None
        if self.source == "hf":
            return None
        kwargs: dict[str, Any] = {}
        if self.num_classes is not None:
            kwargs["num_classes"] = self.num_classes
        if self.img_size is not None and hasattr(model, "patch_embed"):
            kwargs["img_size"] = self.img_size
        return {"timm_name": self.name, "kwargs": kwargs, "pretrained_cfg": _json_cfg(model.pretrained_cfg)}


def _json_cfg(cfg: Any) -> dict[str, Any]:
    """A ``pretrained_cfg`` with JSON values only (tuples as lists)."""
    out = {}
    for key, value in dict(cfg or {}).items():
        value = list(value) if isinstance(value, tuple) else value
        try:
            json.dumps(value)
        except TypeError:
            continue
        out[key] = value
    return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors``, or ``.pth``/``.pt``/``.bin`` via ``torch.load(weights_only=True)``.

    A checkpoint that nests the weights under ``"state_dict"``, ``"model"`` or ``"module"`` is
    unwrapped, and a DistributedDataParallel ``"module."`` prefix is removed.

    Raises
    ------
    ValueError
        A file that holds no state dict of tensors (or is not loadable with ``weights_only``).
    """
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return read_safetensors(path, "--weights")[0]
    expected = "a state dict saved with torch.save(model.state_dict(), ...), or a .safetensors file"
    state: Any = read_torch_file(path, "--weights", expected)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--weights: {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_timm(spec: ModelSpec) -> nn.Module:
    import timm

    model: Any  # a timm model: its pretrained_cfg is a plain attribute
    kwargs: dict[str, Any] = {}
    if spec.num_classes is not None:
        kwargs["num_classes"] = spec.num_classes
    try:
        sized = kwargs | ({"img_size": spec.img_size} if spec.img_size is not None else {})
        if spec.img_size is not None and spec.pretrained:  # the geometry first (no weights): then download
            with torch.device("meta"):
                _check_patch_multiple(timm.create_model(spec.name, pretrained=False, **sized), spec)
        model = timm.create_model(spec.name, pretrained=spec.pretrained, **sized)
    except TypeError as e:
        if spec.img_size is None or "img_size" not in str(e):
            raise
        # A CNN takes any size: --img-size then sets only the preprocessing's input size.
        model = timm.create_model(spec.name, pretrained=spec.pretrained, **kwargs)
    _check_patch_multiple(model, spec)
    embed = getattr(model, "patch_embed", None)
    if spec.weights is not None:
        _load_weights(model, spec.weights, spec)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    # timm keeps the architecture's default input size when img_size is overridden: the model
    # as built is what the preprocessing must produce.
    if embed is not None and getattr(embed, "img_size", None) is not None:
        cfg["input_size"] = (int(getattr(embed.proj, "in_channels", 3)), *(int(s) for s in embed.img_size))
    elif spec.img_size is not None:
        cfg["input_size"] = (3, spec.img_size, spec.img_size)
    if spec.num_classes is not None and cfg.get("num_classes") != spec.num_classes:
        cfg["num_classes"] = spec.num_classes
        cfg.pop("label_names", None)
        cfg.pop("label_descriptions", None)
    model.pretrained_cfg = cfg
    return model.eval()


def _check_patch_multiple(model: nn.Module, spec: ModelSpec) -> None:
    """Refuse an ``--img-size`` a ViT's patch embedding cannot cut into whole patches (timm
    asserts on it at the first forward pass) unless the model pads its input."""
    embed = getattr(model, "patch_embed", None)
    if spec.img_size is None or embed is None or getattr(embed, "dynamic_img_pad", False):
        return
    patch = tuple(int(p) for p in getattr(embed, "patch_size", ()) or ())
    if patch and any(spec.img_size % p for p in patch):
        raise ValueError(f"--img-size {spec.img_size} is not a multiple of {spec.name}'s patch size {patch[0]}")


def _load_weights(model: nn.Module, path: Path, spec: ModelSpec) -> None:
    state = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        problems = []
        if shapes:
            problems.append("shapes differ: " + "; ".join(shapes[:3]))
        if missing:
            problems.append(f"missing from the file: {', '.join(missing[:3])}")
        if unexpected:
            problems.append(f"not in the model: {', '.join(unexpected[:3])}")
        raise ValueError(
            f"--weights {path} does not fit {spec.describe().split(' --weights')[0]} "
            f"(num_classes={spec.num_classes or 'default'}, img_size={spec.img_size or 'default'}): "
            + " | ".join(problems)
            + ". Check --num-classes and --img-size"
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


# ------------------------------------------------------------------------------ CLI
def add_model_arguments(
    parser: argparse.ArgumentParser, default: str | None = "synthetic-vit", aliases: tuple[str, ...] = ()
) -> None:
    """``--model`` and the timm options ``--pretrained``, ``--weights``, ``--num-classes``, ``--img-size``.

    Examples
    --------
    >>> p = argparse.ArgumentParser()
    >>> add_model_arguments(p)
    >>> a = p.parse_args(["--model", "timm:resnet18", "--weights", "r.pth", "--num-classes", "10"])
    >>> a.model, a.weights, a.num_classes, a.pretrained, a.img_size
    ('timm:resnet18', 'r.pth', 10, False, None)
    """
    from captum_vit._cli_common import positive_int

    g = parser.add_argument_group("model")
    g.add_argument(
        "--model",
        *aliases,
        dest="model",
        default=default,
        required=default is None,
        help="a registered name (shipped, e.g. synthetic-vit, or --register'ed), timm:<architecture>, or a local "
        "Hugging Face model folder" + (f" (default {default})" if default else ""),
    )
    g.add_argument("--weights", default=None, help="timm: your weights (.safetensors, or a .pth/.pt state dict)")
    g.add_argument("--pretrained", action="store_true", help="timm: timm's hub weights (downloads them)")
    g.add_argument("--num-classes", type=positive_int, default=None, help="timm: classes of your classifier head")
    g.add_argument("--img-size", type=positive_int, default=None, help="timm: input side in pixels")


def spec_from_args(args: argparse.Namespace) -> ModelSpec:
    """The :class:`ModelSpec` of parsed :func:`add_model_arguments` options."""
    return ModelSpec.parse(
        args.model, pretrained=args.pretrained, weights=args.weights, num_classes=args.num_classes,
        img_size=args.img_size,
    )  # fmt: skip


def model_from_args(args: argparse.Namespace) -> nn.Module:
    """The model of parsed :func:`add_model_arguments` options, loaded once per ``args``
    (a command's check step loads it, its run step reuses it)."""
    cached = getattr(args, "_model_cache", None)
    spec = spec_from_args(args)
    if cached is not None and cached[0] == spec:
        return cached[1]
    model = spec.load()
    args._model_cache = (spec, model)
    return model
