"""Loaders for the real benchmarks, all yielding ``(image, label, mask)`` like the synthetic set.

``image`` is ``(3, H, W)`` float32 in ``[0, 1]`` pixel space, resized to ``image_size``
without a crop (Chefer, LTX and IIA resize straight to 224x224, bilinear); ``label`` is an
int64 class index, -1 where the dataset has none (segmentation sets); ``mask`` is ``(H, W)``
int64 with 1 foreground, 0 background and -1 ignored or unknown (resized with nearest). The
evaluation skips metrics whose inputs are unknown.

This module holds the shared helpers and the ImageNet validation folder; the segmentation
sets are in :mod:`captum_vit.data.loaders_segmentation` and COCO in
:mod:`captum_vit.data.loaders_coco`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm")

Sample = tuple[Tensor, Tensor, Tensor]


def _pil():  # type: ignore[no-untyped-def]
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow comes with torchvision
        raise ImportError("reading image files needs Pillow: pip install 'captum_vit[datasets]'") from e
    return Image


def image_size_hw(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``(H, W)`` from an int, a pair or None (keep the original size)."""
    if image_size is None:
        return None
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    if not (
        isinstance(image_size, tuple) and len(image_size) == 2 and all(isinstance(s, int) and s > 0 for s in image_size)
    ):
        raise ValueError(f"image_size must be a positive int, an (H, W) pair or None, got {image_size!r}")
    return image_size


#: Pillow modes of 16-bit (and 32-bit integer) grayscale pixels, scaled to 8 bits by :func:`rgb_image`.
WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def rgb_image(img: Any) -> Any:
    """A Pillow image as 8-bit RGB, with 16-bit grayscale scaled to 8 bits (Pillow's own
    ``convert("RGB")`` clips those at 255: an almost white image).

    Raises
    ------
    ValueError
        For floating-point pixels (mode ``F``: no defined range) and integer pixels outside
        ``[0, 65535]``.

    Examples
    --------
    >>> from PIL import Image
    >>> gray = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16))
    >>> np.asarray(rgb_image(gray))[0, :, 0].tolist()
    [0, 128, 255]
    """
    if img.mode in WIDE_GRAY_MODES:
        a = np.asarray(img).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"{img.mode} pixels outside [0, 65535]: save the image with 8 or 16 bits per channel")
        return _pil().fromarray(np.rint(a / 257.0).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        raise ValueError("floating-point pixels (mode F) have no defined range: save the image with 8 or 16 bits")
    return img.convert("RGB")


def to_image_tensor(array: np.ndarray, size: tuple[int, int] | None) -> Tensor:
    """An ``(H, W, 3)`` uint8 array -> ``(3, *size)`` float32 in ``[0, 1]`` (bilinear resize)."""
    img = _pil().fromarray(np.ascontiguousarray(array).astype(np.uint8)).convert("RGB")
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), _pil().Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def to_mask_tensor(mask: np.ndarray, size: tuple[int, int] | None) -> Tensor:
    """An ``(H, W)`` integer mask (values -1..255) -> ``(*size)`` int64, nearest resize."""
    m = np.asarray(mask).astype(np.int32)
    if size is not None and m.shape != size:
        img = _pil().fromarray(m).resize((size[1], size[0]), _pil().Resampling.NEAREST)
        m = np.asarray(img, dtype=np.int32)
    return torch.from_numpy(m.astype(np.int64))


def read_image(path: Path, size: tuple[int, int] | None) -> Tensor:
    with _pil().open(path) as img:
        return to_image_tensor(np.asarray(rgb_image(img)), size)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _require_dir(root: str | Path, what: str) -> Path:
    path = Path(root)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} folder {str(path)!r} is a file, not a folder")
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder {str(path)!r} does not exist")
    return path


