"""Fault test of ``captum-vit serve``: bad uploads mixed into a running load.

python -m benchmarks.serving.fault_test --model pltx=/tmp/serving/synthetic-vit-pltx.onnx \
    --good 400 --bad 200 --concurrency 8 --out-json /tmp/serving/fault.json

While ``--concurrency`` clients send ``--good`` valid PNGs, as many clients send ``--bad``
uploads in rotation: corrupt PNGs, truncated PNGs, a format other than PNG/JPEG, bodies over the
upload limit (with ``Content-Length`` and chunked, without it), and images with a side over the
limit. Every good answer is checked against the map onnxruntime gives for the same input
(:class:`captum_vit.export.FastAttribution`, <= 1e-5); every bad one must be its 4xx. The
server's resident memory is read before the load, every 100 ms during it, and after each of
``--passes`` repetitions of the whole load on the same server.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.serving.load_test import sample_pngs
from captum_vit.export import FastAttribution, read_metadata
from captum_vit.export.serving import parse_model_spec
from captum_vit.export.serving.process import ServerProcess
from captum_vit.models.preprocess import normalize

MAX_UPLOAD = 1 << 20
MAX_SIDE = 1024


def bad_uploads(good: bytes) -> dict[str, tuple[Any, int, str]]:
    """Name -> (body, expected status, expected error kind)."""
    from PIL import Image

    wide = io.BytesIO()
    Image.new("RGB", (MAX_SIDE + 1, 4)).save(wide, format="PNG")
    big = b"\x89PNG\r\n\x1a\n" + bytes(2 * MAX_UPLOAD)

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies while reading
        for start in range(0, len(big), 1 << 16):
            yield big[start : start + (1 << 16)]

    return {
        "corrupt": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, 400, "corrupt_image"),
        "truncated": (good[: len(good) // 2], 400, "corrupt_image"),
        "gif": (b"GIF89a" + bytes(64), 415, "unsupported_format"),
        "oversized": (big, 413, "payload_too_large"),
        "oversized-chunked": (chunked, 413, "payload_too_large"),
        "too-wide": (wide.getvalue(), 413, "image_too_large"),
    }


async def run(
    url: str, model: str, images: list[bytes], refs: list[np.ndarray], args: argparse.Namespace
) -> dict[str, Any]:
    import httpx

    bad = bad_uploads(images[0])
    kinds = list(bad)
    good_todo, bad_todo = iter(range(args.good)), iter(range(args.bad))
    out: dict[str, Any] = {"good_ok": 0, "good_failed": [], "bad_ok": {k: 0 for k in kinds}, "bad_wrong": []}
    headers = {"Content-Type": "image/png"}
    deadline = time.monotonic() + args.time_limit
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def good_worker() -> None:
            for i in good_todo:
                if time.monotonic() > deadline:
                    return
                k = i % len(images)
                try:
                    r = await client.post("/v1/explain", params={"model": model}, content=images[k], headers=headers)
                    ok = r.status_code == 200 and float(np.abs(np.array(r.json()["map"]) - refs[k]).max()) <= 1e-5
                    detail = r.status_code
                except httpx.HTTPError as e:
                    ok, detail = False, type(e).__name__
                if ok:
                    out["good_ok"] += 1
                else:
                    out["good_failed"].append(detail)

        async def bad_worker() -> None:
            for i in bad_todo:
                if time.monotonic() > deadline:
                    return
                name = kinds[i % len(kinds)]
                body, status, kind = bad[name]
                try:
                    content = body() if callable(body) else body
                    r = await client.post("/v1/explain", params={"model": model}, content=content, headers=headers)
                    got = (r.status_code, r.json().get("error", {}).get("kind"))
                except (httpx.HTTPError, ValueError) as e:
                    got = (0, type(e).__name__)
                if got == (status, kind):
                    out["bad_ok"][name] += 1
                else:
                    out["bad_wrong"].append([name, *got])

        await asyncio.gather(
            *(good_worker() for _ in range(args.concurrency)), *(bad_worker() for _ in range(args.concurrency))
        )
    return out


async def sample_rss(srv: ServerProcess, stop: asyncio.Event, peak: list[int]) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], srv.rss_bytes())
        await asyncio.sleep(0.1)


async def measure(
    srv: ServerProcess, model: str, images: list[bytes], refs: list[np.ndarray], args: argparse.Namespace
) -> dict[str, Any]:
    stop, peak = asyncio.Event(), [0]
    sampler = asyncio.create_task(sample_rss(srv, stop, peak))
    start = time.monotonic()
    result = await run(srv.url, model, images, refs, args)
    result["wall_s"] = time.monotonic() - start
    stop.set()
    await sampler
    result["rss_peak_mb"] = peak[0] / 2**20
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, metavar="[NAME=]PATH")
    p.add_argument("--good", type=int, default=400)
    p.add_argument("--bad", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=8, help="good clients; as many bad ones")
    p.add_argument("--time-limit", type=float, default=300.0, help="seconds per pass at most")
    p.add_argument("--passes", type=int, default=1, help="repetitions of the whole mixed load on one server")
    p.add_argument("--out-json", type=Path, default=None)
    args = p.parse_args(argv)
    name, path = parse_model_spec(args.model)
    meta = read_metadata(path)
    h, w = meta.input_size[1:]
    images = sample_pngs((h, w), 8, seed=1)
    attribution = FastAttribution(path)
    refs = []
    for seed_image in images:
        from PIL import Image

        pixels = np.asarray(Image.open(io.BytesIO(seed_image)).convert("RGB"), np.float32) / 255.0
        x = normalize(torch.from_numpy(pixels).permute(2, 0, 1)[None], torch.tensor(meta.mean), torch.tensor(meta.std))
        refs.append(attribution.attribute(x, return_patch_map=True)[0].numpy())
    limits = ["--max-upload-bytes", str(MAX_UPLOAD), "--max-image-side", str(MAX_SIDE), "--log-level", "warning"]
    srv = ServerProcess({name: path}, limits, threads=0)
    try:
        srv.wait_ready()
        asyncio.run(run(srv.url, name, images, refs, argparse.Namespace(good=16, bad=0, concurrency=4, time_limit=60)))
        rss_before = srv.rss_bytes()
        passes = []
        for _ in range(args.passes):  # the same mixed load again: memory must level off, not climb
            passes.append(asyncio.run(measure(srv, name, images, refs, args)))
            passes[-1]["rss_after_mb"] = srv.rss_bytes() / 2**20
        rss_after = srv.rss_bytes()
        errors = {
            k: srv.metric("captum_vit_errors_total", kind=k)
            for k in ("corrupt_image", "unsupported_format", "payload_too_large", "image_too_large")
        }
    finally:
        code = srv.stop()
    result = {
        "passes": passes,
        "rss_before_mb": rss_before / 2**20,
        "rss_after_mb": rss_after / 2**20,
        "server_errors": errors,
        "exit_code": code,
        "good_ok": sum(p["good_ok"] for p in passes),
        "good_failed": [d for p in passes for d in p["good_failed"]],
        "bad_ok": sum(sum(p["bad_ok"].values()) for p in passes),
        "bad_wrong": [d for p in passes for d in p["bad_wrong"]],
    }
    print(json.dumps(result, indent=1))
    if args.out_json is not None:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(result, indent=1))
    return 0 if not result["good_failed"] and not result["bad_wrong"] and code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
