"""LTX latency: pLTX as a ratio to one explainee forward pass, and LTX's per-instance
finetuning as a ratio to its shared-weight floor (issue 19).

Measured in one run, interleaved round by round, on the same model and images:

* ``forward``: one explainee forward pass on the batch (no grad);
* ``pltx``: ``PLTX(model).attribute`` on the batch (one explainer forward);
* ``ltx_batched``: ``LTX(model, finetune_steps=STEPS)`` on the batch (per-image parameter
  copies under vmap, groups sized by the default memory budget);
* ``ltx_single``: the same on one image;
* ``floor``: the same explainer and explainee passes and Adam steps on the batch with ONE
  explainer weight set shared by all images (what the finetuning would cost without
  per-image copies; not LTX, whose images must not share weights).

Reported (``extra_info`` and stdout): median seconds, ``pltx_over_forward``,
``ltx_over_floor`` (issue 19's target: at most 1.25), ``ltx_s_per_image_per_step``
(batched: ``(ltx_batched - pltx) / (BATCH * STEPS)``) and the same for one image at a time.

Run: ``python -m pytest benchmarks/speed/test_bench_ltx.py -p no:xdist -s``. The default is a small
ViT sized for a CPU; ``CAPTUM_VIT_BENCH_FULL=1`` uses ViT-B/16 at 224x224 (random weights:
latency does not depend on them), on CUDA when available; ``CAPTUM_VIT_BENCH_MODEL`` names
another timm model (e.g. ``vit_small_patch16_224``) and ``CAPTUM_VIT_BENCH_STEPS`` the steps.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import timm
import torch

from benchmarks.speed._timing import DEVICE, FULL, ROUNDS, bench_vit, interleaved_medians
from captum_vit.attr import LTX, PLTX
from captum_vit.explainers import LTXObjective, build_explainer
from captum_vit.explainers.ltx_network import LTXExplainer
from captum_vit.models.preprocess import model_normalization

BATCH = int(os.environ.get("CAPTUM_VIT_BENCH_BATCH", "4"))
STEPS = int(os.environ.get("CAPTUM_VIT_BENCH_STEPS", "3"))
MODEL = os.environ.get("CAPTUM_VIT_BENCH_MODEL", "")


def shared_weight_floor(
    explainer: LTXExplainer, objective: LTXObjective, pixels: torch.Tensor, target: torch.Tensor, steps: int
) -> torch.Tensor:
    """LTX's passes with one weight set for the whole batch: the floor of its cost."""
    module = copy.deepcopy(explainer).eval()
    trained = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trained, lr=1e-4)
    x = objective.normalise(pixels)
    with torch.enable_grad():
        z = module(x)
        for _ in range(steps):
            total, _, _ = objective.per_example(z, pixels, target)
            opt.zero_grad()
            total.sum().backward()
            opt.step()
            z = module(x)
    return torch.sigmoid(z).detach()


@pytest.mark.slow
def test_ltx_latency(benchmark: Any) -> None:  # pytest-benchmark's fixture
    if MODEL:
        torch.manual_seed(0)
        model = timm.create_model(MODEL, pretrained=False).eval().to(DEVICE)
    else:
        model = bench_vit(depth=6, num_classes=5, device=DEVICE)
    patch_embed: Any = model.patch_embed  # timm: img_size is the (H, W) the model was built for
    size = [int(s) for s in patch_embed.img_size]
    x = torch.rand(BATCH, 3, *size, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    explainer = build_explainer(model).to(DEVICE).eval()
    pltx = PLTX(model, explainer=explainer)
    ltx = LTX(model, explainer=explainer, finetune_steps=STEPS)
    targets = list(range(BATCH))
    mean, std = model_normalization(model)
    objective = LTXObjective(model, mean.to(DEVICE), std.to(DEVICE), ltx.mask_weight)
    pixels = x * objective.std.view(-1, 1, 1) + objective.mean.view(-1, 1, 1)

    @torch.no_grad()
    def forward() -> torch.Tensor:
        return model(x)

    runs: dict[str, Callable[[], object]] = {
        "forward": forward,
        "pltx": lambda: pltx.attribute(x),
        "ltx_batched": lambda: ltx.attribute(x, target=targets),
        "ltx_single": lambda: ltx.attribute(x[:1], target=0),
        "floor": lambda: shared_weight_floor(explainer, objective, pixels, torch.tensor(targets, device=DEVICE), STEPS),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fn in runs.values():  # warm-up
            fn()
    med = interleaved_medians(runs, ROUNDS, DEVICE)
    per_image_pltx = med["pltx"] / BATCH
    info = {
        "device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "model": MODEL or ("vit_base_patch16_224" if FULL else "vit_tiny(depth 6, 64x64, patch 8)"),
        "batch": BATCH,
        "finetune_steps": STEPS,
        **{f"{k}_s": round(v, 4) for k, v in med.items()},
        "pltx_over_forward": round(med["pltx"] / med["forward"], 3),
        "ltx_over_floor": round(med["ltx_batched"] / med["floor"], 3),
        "ltx_s_per_image_per_step_batched": round((med["ltx_batched"] - med["pltx"]) / (BATCH * STEPS), 5),
        "ltx_s_per_image_per_step_single": round((med["ltx_single"] - per_image_pltx) / STEPS, 5),
    }
    benchmark.extra_info.update(info)
    print("\nLTX benchmark:", info)
    benchmark.pedantic(runs["pltx"], rounds=1, iterations=1)
