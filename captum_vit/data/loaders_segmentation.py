"""ImageNet-segmentation (``gtsegs_ijcv.mat``) and PASCAL VOC 2012 segmentation loaders.

Both yield ``(image, label, mask)`` as :mod:`captum_vit.data.loaders` describes, with
``label = -1`` (these sets carry no ImageNet class: the predicted class is explained,
docs/methods.md §7.5) and a binary foreground mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from captum_vit.data.loaders import (
    Sample,
    _pil,
    _require_dir,
    image_size_hw,
    read_image,
    to_image_tensor,
    to_mask_tensor,
)

#: VOC's "void" label on object boundaries.
VOC_VOID = 255
BINARIZATIONS = ("ignore_void", "ltx")


class ImageNetSegmentation(torch.utils.data.Dataset[Sample]):
    """The ImageNet-segmentation set of Guillaumin et al. (4,276 images), as used by Chefer,
    LTX and IIA: a MATLAB v7.3 (HDF5) file whose ``/value/img`` and ``/value/gt`` hold one
    object reference per image.

    MATLAB stores arrays transposed: an image reference points to a ``(3, W, H)`` uint8
    array, and a ground-truth reference to a cell whose first entry points to a ``(W, H)``
    mask; both are transposed back here (as Chefer's ``Imagenet_Segmentation`` loader does).
    Masks are resized with nearest, images bilinear.

    Parameters
    ----------
    path : str or Path
        ``gtsegs_ijcv.mat``.
    image_size : int, (H, W) or None
        Resize target (default 224).

    Raises
    ------
    FileNotFoundError
        Missing file.
    ValueError
        A file without ``/value/img`` and ``/value/gt``, or with no images.
    """

    def __init__(self, path: str | Path, image_size: int | tuple[int, int] | None = 224) -> None:
        try:
            import h5py
        except ImportError as e:  # pragma: no cover - h5py is in the datasets extra
            raise ImportError("reading gtsegs_ijcv.mat needs h5py: pip install 'captum_vit[datasets]'") from e
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ImageNet-segmentation file {str(self.path)!r} does not exist")
        self.size = image_size_hw(image_size)
        try:
            handle = h5py.File(self.path, "r")
        except OSError as e:
            raise ValueError(f"{str(self.path)!r} is not an HDF5 (MATLAB v7.3) file such as gtsegs_ijcv.mat: {e}") from None
        with handle as f:
            if "value/img" not in f or "value/gt" not in f:
                raise ValueError(f"{str(self.path)!r} has no /value/img and /value/gt datasets (not gtsegs_ijcv.mat?)")
            self._n = int(f["value/img"].shape[0])
            if int(f["value/gt"].shape[0]) != self._n:
                raise ValueError(f"{str(self.path)!r}: /value/img and /value/gt hold different numbers of entries")
        if self._n == 0:
            raise ValueError(f"empty dataset: {str(self.path)!r} holds no images")
        self._file: Any = None  # opened lazily, once per process (DataLoader workers)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int) -> Sample:
        import h5py

        if self._file is None:
            self._file = h5py.File(self.path, "r")
        f = self._file
        img = np.asarray(f[f["value/img"][index, 0]]).transpose(2, 1, 0)
        cell = f[f["value/gt"][index, 0]]
        gt = np.asarray(f[cell[0, 0]]).transpose(1, 0)
        image = to_image_tensor(img, self.size)
        mask = to_mask_tensor((gt > 0).astype(np.int32), self.size)
        return image, torch.tensor(-1, dtype=torch.long), mask


class VOCSegmentation(torch.utils.data.Dataset[Sample]):
    """PASCAL VOC 2012 segmentation (``val``: 1,449 images) with a binary foreground mask.

    Expects ``root/JPEGImages/<id>.jpg``, ``root/SegmentationClass/<id>.png`` (palette PNG:
    0 background, 1-20 classes, 255 void) and ``root/ImageSets/Segmentation/<split>.txt``;
    ``root`` may also be the folder holding ``VOCdevkit/VOC2012``.

    Parameters
    ----------
    root : str or Path
        The VOC2012 folder.
    split : str
        Image-set name (default ``"val"``).
    binarize : str
        ``"ignore_void"`` (default): foreground = classes 1-20, void 255 -> -1 (ignored);
        ``"ltx"``: LTX's ``label > 0``, so the void boundary counts as foreground.
    image_size : int, (H, W) or None
        Resize target (default 224).

    Raises
    ------
    FileNotFoundError
        Missing folders or split file.
    ValueError
        Unknown ``binarize``, or an empty split.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        binarize: str = "ignore_void",
        image_size: int | tuple[int, int] | None = 224,
    ) -> None:
        root = _require_dir(root, "VOC")
        if (root / "VOCdevkit" / "VOC2012").is_dir():
            root = root / "VOCdevkit" / "VOC2012"
        if binarize not in BINARIZATIONS:
            raise ValueError(f"binarize must be one of {BINARIZATIONS}, got {binarize!r}")
        split_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(f"VOC split file {str(split_file)!r} does not exist")
        self.root, self.binarize, self.size = root, binarize, image_size_hw(image_size)
        self.ids = [ln.strip() for ln in split_file.read_text().splitlines() if ln.strip()]
        if not self.ids:
            raise ValueError(f"empty dataset: {str(split_file)!r} lists no images")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        name = self.ids[index]
        image = read_image(self.root / "JPEGImages" / f"{name}.jpg", self.size)
        with _pil().open(self.root / "SegmentationClass" / f"{name}.png") as png:
            labels = np.asarray(png, dtype=np.int32)  # palette indices, not colours
        if self.binarize == "ltx":
            binary = (labels > 0).astype(np.int32)
        else:
            binary = np.where(labels == VOC_VOID, -1, (labels > 0).astype(np.int32))
        return image, torch.tensor(-1, dtype=torch.long), to_mask_tensor(binary, self.size)