class ImageNetValFolder(Dataset[Sample]):
    """ImageNet validation images with labels, in either common layout.

    * **class folders** (``labels_file=None``): ``root/<class>/<image>``; classes are numbered
      in sorted folder-name order (as torchvision's ``ImageFolder``), or by ``class_index``
      (e.g. WordNet id -> ImageNet index);
    * **flat folder + label file**: ``root/<image>`` and a text file whose lines are either
      ``<file name> <label>`` (e.g. ``ILSVRC2012_val_00000001.JPEG 65``) or a bare ``<label>``
      per line, aligned with the sorted file names.

    Parameters
    ----------
    root : str or Path
        The folder.
    labels_file : str or Path, optional
        The label file of the flat layout.
    image_size : int, (H, W) or None
        Resize target (default 224, no crop); None keeps each image's size.
    class_index : mapping of str to int, optional
        Class-folder name -> label (class-folder layout only).

    Raises
    ------
    FileNotFoundError
        Missing folder or label file.
    ValueError
        No images (an empty dataset), malformed or mismatched label lines, unknown classes.

    Examples
    --------
    >>> import tempfile
    >>> from PIL import Image
    >>> root = Path(tempfile.mkdtemp())
    >>> for cls in ("n01", "n02"):
    ...     (root / cls).mkdir()
    ...     Image.new("RGB", (10, 8), "red").save(root / cls / "a.png")
    >>> ds = ImageNetValFolder(root, image_size=16)
    >>> image, label, mask = ds[1]
    >>> tuple(image.shape), int(label), int(mask.max())
    ((3, 16, 16), 1, -1)
    """

    def __init__(
        self,
        root: str | Path,
        labels_file: str | Path | None = None,
        image_size: int | tuple[int, int] | None = 224,
        class_index: Mapping[str, int] | None = None,
    ) -> None:
        self.root = _require_dir(root, "ImageNet validation")
        self.size = image_size_hw(image_size)
        if labels_file is None:
            self.items = self._class_folders(class_index)
        else:
            self.items = self._flat(Path(labels_file))
        if not self.items:
            if labels_file is None and not any(p.is_dir() for p in self.root.iterdir()) and _image_files(self.root):
                raise ValueError(
                    f"{str(self.root)!r} holds images but no class subfolders: a labelled folder has one subfolder "
                    "of images per class (as torchvision's ImageFolder); for a flat ImageNet validation folder "
                    "pass --labels-file"
                )
            raise ValueError(f"empty dataset: no images ({', '.join(IMAGE_EXTENSIONS)}) under {str(self.root)!r}")

    def _class_folders(self, class_index: Mapping[str, int] | None) -> list[tuple[Path, int]]:
        classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        index = dict(class_index) if class_index is not None else {c: i for i, c in enumerate(classes)}
        unknown = [c for c in classes if c not in index]
        if unknown:
            raise ValueError(f"class folders {unknown[:5]} are missing from class_index")
        return [(f, int(index[c])) for c in classes for f in _image_files(self.root / c)]

    def _flat(self, labels_file: Path) -> list[tuple[Path, int]]:
        if not labels_file.is_file():
            raise FileNotFoundError(f"labels_file {str(labels_file)!r} does not exist")
        files = _image_files(self.root)
        lines = [ln.split() for ln in labels_file.read_text().splitlines() if ln.strip()]
        try:
            if lines and all(len(parts) == 2 for parts in lines):
                by_name = {name: int(lab) for name, lab in lines}
                missing = [f.name for f in files if f.name not in by_name]
                if missing:
                    raise ValueError(f"labels_file has no label for {missing[:3]}")
                return [(f, by_name[f.name]) for f in files]
            if all(len(parts) == 1 for parts in lines):
                if len(lines) != len(files):
                    raise ValueError(f"labels_file has {len(lines)} labels for {len(files)} images")
                return [(f, int(parts[0])) for f, parts in zip(files, lines, strict=True)]
        except ValueError as e:
            raise ValueError(f"malformed labels_file {str(labels_file)!r}: {e}") from None
        raise ValueError(f"labels_file {str(labels_file)!r}: every line must be '<file> <label>' or '<label>'")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        path, label = self.items[index]
        image = read_image(path, self.size)
        return image, torch.tensor(label, dtype=torch.long), torch.full(image.shape[1:], -1, dtype=torch.long)
