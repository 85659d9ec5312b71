"""One dataset interface for training and evaluation, sized and preprocessed by the model.

Every dataset yields ``(image, label, mask)`` as :mod:`captum_vit.data.loaders` describes:
``image`` ``(3, H, W)`` float32 pixels in ``[0, 1]`` (the model's normalisation is applied by
the methods and metrics, which need pixel space), ``label`` -1 where unknown, ``mask`` -1
where unknown. ``(H, W)`` is the model's input size (``model.pretrained_cfg``, see
:mod:`captum_vit.models.spec`).

=================  ===========================================================================
``--dataset``      what ``--data-root`` is
=================  ===========================================================================
``synthetic``      nothing: images rendered by :mod:`captum_vit.data.synthetic` (with masks)
``folder``         a folder of class subfolders, as torchvision's ``ImageFolder``
``imagenet-val``   the ImageNet validation folder (class folders, or flat + ``--labels-file``)
``imagenet-seg``   ``gtsegs_ijcv.mat`` (ImageNet-segmentation, with masks)
``voc``            PASCAL VOC 2012 (segmentation ``val``, with masks)
``coco``           COCO val2017 (instance masks)
=================  ===========================================================================

Image files (``folder``, ``imagenet-val``) go through the model's own transform built by
:func:`timm.data.create_transform`: ``--resize stretch`` (default) resizes straight to the input
size with the model's interpolation, as the papers' evaluations do; ``--resize model`` is the
model's evaluation transform (resize, then centre crop by its ``crop_pct``). The segmentation
sets resize image and mask straight to the input size (bilinear and nearest), as the papers.

Unreadable image files are found before any computation (:func:`check_images`) and reported
with their path: fatal with ``--on-bad-image fail`` (the default), left out with ``skip``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from captum_vit.data.loaders import Sample, _pil, rgb_image

DATASETS = ("synthetic", "folder", "imagenet-val", "imagenet-seg", "voc", "coco")
RESIZE_MODES = ("stretch", "model")
BAD_IMAGE_POLICIES = ("fail", "skip")
#: The seed of :func:`held_out_splits` in the training commands: the validation images of a
#: dataset do not change with the training seed.
SPLIT_SEED = 0


class BadImageError(ValueError):
    """An image file that cannot be read; the message starts with its path."""


def input_hw(model: nn.Module) -> tuple[int, int]:
    """The ``(H, W)`` the model takes, from ``model.pretrained_cfg["input_size"]``.

    Raises
    ------
    ValueError
        A model without an input size in its ``pretrained_cfg``.
    """
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    if not size or len(size) != 3:
        raise ValueError("the model has no pretrained_cfg['input_size']: load it through captum_vit.models.spec")
    return int(size[1]), int(size[2])


def pixel_transform(model: nn.Module, resize: str = "stretch") -> Callable[[Any], Tensor]:
    """PIL image -> ``(3, H, W)`` float32 pixels in ``[0, 1]``, by ``timm.data.create_transform``
    with the model's input size, interpolation and (``resize="model"``) crop.

    Examples
    --------
    >>> import timm
    >>> from PIL import Image
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1)
    >>> m.pretrained_cfg = dict(m.pretrained_cfg, input_size=(3, 32, 32))
    >>> pixel_transform(m)(Image.new("RGB", (50, 40), "white")).shape
    torch.Size([3, 32, 32])
    """
    from timm.data import create_transform, resolve_data_config

    if resize not in RESIZE_MODES:
        raise ValueError(f"--resize: expected one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    cfg = resolve_data_config(model=model)
    cfg["input_size"] = (3, *input_hw(model))
    if resize == "stretch":
        cfg.update(crop_pct=1.0, crop_mode="squash")
    transform = create_transform(**cfg, is_training=False, normalize=False)

    def to_pixels(image: Any) -> Tensor:
        out = transform(image.convert("RGB"))
        return out.float().div(255) if out.dtype == torch.uint8 else out.float()

    return to_pixels


class ImageFiles(Dataset[Sample]):
    """Labelled image files through a transform; ``(image, label, mask of -1)``.

    Parameters
    ----------
    items : sequence of (path, label)
        The files and their class indices.
    transform : callable
        PIL image -> ``(3, H, W)`` pixels (:func:`pixel_transform`).
    classes : sequence of str, optional
        Class names by index (a folder's subfolder names).

    Raises
    ------
    BadImageError
        From ``__getitem__``, for a file that cannot be decoded (the message names it).
    """

    def __init__(
        self, items: Sequence[tuple[Path, int]], transform: Callable[[Any], Tensor], classes: Sequence[str] = ()
    ) -> None:
        self.items, self.transform, self.classes = list(items), transform, list(classes)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        path, label = self.items[index]
        image = self.transform(_open_image(path))
        return image, torch.tensor(label, dtype=torch.long), torch.full(image.shape[1:], -1, dtype=torch.long)


def _open_image(path: Path) -> Any:
    try:
        with _pil().open(path) as img:
            img.load()
            return rgb_image(img)
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError... for bad files
        raise BadImageError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None


def build_dataset(
    kind: str,
    model: nn.Module,
    root: str | Path | None = None,
    *,
    labels_file: str | Path | None = None,
    resize: str = "stretch",
    synthetic_images: int = 64,
    seed: int = 0,
    objects: int = 1,
) -> Dataset[Sample]:
    """The dataset ``kind`` (see the module docstring) at ``model``'s input size.

    Raises
    ------
    ValueError
        An unknown ``kind``, a missing ``root``, ``resize="model"`` for a set with masks.
    FileNotFoundError
        A missing folder or file.

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1)
    >>> m.pretrained_cfg = dict(m.pretrained_cfg, input_size=(3, 32, 32))
    >>> image, label, mask = build_dataset("synthetic", m, synthetic_images=2)[0]
    >>> tuple(image.shape), tuple(mask.shape)
    ((3, 32, 32), (32, 32))
    """
    from captum_vit.data import loaders, loaders_coco, loaders_segmentation
    from captum_vit.data.synthetic import SyntheticDataset

    if kind not in DATASETS:
        raise ValueError(f"--dataset: expected one of {', '.join(DATASETS)}, got {kind!r}")
    hw = input_hw(model)
    if kind == "synthetic":
        if hw[0] != hw[1]:
            raise ValueError(f"--dataset synthetic renders square images; the model takes {hw[0]}x{hw[1]}")
        return SyntheticDataset(synthetic_images, seed=seed, objects=objects, image_size=hw[0])
    if root is None:
        raise ValueError(f"--data-root is required for --dataset {kind}")
    if kind in ("folder", "imagenet-val"):
        if kind == "folder" and labels_file is not None:
            raise ValueError("--labels-file is for --dataset imagenet-val (a flat folder)")
        listing = loaders.ImageNetValFolder(root, labels_file, image_size=None)
        classes = sorted(p.name for p in Path(root).iterdir() if p.is_dir()) if labels_file is None else []
        return ImageFiles(listing.items, pixel_transform(model, resize), classes)
    if resize != "stretch":
        raise ValueError(f"--resize {resize} is for image folders; --dataset {kind} resizes images and masks straight")
    if kind == "imagenet-seg":
        return loaders_segmentation.ImageNetSegmentation(root, hw)
    if kind == "voc":
        return loaders_segmentation.VOCSegmentation(root, image_size=hw)
    return loaders_coco.COCOInstances(root, image_size=hw)


def _probe(path: Path) -> str:
    try:
        _open_image(path)
    except BadImageError as e:
        return str(e)
    return ""


class _Probes(Dataset[str]):
    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> str:
        return _probe(self.paths[index])


def check_images(dataset: Dataset[Sample], on_bad_image: str = "fail", workers: int = 0) -> Dataset[Sample]:
    """Decode every image file of ``dataset`` once; report the unreadable ones by path.

    Datasets that are not image files (synthetic, the ``.mat`` file, VOC, COCO) are returned
    as they are.

    Parameters
    ----------
    dataset : Dataset
        Usually from :func:`build_dataset`.
    on_bad_image : {"fail", "skip"}
        ``"fail"``: raise; ``"skip"``: print each path on standard error and leave it out.
    workers : int
        ``DataLoader`` worker processes decoding in parallel.

    Returns
    -------
    Dataset
        ``dataset`` itself, or without the unreadable files.

    Raises
    ------
    BadImageError
        With ``"fail"``: the message names the unreadable files (up to five) and how many.
    """
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ValueError(f"--on-bad-image: expected one of {', '.join(BAD_IMAGE_POLICIES)}, got {on_bad_image!r}")
    if not isinstance(dataset, ImageFiles):
        return dataset
    paths = [p for p, _ in dataset.items]
    loader = DataLoader(_Probes(paths), batch_size=64, num_workers=workers, collate_fn=list)
    problems = [message for batch in loader for message in batch]
    bad = [i for i, message in enumerate(problems) if message]
    if not bad:
        return dataset
    if on_bad_image == "fail":
        shown = "; ".join(problems[i] for i in bad[:5])
        raise BadImageError(
            f"{len(bad)} of {len(paths)} images cannot be read: {shown}. Fix or remove them, or pass "
            "--on-bad-image skip"
        )
    for i in bad:
        print(f"captum-vit: skipping {problems[i]}", file=sys.stderr)
    print(f"captum-vit: skipped {len(bad)} unreadable of {len(paths)} images", file=sys.stderr)
    keep = sorted(set(range(len(paths))) - set(bad))
    return Subset(dataset, keep)


def held_out_splits(dataset: Dataset[Sample], sizes: Sequence[int], seed: int = 0) -> list[Subset[Sample]]:
    """Disjoint random subsets of ``sizes`` examples, then the rest (the training set), the
    same for a given ``seed`` on every machine and rank.

    Raises
    ------
    ValueError
        When the held-out sizes leave no example for training.

    Examples
    --------
    >>> from torch.utils.data import TensorDataset
    >>> val, train = held_out_splits(TensorDataset(torch.arange(10)), [3], seed=1)
    >>> len(val), len(train), sorted(int(v[0]) for v in val + train) == list(range(10))
    (3, 7, True)
    """
    n = len(dataset)  # type: ignore[arg-type]
    if sum(sizes) >= n:
        raise ValueError(f"the held-out splits ({' + '.join(map(str, sizes))} images) leave none of {n} to train on")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    out: list[Subset[Sample]] = []
    start = 0
    for size in sizes:
        out.append(Subset(dataset, sorted(order[start : start + size])))
        start += size
    out.append(Subset(dataset, sorted(order[start:])))
    return out


def first(dataset: Dataset[Sample], n: int | None) -> Dataset[Sample]:
    """The first ``n`` examples (all when ``n`` is None)."""
    total = len(dataset)  # type: ignore[arg-type]
    return dataset if n is None or n >= total else Subset(dataset, range(n))


def _flatten(dataset: Dataset[Sample]) -> tuple[Dataset[Sample], list[int]]:
    """The dataset under nested ``Subset``s and the indices into it."""
    mapping = list(range(len(dataset)))  # type: ignore[arg-type]
    while isinstance(dataset, Subset):
        mapping = [int(dataset.indices[m]) for m in mapping]
        dataset = dataset.dataset
    return dataset, mapping


def labels_of(dataset: Dataset[Sample]) -> Tensor:
    """Every label of ``dataset``, in order (image files are not decoded for :class:`ImageFiles`)."""
    base, index = _flatten(dataset)
    if isinstance(base, ImageFiles):
        return torch.tensor([base.items[i][1] for i in index], dtype=torch.long)
    return torch.stack([torch.as_tensor(dataset[i][1]) for i in range(len(index))])


# ------------------------------------------------------------------------------ CLI
def add_data_arguments(parser: Any, default: str = "synthetic") -> None:
    """``--dataset``, ``--data-root``, ``--labels-file``, ``--resize`` and ``--on-bad-image``."""
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default=default, help=f"dataset (default {default})")
    g.add_argument("--data-root", type=Path, default=None, help="the dataset's folder or file (all but synthetic)")
    g.add_argument("--labels-file", type=Path, default=None, help="imagenet-val: the labels of a flat folder")
    g.add_argument(
        "--resize", choices=RESIZE_MODES, default="stretch",
        help="image files: stretch to the model's input size (the papers'), or the model's own resize and crop",
    )  # fmt: skip
    g.add_argument(
        "--on-bad-image", choices=BAD_IMAGE_POLICIES, default="fail",
        help="an unreadable image file: stop before computing (fail) or leave it out (skip); both name it",
    )  # fmt: skip


def dataset_from_args(
    args: Any, model: nn.Module, synthetic_images: int = 64, seed: int = 0, objects: int = 1
) -> Dataset[Sample]:
    """The dataset of parsed :func:`add_data_arguments` options, its image files checked
    (:func:`check_images`) with ``args.workers`` processes."""
    if args.dataset != "synthetic" and args.data_root is None:
        raise ValueError(f"--data-root is required for --dataset {args.dataset}")
    if args.data_root is not None and not Path(args.data_root).exists():
        raise ValueError(f"--data-root: no such file or folder: {args.data_root}")
    if args.labels_file is not None and not Path(args.labels_file).is_file():
        raise ValueError(f"--labels-file: no such file: {args.labels_file}")
    dataset = build_dataset(
        args.dataset, model, args.data_root, labels_file=args.labels_file, resize=args.resize,
        synthetic_images=synthetic_images, seed=seed, objects=objects,
    )  # fmt: skip
    return check_images(dataset, args.on_bad_image, getattr(args, "workers", 0) or 0)
