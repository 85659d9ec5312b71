"""Where the shipped DiffMask gates put their highest attributions, on the leaderboard images.

    .venv/bin/python benchmarks/quality/diffmask_ranking.py

Uses the leaderboard's single-object images (``generate(64, seed=12345)``, the rows of
``SyntheticDataset(64, seed=12345)``). A patch counts as object when more than half of its
pixels are in the ground-truth mask. Prints the mean expected keep probability (the
``VisionDiffMask`` patch map) of object and background patches, and the share of object patches
among each image's top-k patches next to their share of all patches (what a random ranking
gives). The README's DiffMask note quotes these figures.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from captum_vit.attr import VisionDiffMask
from captum_vit.data.splits import BENCHMARK_SEED
from captum_vit.data.synthetic import generate
from captum_vit.metrics import model_normalization
from captum_vit.models import load_pretrained


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-images", type=int, default=64, help="leaderboard images to look at (default 64)")
    p.add_argument("--seed", type=int, default=BENCHMARK_SEED)
    args = p.parse_args(argv)
    model = load_pretrained("synthetic-vit")
    data = generate(args.num_images, seed=args.seed, image_size=int(model.pretrained_cfg["input_size"][-1]))
    mean, std = model_normalization(model)
    x = (data.images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    keep = VisionDiffMask(model).attribute(x, return_patch_map=True)  # (N, h, w)
    obj = F.adaptive_avg_pool2d(data.masks.float()[:, None], keep.shape[-2:])[:, 0] > 0.5
    keep, obj = keep.flatten(1), obj.flatten(1)
    print(f"{args.num_images} images, {keep.shape[1]} patches each; object patches: {float(obj.float().mean()):.1%}")
    print(f"mean expected keep: object {float(keep[obj].mean()):.2f}, background {float(keep[~obj].mean()):.2f}")
    order = keep.argsort(dim=1, descending=True)
    for k in (4, 8, 16):
        share = float(torch.gather(obj, 1, order[:, :k]).float().mean())
        print(f"top {k:2d} patches per image: {share:.1%} object, {1 - share:.1%} background")


if __name__ == "__main__":
    main()
