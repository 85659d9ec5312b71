"""Transformer Attribution on ViT-S/16 at batch 8 (issue 19): latency as a ratio to one
forward pass, and peak memory at 448 px against a plain forward and backward to the input.

Latency: the forward pass, T-Attr and GAE (one forward + one backward, no LRP, for scale)
are timed in turn on one thread with the same model and batch (interleaved medians); only
the ratios are meaningful on a shared machine. Memory: each case runs in a fresh process
and reports its resident-set high-water mark (Linux ``VmHWM``) minus its resident set after
building the model and the input. Run:

    .venv/bin/python -m pytest benchmarks/speed/test_bench_tattr.py --benchmark-only -p no:xdist -s

The figures are in each benchmark's ``extra_info`` (``--benchmark-json``) and printed.

The issue's goal is a ratio of at most 4; the bound asserted is what this implementation
reaches, with a margin for a loaded machine. The exact rules put the floor near 5: GAE (one
forward and one backward) is already 2.3, and the αβ rule reads ``x⁺W⁺ + x⁻W⁻`` and
propagates ``s W⁺`` and ``s W⁻``, four matrix products per linear layer against the
forward's one, in every block from ``start_layer`` up.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import timm
import torch

from benchmarks.speed._timing import ROUNDS, interleaved_medians
from captum_vit.attr import GenericAttention, TransformerAttribution

#: T-Attr / forward latency asserted (measured 5.8-6.4 on two loaded shared cores; 8.1-8.9 before issue 19).
MAX_LATENCY_RATIO = 7.5
#: T-Attr / (forward + backward to the input) peak memory asserted (the issue's goal; measured 1.41).
MAX_MEMORY_RATIO = 1.5

_PEAK_RSS = """
import json, sys, timm, torch
from captum_vit.attr import TransformerAttribution

def status(field):  # kB; VmHWM belongs to this process image (ru_maxrss can carry the parent's)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

torch.set_num_threads(1)
torch.manual_seed(0)
case, size, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=size).eval()
x, target = torch.randn(batch, 3, size, size), list(range(batch))
base = status("VmRSS")
if case == "forward_backward":
    x.requires_grad_(True)
    torch.autograd.grad(model(x)[torch.arange(batch), target].sum(), x)
else:
    TransformerAttribution(model).attribute(x, target=target)
print(json.dumps((status("VmHWM") - base) * 1024))
"""


def _vit_s(size: int = 224) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_small_patch16_224", pretrained=False, img_size=size).eval()


def test_tattr_latency_ratio(benchmark) -> None:
    torch.set_num_threads(1)
    model, x, target = _vit_s(), torch.randn(8, 3, 224, 224), list(range(8))
    tattr, gae = TransformerAttribution(model), GenericAttention(model)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    runs = {
        "forward": forward,
        "transformer_attribution": lambda: tattr.attribute(x, target=target),
        "gae": lambda: gae.attribute(x, target=target),
    }
    for run in runs.values():  # warm-up
        run()
    med = interleaved_medians(runs, rounds=max(ROUNDS, 5), device=torch.device("cpu"))
    ratios = {k: v / med["forward"] for k, v in med.items() if k != "forward"}
    benchmark.extra_info.update({"forward_s": med["forward"], **{f"{k}_ratio": v for k, v in ratios.items()}})
    print(f"\nforward {med['forward']:.3f} s; ratios to it: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    benchmark.pedantic(runs["transformer_attribution"], rounds=1, iterations=1)
    assert ratios["transformer_attribution"] <= MAX_LATENCY_RATIO


def _peak_rss(case: str, size: int, batch: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, case, str(size), str(batch)], capture_output=True, text=True, check=True
    )
    return int(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("size", [448])
def test_tattr_peak_memory(benchmark, size: int) -> None:
    plain = _peak_rss("forward_backward", size, 8)
    tattr = _peak_rss("transformer_attribution", size, 8)
    ratio = tattr / plain
    benchmark.extra_info.update({"forward_backward_bytes": plain, "tattr_bytes": tattr, "ratio": ratio})
    print(
        f"\n{size} px, batch 8: forward+backward {plain / 2**30:.2f} GiB, T-Attr {tattr / 2**30:.2f} GiB -> {ratio:.2f}"
    )
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    assert ratio <= MAX_MEMORY_RATIO
