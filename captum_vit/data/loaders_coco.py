"""COCO val2017 instance masks, with the union of all instances as foreground (LTX's
``annToMask`` union, docs/methods.md §7.5), decoded without pycocotools.

COCO stores a segmentation either as polygons (``[[x1, y1, x2, y2, ...], ...]`` in pixel
coordinates, pixel ``(i, j)`` covering ``[j, j + 1) x [i, i + 1)``) or as a run-length
encoding over the column-major (Fortran-order) flattened mask, alternating runs of 0s and 1s
starting with 0s; the run lengths are a list (uncompressed, crowd annotations) or COCO's
compact string (6-bit characters offset by 48, 5 payload bits each, a continuation bit, a
sign bit, and runs after the second stored as differences to the run two before).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from captum_vit.data.loaders import Sample, _require_dir, image_size_hw, read_image, to_mask_tensor


def rle_counts_from_string(s: str) -> list[int]:
    """Decode COCO's compact RLE string into run lengths.

    Examples
    --------
    >>> rle_counts_from_string("52203")  # runs 3 and 4 are stored relative to runs 1 and 2
    [5, 2, 2, 2, 5]
    """
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)  # sign-extend a negative difference
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """``{"size": [h, w], "counts": list or str}`` -> ``(h, w)`` uint8 mask.

    Raises
    ------
    ValueError
        If the runs do not add up to ``h * w`` or a run is negative.

    Examples
    --------
    >>> decode_rle({"size": [2, 3], "counts": [1, 2, 3]}).tolist()  # column-major runs
    [[0, 1, 0], [1, 0, 0]]
    """
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    runs = rle_counts_from_string(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if any(r < 0 for r in runs) or sum(runs) != h * w:
        raise ValueError(f"corrupt RLE: runs {runs[:6]}... sum to {sum(runs)} for a {h}x{w} mask")
    values = np.zeros(len(runs), dtype=np.uint8)
    values[1::2] = 1
    return np.repeat(values, runs).reshape(w, h).T.copy()


def rasterize_polygon(polygon: Sequence[float], height: int, width: int) -> np.ndarray:
    """Fill one polygon (even-odd rule) on an ``(height, width)`` grid, sampling pixel centres.

    Pixel ``(i, j)`` is inside when its centre ``(j + 0.5, i + 0.5)`` is: a scanline fill,
    one row at a time, over the polygon's edge crossings.

    Examples
    --------
    >>> rasterize_polygon([1, 1, 4, 1, 4, 3, 1, 3], 4, 5).astype(int).tolist()
    [[0, 0, 0, 0, 0], [0, 1, 1, 1, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0]]
    """
    pts = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    mask = np.zeros((height, width), dtype=np.uint8)
    if len(pts) < 3:
        return mask
    x0, y0 = pts[:, 0], pts[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    cols = np.arange(width) + 0.5
    lo, hi = max(0, int(np.floor(pts[:, 1].min()))), min(height, int(np.ceil(pts[:, 1].max())) + 1)
    for i in range(lo, hi):
        yc = i + 0.5
        crossing = (y0 <= yc) != (y1 <= yc)  # half-open: a vertex on the line counts once
        if not crossing.any():
            continue
        xs = x0[crossing] + (yc - y0[crossing]) * (x1[crossing] - x0[crossing]) / (y1[crossing] - y0[crossing])
        # Even-odd: a centre is inside when an odd number of crossings lies to its left.
        mask[i] = (np.sum(xs[None, :] < cols[:, None], axis=1) % 2).astype(np.uint8)
    return mask


def annotation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """One annotation's ``segmentation`` (polygons or RLE) -> ``(height, width)`` uint8 mask."""
    if isinstance(segmentation, list):
        mask = np.zeros((height, width), dtype=np.uint8)
        for poly in segmentation:
            mask |= rasterize_polygon(poly, height, width)
        return mask
    if isinstance(segmentation, dict) and "counts" in segmentation:
        m = decode_rle(segmentation)
        if m.shape != (height, width):
            raise ValueError(f"RLE size {m.shape} differs from the image's {(height, width)}")
        return m
    raise ValueError(f"unsupported COCO segmentation of type {type(segmentation).__name__}")


class COCOInstances(torch.utils.data.Dataset[Sample]):
    """COCO (val2017: 5,000 images) with the union of all instance masks as foreground.

    Parameters
    ----------
    root : str or Path
        Folder holding the images (``val2017/``) or the images themselves.
    annotations : str or Path, optional
        Instances JSON (default ``root/annotations/instances_val2017.json``).
    image_size : int, (H, W) or None
        Resize target (default 224).
    require_annotations : bool
        Skip images without any instance (default), whose all-background mask says nothing
        about localisation.

    Raises
    ------
    FileNotFoundError
        Missing folder or annotation file.
    ValueError
        Malformed JSON or an empty dataset.
    """

    def __init__(
        self,
        root: str | Path,
        annotations: str | Path | None = None,
        image_size: int | tuple[int, int] | None = 224,
        require_annotations: bool = True,
    ) -> None:
        root = _require_dir(root, "COCO")
        ann_path = Path(annotations) if annotations is not None else root / "annotations" / "instances_val2017.json"
        if not ann_path.is_file():
            raise FileNotFoundError(f"COCO annotations file {str(ann_path)!r} does not exist")
        self.image_dir = root / "val2017" if (root / "val2017").is_dir() else root
        self.size = image_size_hw(image_size)
        try:
            data = json.loads(ann_path.read_text())
            images = {int(im["id"]): im for im in data["images"]}
            per_image: dict[int, list[Any]] = defaultdict(list)
            for ann in data.get("annotations", []):
                per_image[int(ann["image_id"])].append(ann["segmentation"])
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"malformed COCO annotations {str(ann_path)!r}: {e}") from None
        ids = sorted(i for i in images if per_image[i] or not require_annotations)
        self.items = [(images[i], per_image[i]) for i in ids]
        if not self.items:
            raise ValueError(f"empty dataset: {str(ann_path)!r} lists no (annotated) images")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        info, segs = self.items[index]
        h, w = int(info["height"]), int(info["width"])
        union = np.zeros((h, w), dtype=np.uint8)
        for seg in segs:
            union |= annotation_mask(seg, h, w)
        image = read_image(self.image_dir / info["file_name"], self.size)
        return image, torch.tensor(-1, dtype=torch.long), to_mask_tensor(union.astype(np.int32), self.size)
