"""Token scaling and memory of the attention-graph methods (issue 19).

Latency of rollout, GAE (row form, the default, and ``product="full"``), attention Grad-CAM and
raw attention as a ratio to one forward pass of the same batch, at 197 tokens (ViT-S/16 at
224), 785 (ViT-S/16 at 448) and 1,370 (DINOv2-S/14 at 518), random timm weights, against a
forward (and a forward+backward to the input) with timm's fused attention, and the same on
timm's explicit attention path (:data:`FLOORS`: what recording every block's probabilities
with hooks costs, the path of the other model families and of ``product="full"``); one thread,
medians of interleaved rounds (the machine is shared: only ratios measured in one run mean
anything). Then the peak memory of each method at 448 px against a plain forward and a
forward+backward to the input, each case in a fresh process (the peak RSS minus the one after
building the model and the input, :func:`peak_rss_gb`). Run::

    .venv/bin/python -m benchmarks.speed.token_scaling            # batch 1, memory at batch 8
    .venv/bin/python -m benchmarks.speed.token_scaling --batch 8 --sizes 197 --no-memory

Prints a markdown table (benchmarks/results/token_scaling.md holds a run).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any
from unittest import mock

import timm
import torch
from torch import Tensor, nn

from benchmarks.speed._timing import interleaved_medians
from captum_vit.attr import AttentionGradCAM, AttentionRollout, GenericAttention, RawAttention, _vit_common
from captum_vit.models.hooks import record_attention

#: tokens -> (timm name, image size, label)
SIZES: dict[int, tuple[str, int, str]] = {
    197: ("vit_small_patch16_224", 224, "ViT-S/16 @224"),
    785: ("vit_small_patch16_224", 448, "ViT-S/16 @448"),
    1370: ("vit_small_patch14_dinov2", 518, "DINOv2-S/14 @518"),
}
#: the same families, 2 blocks 32 wide (the smoke test)
TINY: dict[str, Any] = {"depth": 2, "embed_dim": 32, "num_heads": 2}
TINY_IMG = {197: 32, 785: 64, 1370: 42}
MEMORY_TOKENS = 785


class ExplicitPath:
    """``method`` run on timm's explicit attention path with hooks on its probabilities (the
    path of the model families other than timm's standard attention, and of these methods
    before they computed the probabilities beside the fused kernel): the comparison in one run.
    Benchmark-only: :func:`~captum_vit.models.recomputed_attention.recomputes_attention` is
    made to answer ``False`` for the duration of the call."""

    def __init__(self, method: Any) -> None:
        self.method = method

    def attribute(self, *args: Any, **kwargs: Any) -> Any:
        with mock.patch.object(_vit_common, "recomputes_attention", lambda _adapter: False):
            return self.method.attribute(*args, **kwargs)


METHODS: dict[str, Callable[[nn.Module], Any]] = {
    "rollout": AttentionRollout,
    "rollout (explicit attention)": lambda m: ExplicitPath(AttentionRollout(m)),
    'rollout (product="full")': lambda m: AttentionRollout(m, product="full"),
    "gae": GenericAttention,
    "gae (explicit attention)": lambda m: ExplicitPath(GenericAttention(m)),
    'gae (product="full")': lambda m: GenericAttention(m, product="full"),
    "attention_gradcam": AttentionGradCAM,
    "raw_attention": RawAttention,
}
REFERENCES = ("forward", "forward+backward to the input", "explicit forward", "explicit forward+backward")
#: The explicit-attention references: timm's unfused path, which hooks on the probabilities need.
#: On timm's standard ``Attention`` rollout, raw attention and GAE no longer run it: they compute
#: each block's probabilities a slice of query rows at a time beside the fused kernel
#: (:mod:`captum_vit.models.recomputed_attention`); their floors are the first two references.
FLOORS = REFERENCES[2:]


def build(tokens: int, tiny: bool) -> tuple[nn.Module, int]:
    """The random-weight model for ``tokens`` and its image size."""
    name, size, _ = SIZES[tokens]
    torch.manual_seed(0)
    if tiny:
        size = TINY_IMG[tokens]
    opts: dict[str, Any] = TINY if tiny else {}
    return timm.create_model(name, pretrained=False, num_classes=10, img_size=size, **opts).eval(), size


def runner(case: str, model: nn.Module, x: Tensor) -> Callable[[], object]:
    """One call of ``case`` on ``x``."""
    target = [0] * x.shape[0]
    if case == "forward":

        def forward() -> object:
            with torch.no_grad():
                return model(x)

        return forward
    if case == "forward+backward to the input":

        def forward_backward() -> object:
            xx = x.clone().requires_grad_(True)
            return torch.autograd.grad(model(xx)[:, 0].sum(), [xx])

        return forward_backward
    if case in FLOORS:

        def explicit() -> object:
            backward = case == "explicit forward+backward"
            with torch.set_grad_enabled(backward), record_attention(model, blocks=[0]) as rec:
                xx = x.clone().requires_grad_(backward)
                out, first = model(xx), rec.attentions[0]
                return torch.autograd.grad(out[:, 0].sum(), [first]) if backward and first is not None else out

        return explicit
    method = METHODS[case](model)
    return lambda: method.attribute(x, target=target, return_patch_map=True)


def latency(tokens: Sequence[int], batch: int, rounds: int, tiny: bool) -> dict[int, dict[str, float]]:
    """Seconds per case and size (median of ``rounds`` interleaved rounds, after one warm-up)."""
    out: dict[int, dict[str, float]] = {}
    for n in tokens:
        model, size = build(n, tiny)
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
        runs = {case: runner(case, model, x) for case in (*REFERENCES, *METHODS)}
        for fn in runs.values():
            fn()
        out[n] = interleaved_medians(runs, rounds, torch.device("cpu"))
    return out


def peak_rss_gb() -> float:
    """This process's peak resident set size in GB: ``VmHWM`` where ``/proc`` has it.

    Not ``ru_maxrss`` there: it survives ``execve``, so a child started by this (large) process
    would begin with its parent's high-water mark; ``VmHWM`` belongs to the new address space.
    """
    try:
        with open("/proc/self/status") as f:
            hwm = next(line for line in f if line.startswith("VmHWM:"))
        return int(hwm.split()[1]) / 2**20  # kB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def memory_case(case: str, batch: int, tiny: bool) -> dict[str, float]:
    """In this (fresh) process: the peak RSS after building the model, the input and the method,
    and after one call of ``case``, in GB."""
    model, size = build(MEMORY_TOKENS, tiny)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    fn = runner(case, model, x)
    base = peak_rss_gb()
    fn()
    return {"base_gb": base, "peak_gb": peak_rss_gb()}


def memory(batch: int, tiny: bool) -> dict[str, dict[str, float]]:
    """Every case's peak, each in a fresh interpreter so that cases do not share a high-water mark."""
    out = {}
    for case in (*REFERENCES, *METHODS):
        cmd = [sys.executable, "-m", "benchmarks.speed.token_scaling", "--memory-case", case, "--memory-batch"]
        cmd += [str(batch)] + (["--tiny"] if tiny else [])
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[case] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def latency_table(times: dict[int, dict[str, float]], batch: int, rounds: int) -> str:
    sizes = list(times)
    head = " | ".join(f"{n} tokens ({SIZES[n][2]})" for n in sizes)
    scaling = [n for n in sizes if n != 197] if 197 in sizes else []
    lines = [
        f"Latency, ratio to one forward pass of the same batch (batch {batch}, 1 thread, "
        f"median of {rounds} interleaved rounds); the last columns: ratio at N over ratio at 197 tokens.",
        "",
        f"| case | {head} |" + "".join(f" {n} / 197 |" for n in scaling),
        "|---|" + "---|" * (len(sizes) + len(scaling)),
        "| forward (seconds) | "
        + " | ".join(f"{times[n]['forward']:.3g} s" for n in sizes)
        + " |"
        + " |" * len(scaling),
    ]
    for case in (*REFERENCES[1:], *METHODS):
        ratios = {n: times[n][case] / times[n]["forward"] for n in sizes}
        cells = " | ".join(f"{ratios[n]:.2f}" for n in sizes)
        lines.append(f"| {case} | {cells} |" + "".join(f" {ratios[n] / ratios[197]:.2f} |" for n in scaling))
    return "\n".join(lines)


