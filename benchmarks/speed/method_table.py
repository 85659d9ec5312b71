"""Latency and peak memory of every registered ViT method, per model and batch size (issue 19).

For each model and batch, every method in ``list_methods("vit")`` runs in a fresh interpreter
(one thread, random timm weights, eval mode), so that its memory high-water mark is its own:

* **latency ratio**: the method's median latency over the median latency of one forward pass
  of the same batch (no grad), the two timed in turn round by round
  (:func:`benchmarks.speed._timing.interleaved_medians`; the machine is shared, so only the
  ratio is meaningful). The first call of each is an untimed warm-up, except for a method
  whose first call takes longer than ``--warmup-limit`` seconds: it is not run again, and
  that call is its one timed round (start-up costs are negligible next to it).
* **peak memory**: on the CPU the absolute peak RSS of the process
  (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), next to the same figure of a process that
  only runs the forward passes; on CUDA ``torch.cuda.max_memory_allocated``.

Methods run with their defaults (IIA: 6 x 6 path points; LTX: 25 finetuning steps) except
DiffMask, which gets untrained gates (``DiffMaskGates.for_model``); LTX and pLTX use an
untrained explainer when none is registered for the random weights (latency and memory do
not depend on the weights). Run (the full table takes hours on one CPU thread)::

    python -m benchmarks.speed.method_table --out benchmarks/results/method_table.md

``--models``, ``--batches``, ``--methods`` and ``--repeats`` make it smaller.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from benchmarks.speed._timing import interleaved_medians, timed

#: Model -> default batch sizes (issue 19).
DEFAULT_BATCHES = {"vit_small_patch16_224": (1, 32), "vit_base_patch16_224": (1, 8)}
FORWARD = "forward"


def _build(name: str, model_kwargs: dict[str, Any], device: torch.device) -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **model_kwargs).eval().to(device)


def _method(name: str, model: torch.nn.Module) -> Callable[..., torch.Tensor]:
    from captum_vit.attr import get_method

    options: dict[str, Any] = {}
    if name == "diffmask":
        from captum_vit.explainers import DiffMaskGates

        options["gates"] = DiffMaskGates.for_model(model, seed=0)
    return get_method(name)(model, **options).attribute  # type: ignore[no-any-return]


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """Time and measure one (model, batch, method) in this process; ``method`` ``"forward"``
    runs the forward passes only."""
    torch.set_num_threads(1)
    device = torch.device(cell["device"])
    model = _build(cell["model"], cell["model_kwargs"], device)
    patch_embed: Any = model.patch_embed  # timm: img_size is the (H, W) the model was built for
    size = [int(s) for s in patch_embed.img_size]
    x = torch.randn(cell["batch"], 3, *size, generator=torch.Generator().manual_seed(1)).to(device)
    target = [i % model.num_classes for i in range(cell["batch"])]  # type: ignore[operator]

    @torch.no_grad()
    def forward() -> object:
        return model(x)

    runs: dict[str, Callable[[], object]] = {FORWARD: forward}
    if cell["method"] != FORWARD:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an untrained explainer's warning
            attribute = _method(cell["method"], model)
        runs[cell["method"]] = lambda: attribute(x, target=target)
    built_mb = _peak_mb(device)
    first = {k: timed(fn, device) for k, fn in runs.items()}  # warm-up
    slow = first[cell["method"]] > cell["warmup_limit"]
    # A slow method is not run again: its warm-up is its one round (start-up costs are
    # negligible next to it); the forward still gets every round.
    med = interleaved_medians({FORWARD: forward} if slow else runs, cell["repeats"], device)
    med.setdefault(cell["method"], first[cell["method"]])
    rounds = 1 if slow else cell["repeats"]
    return {
        **{k: cell[k] for k in ("model", "batch", "method")},
        "ratio": med[cell["method"]] / med[FORWARD],
        "method_s": med[cell["method"]],
        "forward_s": med[FORWARD],
        "rounds": rounds,
        "built_mb": built_mb,
        "peak_mb": _peak_mb(device),
    }


def _in_fresh_process(cell: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.speed.method_table", "--cell", json.dumps(cell)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"cell {cell} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def table(rows: Sequence[dict[str, Any]], forward_mb: dict[tuple[str, int], float], device: str) -> str:
    """The markdown table of the measured cells."""
    memory = "peak RSS (MB)" if device == "cpu" else "peak allocated (MB)"
    lines = [
        f"| method | model | batch | latency / forward | {memory} | forward-only peak (MB) | rounds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['method']}` | {r['model']} | {r['batch']} | {r['ratio']:.1f} | {r['peak_mb']:.0f} "
            f"| {forward_mb[r['model'], r['batch']]:.0f} | {r['rounds']} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    from captum_vit.attr import list_methods

    p = argparse.ArgumentParser(prog="python -m benchmarks.speed.method_table", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_BATCHES), help="timm model names (random weights)")
    p.add_argument("--batches", nargs="+", type=int, help="batch sizes for every model (default per model: 1 32 "
                   "for vit_small_patch16_224, 1 8 for vit_base_patch16_224, else 1)")  # fmt: skip
    p.add_argument("--methods", nargs="+", help="registry names (default: every ViT method)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per cell (default 3)")
    p.add_argument("--warmup-limit", type=float, default=60.0, help="seconds; see the module docstring")
    p.add_argument("--model-kwargs", default="{}", help="JSON for timm.create_model, e.g. '{\"depth\": 2}'")
    p.add_argument("--device", default="cpu", help="cpu (peak RSS) or cuda (max_memory_allocated)")
    p.add_argument("--out", help="also write the table, with this command, to this markdown file")
    p.add_argument("--cell", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.cell:
        print(json.dumps(run_cell(json.loads(args.cell))))
        return
    methods = args.methods or list_methods("vit")
    unknown = sorted(set(methods) - set(list_methods("vit")))
    if unknown:
        p.error(f"--methods: not registered ViT methods: {unknown}; expected some of {list_methods('vit')}")
    if args.repeats < 1:
        p.error(f"--repeats must be a positive int, got {args.repeats}")
    kwargs = json.loads(args.model_kwargs)
    rows: list[dict[str, Any]] = []
    forward_mb: dict[tuple[str, int], float] = {}
    started = time.time()
    for name in args.models:
        for batch in args.batches or DEFAULT_BATCHES.get(name, (1,)):
            for method in [FORWARD, *methods]:
                cell = {"model": name, "model_kwargs": kwargs, "batch": batch, "method": method,
                        "repeats": args.repeats, "warmup_limit": args.warmup_limit, "device": args.device}  # fmt: skip
                try:
                    r = _in_fresh_process(cell)
                except RuntimeError as err:  # keep the other cells
                    print(err, file=sys.stderr, flush=True)
                    r = {**cell, "ratio": float("nan"), "peak_mb": float("nan"), "rounds": 0}
                print(f"[{time.time() - started:7.0f} s] {name} batch {batch} {method}: ratio {r['ratio']:.2f}, "
                      f"peak {r['peak_mb']:.0f} MB", file=sys.stderr, flush=True)  # fmt: skip
                if method == FORWARD:
                    forward_mb[name, batch] = r["peak_mb"]
                else:
                    rows.append(r)
                    if args.out:  # after every cell: a long run that stops keeps what it measured
                        _write(args.out, argv, kwargs, table(rows, forward_mb, args.device))
    print(table(rows, forward_mb, args.device))


def _write(path: str, argv: Sequence[str] | None, kwargs: dict[str, Any], text: str) -> None:
    command = shlex.join(["python", "-m", "benchmarks.speed.method_table", *(sys.argv[1:] if argv is None else argv)])
    header = (
        f"Command: `{command}`\n\nOne CPU thread per cell (of {os.cpu_count()}); torch {torch.__version__}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; model kwargs {kwargs}.\n\n"
    )
    with open(path, "w", encoding="utf-8") as f:
        f.write(header + text + "\n")


if __name__ == "__main__":
    main()
