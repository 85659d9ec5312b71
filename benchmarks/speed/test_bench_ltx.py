"""LTX latency: pLTX as a ratio to one explainee forward pass, and LTX's per-image cost per
finetuning step (batched over images vs one image at a time).

Measured in one run, interleaved round by round, on the same model and images:

* ``forward``: one explainee forward pass on the batch (no grad);
* ``pltx``: ``PLTX(model).attribute`` on the batch (one explainer forward);
* ``ltx_batched``: ``LTX(model, finetune_steps=STEPS)`` on the batch (per-image copies under vmap);
* ``ltx_single``: the same on one image.

Reported (``extra_info`` and stdout): median seconds, ``pltx_over_forward``,
``ltx_s_per_image_per_step`` (batched: ``(ltx_batched - pltx) / (BATCH * STEPS)``) and the
same for one image at a time.

Run: ``python -m pytest benchmarks/speed/test_bench_ltx.py -p no:xdist -s``. The default is a small
ViT sized for a CPU; ``CAPTUM_VIT_BENCH_FULL=1`` uses ViT-B/16 at 224x224 (random weights:
latency does not depend on them), on CUDA when available.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import pytest
import torch

from benchmarks.speed._timing import DEVICE, FULL, ROUNDS, bench_vit, interleaved_medians
from captum_vit.attr import LTX, PLTX
from captum_vit.explainers import build_explainer

BATCH = int(os.environ.get("CAPTUM_VIT_BENCH_BATCH", "4"))
STEPS = 3


@pytest.mark.slow
def test_ltx_latency(benchmark: pytest.FixtureRequest) -> None:
    model = bench_vit(depth=6, num_classes=5, device=DEVICE)
    size = 224 if FULL else 64
    x = torch.rand(BATCH, 3, size, size, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    explainer = build_explainer(model).to(DEVICE).eval()
    pltx = PLTX(model, explainer=explainer)
    ltx = LTX(model, explainer=explainer, finetune_steps=STEPS)
    targets = list(range(BATCH))

    @torch.no_grad()
    def forward() -> torch.Tensor:
        return model(x)

    runs: dict[str, Callable[[], object]] = {
        "forward": forward,
        "pltx": lambda: pltx.attribute(x),
        "ltx_batched": lambda: ltx.attribute(x, target=targets),
        "ltx_single": lambda: ltx.attribute(x[:1], target=0),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fn in runs.values():  # warm-up
            fn()
    med = interleaved_medians(runs, ROUNDS, DEVICE)
    per_image_pltx = med["pltx"] / BATCH
    info = {
        "device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "model": "vit_base_patch16_224" if FULL else "vit_tiny(depth 6, 64x64, patch 8)",
        "batch": BATCH,
        "finetune_steps": STEPS,
        **{f"{k}_s": round(v, 4) for k, v in med.items()},
        "pltx_over_forward": round(med["pltx"] / med["forward"], 3),
        "ltx_s_per_image_per_step_batched": round((med["ltx_batched"] - med["pltx"]) / (BATCH * STEPS), 5),
        "ltx_s_per_image_per_step_single": round((med["ltx_single"] - per_image_pltx) / STEPS, 5),
    }
    benchmark.extra_info.update(info)
    print("\nLTX benchmark:", info)
    benchmark.pedantic(runs["pltx"], rounds=1, iterations=1)
