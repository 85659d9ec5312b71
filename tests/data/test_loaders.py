"""Dataset loaders, each read back from small files written here in the real format."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from matplotlib.path import Path as MplPath

from captum_vit.data.loaders import ImageNetValFolder
from captum_vit.data.loaders_coco import COCOInstances, decode_rle, rasterize_polygon, rle_counts_from_string
from captum_vit.data.loaders_segmentation import ImageNetSegmentation, VOCSegmentation
from tests.data.fake_datasets import BLUE, RED, solid_image, write_voc


def test_imagenet_class_folders(tmp_path: Path) -> None:
    solid_image(tmp_path / "n02" / "b.png", BLUE)
    solid_image(tmp_path / "n01" / "a.png", RED)
    solid_image(tmp_path / "n01" / "c.png", RED)
    (tmp_path / "n01" / "notes.txt").write_text("not an image")
    ds = ImageNetValFolder(tmp_path, image_size=(8, 6))
    assert len(ds) == 3 and [int(ds[i][1]) for i in range(3)] == [0, 0, 1]
    image, _, mask = ds[2]
    assert image.shape == (3, 8, 6) and torch.allclose(
        image, torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 8, 6)
    )
    assert bool((mask == -1).all())  # no segmentation: every pixel unknown
    mapped = ImageNetValFolder(tmp_path, image_size=8, class_index={"n01": 7, "n02": 3})
    assert [int(mapped[i][1]) for i in range(3)] == [7, 7, 3]
    with pytest.raises(ValueError, match="missing from class_index"):
        ImageNetValFolder(tmp_path, class_index={"n01": 0})


def test_imagenet_flat_folder_with_label_file(tmp_path: Path) -> None:
    for i, colour in enumerate((RED, BLUE, RED)):
        solid_image(tmp_path / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG", colour)
    named = tmp_path / "val.txt"
    named.write_text(
        "ILSVRC2012_val_00000002.JPEG 65\nILSVRC2012_val_00000001.JPEG 9\nILSVRC2012_val_00000003.JPEG 1\n"
    )
    ds = ImageNetValFolder(tmp_path / "val", labels_file=named, image_size=16)
    assert [int(ds[i][1]) for i in range(3)] == [9, 65, 1]
    assert ds[1][0][2].mean() > 0.9  # JPEG blue channel of the blue image
    bare = tmp_path / "labels.txt"
    bare.write_text("4\n5\n6\n")
    assert [int(ImageNetValFolder(tmp_path / "val", bare)[i][1]) for i in range(3)] == [4, 5, 6]
    bare.write_text("4\n5\n")
    with pytest.raises(ValueError, match="2 labels for 3 images"):
        ImageNetValFolder(tmp_path / "val", bare)
    with pytest.raises(FileNotFoundError, match="labels_file"):
        ImageNetValFolder(tmp_path / "val", tmp_path / "nope.txt")


def test_empty_and_missing_datasets(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty dataset"):
        ImageNetValFolder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageNetValFolder(tmp_path / "missing")
    with pytest.raises(ValueError, match="image_size"):
        ImageNetValFolder(tmp_path / "empty", image_size=0)


def _write_gtsegs(path: Path, images: list[np.ndarray], masks: list[np.ndarray]) -> None:
    """A tiny gtsegs_ijcv.mat in MATLAB v7.3 layout: transposed arrays behind object references."""
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        img_refs = f.create_dataset("value/img", (len(images), 1), dtype=h5py.ref_dtype)
        gt_refs = f.create_dataset("value/gt", (len(images), 1), dtype=h5py.ref_dtype)
        for i, (img, m) in enumerate(zip(images, masks, strict=True)):
            img_refs[i, 0] = refs.create_dataset(f"img{i}", data=img.transpose(2, 1, 0)).ref
            mask_ds = refs.create_dataset(f"gt{i}", data=m.transpose(1, 0))
            cell = refs.create_dataset(f"cell{i}", (1, 1), dtype=h5py.ref_dtype)
            cell[0, 0] = mask_ds.ref
            gt_refs[i, 0] = cell.ref


def test_imagenet_segmentation_mat(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)  # non-square: catches a missing transpose
    mask = np.zeros((6, 9), dtype=np.uint8)
    mask[1:4, 2:7] = 1
    _write_gtsegs(tmp_path / "gtsegs_ijcv.mat", [img, img[::-1].copy()], [mask, mask[::-1].copy()])
    ds = ImageNetSegmentation(tmp_path / "gtsegs_ijcv.mat", image_size=None)
    image, label, gt = ds[0]
    assert len(ds) == 2 and int(label) == -1
    assert torch.equal(image, torch.from_numpy(img).permute(2, 0, 1).float() / 255)
    assert torch.equal(gt, torch.from_numpy(mask).long())
    assert torch.equal(ds[1][2], torch.from_numpy(mask[::-1].copy()).long())
    resized = ImageNetSegmentation(tmp_path / "gtsegs_ijcv.mat", image_size=18)[0][2]
    assert resized.shape == (18, 18) and set(resized.unique().tolist()) == {0, 1}
    with h5py.File(tmp_path / "bad.mat", "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(ValueError, match="/value/img"):
        ImageNetSegmentation(tmp_path / "bad.mat")


def test_voc_segmentation_void_handling(tmp_path: Path) -> None:
    labels = write_voc(tmp_path / "VOCdevkit" / "VOC2012")
    default = VOCSegmentation(tmp_path, image_size=None)[0][2]
    expected = np.where(labels == 255, -1, (labels > 0).astype(np.int64))
    assert torch.equal(default, torch.from_numpy(expected))
    ltx = VOCSegmentation(tmp_path, binarize="ltx", image_size=None)[0][2]
    assert torch.equal(ltx, torch.from_numpy((labels > 0).astype(np.int64)))
    with pytest.raises(ValueError, match="binarize"):
        VOCSegmentation(tmp_path, binarize="voc")
    with pytest.raises(FileNotFoundError, match="split file"):
        VOCSegmentation(tmp_path, split="train")


def _rle_runs(mask: np.ndarray) -> list[int]:
    """Column-major run lengths, starting with a (possibly empty) run of zeros."""
    runs, prev, count = [], 0, 0
    for v in mask.T.flatten():
        if v != prev:
            runs.append(count)
            prev, count = v, 0
        count += 1
    return [*runs, count]


def _encode_rle_string(mask: np.ndarray) -> str:
    """COCO's compact RLE encoder, written from the format description (test reference)."""
    runs = _rle_runs(mask)
    out = []
    for i, r in enumerate(runs):
        x = r - runs[i - 2] if i > 2 else r
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = not ((c & 0x10 == 0 and x == 0) or (c & 0x10 and x == -1))
            out.append(chr(c + 48 + (0x20 if more else 0)))
    return "".join(out)


