"""Load test of ``captum-vit serve``: throughput and p50/p99 latency, dynamic batching on vs off.

python -m benchmarks.serving.load_test --model pltx=/tmp/serving/synthetic-vit-pltx.onnx \
    --concurrency 1 8 32 --requests 256 --time-limit 60 --out-json /tmp/serving/load-pltx.json

Two servers run side by side on loopback ports, one with batching off (``--max-batch 1``) and
one with it on (``--max-batch 32``), identical otherwise. The cells (concurrency x mode) are
interleaved, off then on, for ``--rounds`` rounds, so slow drifts of a shared machine hit both
modes alike; the ratios compare cells of the same run. Each cell sends a fixed number of
requests from ``concurrency`` client coroutines (``httpx.AsyncClient``) and stops early at
its time limit. The server's own metrics give the mean batch size and the share of the wall
time spent inside onnxruntime, which says where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from captum_vit.export import read_metadata
from captum_vit.export.serving import parse_model_spec
from captum_vit.export.serving.process import ServerProcess


def sample_pngs(size: tuple[int, int], n: int, seed: int = 0) -> list[bytes]:
    """``n`` random-pixel PNGs already at the explainer's input size ``(H, W)``."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


async def run_cell(
    url: str,
    model: str,
    images: list[bytes],
    concurrency: int,
    requests: int,
    time_limit: float,
    counters: Callable[[], tuple[float, ...]] | None = None,
) -> dict[str, Any]:
    """Send ``requests`` explain requests from ``concurrency`` coroutines (stop at ``time_limit`` s).

    ``counters`` (read after the warm-up and at the end) gives server counters whose change
    over the timed part is returned as ``"counters"``.
    """
    import httpx

    latencies: list[float] = []
    failures: dict[str, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Content-Type": "image/png"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:

        async def send(i: int) -> str:
            try:
                r = await client.post(
                    "/v1/explain", params={"model": model}, content=images[i % len(images)], headers=headers
                )
                return "" if r.status_code == 200 else str(r.status_code)
            except httpx.HTTPError as e:
                return type(e).__name__

        async def worker() -> None:
            for i in todo:  # one iterator shared by the workers: the total is bounded
                if time.monotonic() > deadline:
                    return
                t = time.perf_counter()
                key = await send(i)
                if key:
                    failures[key] = failures.get(key, 0) + 1
                else:
                    latencies.append(time.perf_counter() - t)

        await asyncio.gather(*(send(i) for i in range(concurrency)))  # open the connections; not timed
        before = counters() if counters else ()
        todo = iter(range(requests))
        start = time.monotonic()
        deadline = start + time_limit
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.monotonic() - start
        after = counters() if counters else ()
    return {
        "completed": len(latencies),
        "failed": failures,
        "wall_s": wall,
        "latencies_s": latencies,
        "counters": [a - b for a, b in zip(after, before)],
    }


def summarise(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge the rounds of one (mode, concurrency) cell."""
    lat = sorted(x for c in cells for x in c["latencies_s"])
    wall = sum(c["wall_s"] for c in cells)
    failed: dict[str, int] = {}
    for c in cells:
        for k, v in c["failed"].items():
            failed[k] = failed.get(k, 0) + v
    batches = sum(c["batches"] for c in cells)
    return {
        "completed": len(lat),
        "failed": failed,
        "throughput_rps": len(lat) / wall if wall else 0.0,
        "p50_ms": 1e3 * float(np.percentile(lat, 50)) if lat else None,
        "p99_ms": 1e3 * float(np.percentile(lat, 99)) if lat else None,
        "mean_batch": sum(c["batched_images"] for c in cells) / batches if batches else None,
        "inference_share": sum(c["inference_s"] for c in cells) / wall if wall else None,
        "requests_per_cpu_s": len(lat) / cpu if (cpu := sum(c["cpu_s"] for c in cells)) else None,
        "round_throughputs": [c["completed"] / c["wall_s"] for c in cells if c["wall_s"]],
    }


def server_counters(srv: ServerProcess, model: str) -> tuple[float, float, float]:
    return (
        srv.metric("captum_vit_batch_size_count", model=model),
        srv.metric("captum_vit_batch_size_sum", model=model),
        srv.metric("captum_vit_inference_seconds_sum", model=model),
        srv.cpu_seconds(),
    )


def onnxruntime_per_image(path: Path, batches: tuple[int, ...], threads: int, rounds: int) -> dict[str, float]:
    """Median CPU ms per image of onnxruntime alone at each batch size (interleaved rounds),
    with the service's session settings: the most batching can gain in inference. CPU time
    (of this process, all threads) rather than wall time, so other tenants of a shared machine
    do not enter."""
    from captum_vit.export.serving.engine import ServedModel

    model = ServedModel("bench", path, threads)
    shape = tuple(model.metadata.input_size)
    inputs = {b: np.random.default_rng(0).standard_normal((b, *shape)).astype(np.float32) for b in batches}
    times: dict[int, list[float]] = {b: [] for b in batches}
    for b in batches:
        model.run(inputs[b])
    for _ in range(rounds):
        for b in batches:
            calls = max(1, max(batches) // b)
            t = time.process_time()
            for _ in range(calls):
                model.run(inputs[b])
            times[b].append((time.process_time() - t) / (calls * b))
    return {str(b): 1e3 * float(np.median(v)) for b, v in times.items()}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    name, path = parse_model_spec(args.model)
    meta = read_metadata(path)
    images = sample_pngs((meta.input_size[1], meta.input_size[2]), 16)
    common = ["--max-wait-ms", str(args.max_wait_ms), "--max-queue", "1024", "--log-level", "warning"]
    modes = {"off": ["--max-batch", "1"], "on": ["--max-batch", str(args.max_batch)]}
    servers = {m: ServerProcess({name: path}, [*common, *extra], threads=args.threads) for m, extra in modes.items()}
    raw: dict[tuple[str, int], list[dict[str, Any]]] = {}
    ceiling = onnxruntime_per_image(path, (1, args.max_batch), args.threads, rounds=3)
    print(f"onnxruntime alone, CPU ms/image by batch size: {ceiling}", flush=True)
    try:
        for srv in servers.values():
            srv.wait_ready()
        rss_before = {m: srv.rss_bytes() for m, srv in servers.items()}
        for _ in range(args.rounds):
            for c in args.concurrency:
                for mode, srv in servers.items():
                    counters = functools.partial(server_counters, srv, name)
                    cell = asyncio.run(run_cell(srv.url, name, images, c, args.requests, args.time_limit, counters))
                    cell["batches"], cell["batched_images"], cell["inference_s"], cell["cpu_s"] = cell["counters"]
                    raw.setdefault((mode, c), []).append(cell)
                    print(f"{mode:>3} c={c:<3} {cell['completed'] / cell['wall_s']:8.1f} req/s", flush=True)
        rss_after = {m: srv.rss_bytes() for m, srv in servers.items()}
    finally:
        codes = {m: srv.stop() for m, srv in servers.items()}
    results = {f"{mode}/{c}": summarise(cells) for (mode, c), cells in raw.items()}
    ratios = {
        str(c): results[f"on/{c}"]["throughput_rps"] / results[f"off/{c}"]["throughput_rps"] for c in args.concurrency
    }
    cpu_ratios = {
        str(c): results[f"on/{c}"]["requests_per_cpu_s"] / results[f"off/{c}"]["requests_per_cpu_s"]
        for c in args.concurrency
    }
    return {
        "model": name,
        "path": str(path),
        "input_size": list(meta.input_size),
        "settings": vars(args) | {"concurrency": list(args.concurrency)},
        "results": results,
        "batching_throughput_ratio": ratios,
        "batching_cpu_efficiency_ratio": cpu_ratios,
        "onnxruntime_ms_per_image": ceiling,
        "rss_mb": {m: [rss_before[m] / 2**20, rss_after[m] / 2**20] for m in servers},
        "exit_codes": codes,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"`{report['model']}` (input {'x'.join(map(str, report['input_size']))})",
        "",
        "| concurrency | batching | req/s | p50 ms | p99 ms | mean batch | onnxruntime share of wall | req per server CPU-s | failed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in report["results"].items():
        mode, c = key.split("/")
        lines.append(
            f"| {c} | {mode} | {r['throughput_rps']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['mean_batch']:.1f} | {100 * r['inference_share']:.0f}% | {r['requests_per_cpu_s']:.2f} | "
            f"{sum(r['failed'].values())} |"
        )
    lines.append("")
    ratios = ", ".join(f"c={c}: {v:.2f}x" for c, v in report["batching_throughput_ratio"].items())
    lines.append(f"Throughput with batching / without: {ratios}.")
    cpu = ", ".join(f"c={c}: {v:.2f}x" for c, v in report["batching_cpu_efficiency_ratio"].items())
    lines.append(f"Requests per server CPU-second with batching / without: {cpu}.")
    ms = report["onnxruntime_ms_per_image"]
    b = max(ms, key=int)
    lines.append(
        f"onnxruntime alone (same session settings): {ms['1']:.1f} CPU ms/image at batch 1, {ms[b]:.1f} at batch {b} "
        f"({ms['1'] / ms[b]:.2f}x, the most batching can gain in inference)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, metavar="[NAME=]PATH", help="an exported .onnx explainer")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=256, help="requests per cell and round (after a warm-up)")
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds per cell and round at most")
    p.add_argument("--rounds", type=int, default=1, help="interleaved repetitions of every cell")
    p.add_argument("--max-batch", type=int, default=32, help="the batching-on server's --max-batch")
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=0, help="server onnxruntime threads (0: one per core)")
    p.add_argument("--out-json", type=Path, default=None)
    p.add_argument(
        "--ceiling-only", action="store_true", help="only onnxruntime's CPU ms/image at batch 1..--max-batch"
    )
    args = p.parse_args(argv)
    if args.ceiling_only:
        sizes = tuple(b for b in (1, 2, 4, 8, 16, 32, 64, 128) if b <= args.max_batch)
        ceiling = onnxruntime_per_image(parse_model_spec(args.model)[1], sizes, args.threads, rounds=args.rounds)
        print(json.dumps({"cpu_ms_per_image": ceiling}))
        return 0
    if args.requests < 1 or args.time_limit <= 0 or args.rounds < 1 or min(args.concurrency) < 1:
        p.error("--requests, --time-limit, --rounds and --concurrency must be positive")
    report = measure(args)
    print(markdown(report))
    if args.out_json is not None:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(report, indent=1, default=str))
    failed = sum(sum(r["failed"].values()) for r in report["results"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
