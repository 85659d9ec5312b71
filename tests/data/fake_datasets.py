"""Tiny datasets written to disk in the real formats, for the loader and evaluation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

RED, BLUE = (255, 0, 0), (0, 0, 255)


def solid_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (12, 10)) -> None:
    """Write a one-colour RGB image of ``size`` (width, height), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def write_voc(root: Path) -> np.ndarray:
    """A one-image PASCAL VOC 2012 folder under ``root`` (val split); returns its ``(8, 10)``
    label array: a person (15) and a void (255) boundary row on background (0)."""
    labels = np.zeros((8, 10), dtype=np.uint8)
    labels[2:6, 3:8] = 15  # person
    labels[1, 2:9] = 255  # void boundary
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    solid_image(root / "JPEGImages" / "2007_000001.jpg", RED, (10, 8))
    png = Image.fromarray(labels, mode="P")
    png.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])  # colours unlike indices
    png.save(root / "SegmentationClass" / "2007_000001.png")
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_000001\n")
    return labels