def memory_table(mem: dict[str, dict[str, float]], batch: int, tiny: bool) -> str:
    label = f"{SIZES[MEMORY_TOKENS][2]}" if not tiny else "tiny model"
    ref = mem["forward+backward to the input"]
    ref_delta = ref["peak_gb"] - ref["base_gb"]
    lines = [
        f"Peak memory, {label}, batch {batch}: peak RSS (VmHWM) minus the one after building the "
        "model and the input (each case in a fresh process), and the ratio of that to the "
        "forward+backward to the input's; the absolute peak RSS and its ratio.",
        "",
        "| case | peak - baseline (GB) | ratio | absolute peak (GB) | ratio |",
        "|---|---|---|---|---|",
    ]
    for case, m in mem.items():
        delta = m["peak_gb"] - m["base_gb"]
        rel = f"{delta / ref_delta:.2f}" if ref_delta > 0 else "-"  # a tiny model may not move the mark
        lines.append(f"| {case} | {delta:.3f} | {rel} | {m['peak_gb']:.3f} | {m['peak_gb'] / ref['peak_gb']:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speed.token_scaling", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--batch", type=int, default=1, help="latency batch (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default 3)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), choices=list(SIZES), help="token counts")
    parser.add_argument("--memory-batch", type=int, default=8, help="batch of the memory cases (default 8)")
    parser.add_argument("--no-memory", action="store_true", help="latency only")
    parser.add_argument("--tiny", action="store_true", help="2-block 32-wide models on small images (smoke test)")
    parser.add_argument("--memory-case", help=argparse.SUPPRESS)  # one memory case, in a child process
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EmptyMapWarning of random-weight models
            if args.memory_case:
                print(json.dumps(memory_case(args.memory_case, args.memory_batch, args.tiny)))
                return
            print(latency_table(latency(args.sizes, args.batch, args.rounds, args.tiny), args.batch, args.rounds))
            if not args.no_memory:
                print()
                print(memory_table(memory(args.memory_batch, args.tiny), args.memory_batch, args.tiny))
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