def test_rle_and_polygon_decoding() -> None:
    rng = np.random.default_rng(1)
    mask = (rng.random((13, 17)) > 0.6).astype(np.uint8)
    s = _encode_rle_string(mask)
    assert np.array_equal(decode_rle({"size": [13, 17], "counts": s}), mask)
    assert sum(rle_counts_from_string(s)) == 13 * 17
    with pytest.raises(ValueError, match="corrupt RLE"):
        decode_rle({"size": [2, 2], "counts": [1, 1]})
    poly = [1.2, 0.7, 14.6, 3.1, 9.3, 11.8, 4.4, 6.2, 2.0, 10.5]  # non-convex pentagon
    centres = np.stack(np.meshgrid(np.arange(16) + 0.5, np.arange(13) + 0.5), -1).reshape(-1, 2)
    ref = MplPath(np.asarray(poly).reshape(-1, 2)).contains_points(centres).reshape(13, 16)
    assert np.array_equal(rasterize_polygon(poly, 13, 16).astype(bool), ref)


def test_coco_union_of_instances(tmp_path: Path) -> None:
    (tmp_path / "val2017").mkdir()
    solid_image(tmp_path / "val2017" / "000000000001.jpg", RED, (16, 12))
    solid_image(tmp_path / "val2017" / "000000000002.jpg", BLUE, (16, 12))
    crowd = np.zeros((12, 16), dtype=np.uint8)
    crowd[8:11, 10:15] = 1
    blob = np.zeros((12, 16), dtype=np.uint8)
    blob[0:2, 0:3] = 1
    runs = _rle_runs(crowd)  # uncompressed counts, as crowd annotations store them
    ann = {
        "images": [
            {"id": 1, "file_name": "000000000001.jpg", "height": 12, "width": 16},
            {"id": 2, "file_name": "000000000002.jpg", "height": 12, "width": 16},
        ],
        "annotations": [
            {"image_id": 1, "segmentation": [[2, 2, 8, 2, 8, 6, 2, 6]], "iscrowd": 0},
            {"image_id": 1, "segmentation": {"size": [12, 16], "counts": runs}, "iscrowd": 1},
            {"image_id": 1, "segmentation": {"size": [12, 16], "counts": _encode_rle_string(blob)}, "iscrowd": 0},
        ],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(ann))
    ds = COCOInstances(tmp_path, image_size=None)
    assert len(ds) == 1  # image 2 has no instance
    expected = crowd | blob
    expected[2:6, 2:8] = 1
    assert torch.equal(ds[0][2], torch.from_numpy(expected.astype(np.int64)))
    assert len(COCOInstances(tmp_path, require_annotations=False)) == 2
    (tmp_path / "annotations" / "bad.json").write_text('{"images": [{"id": 1}]}')
    with pytest.raises(ValueError, match="empty dataset|malformed"):
        COCOInstances(tmp_path, tmp_path / "annotations" / "bad.json")
