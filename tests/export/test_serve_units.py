"""The service's parts without a server: batcher, request parsing, decoding, settings, CLI checks."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import io
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from captum_vit._cli_common import CLIError
from captum_vit.data.loaders import to_image_tensor
from captum_vit.export import ExplainerMetadata
from captum_vit.export.serve_cli import add_arguments, check
from captum_vit.export.serving import ServeConfig, ServeError, parse_model_spec
from captum_vit.export.serving.batcher import DynamicBatcher
from captum_vit.export.serving.images import decode_image
from captum_vit.export.serving.request_parsing import wants_png
from tests.export.test_serve_support import png_bytes, random_pixels, tiny_exports

META = ExplainerMetadata((3, 8, 8), (2, 2), (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), "ltx", "")


def run_batcher(inputs: list[np.ndarray], run_batch, **options) -> tuple[list[object], list[int]]:  # type: ignore[no-untyped-def]
    """Submit ``inputs`` concurrently; the results (or exceptions) and the batch sizes."""
    sizes: list[int] = []

    async def main() -> list[object]:
        pool = concurrent.futures.ThreadPoolExecutor(1)
        opts = dict(max_batch=4, max_wait_ms=50, max_queue=64) | options
        b = DynamicBatcher(run_batch, pool, asyncio.Semaphore(1), on_batch=lambda n, s: sizes.append(n), **opts)
        b.start()
        out = await asyncio.gather(*(b.submit(x) for x in inputs), return_exceptions=True)
        await b.close()
        pool.shutdown()
        return list(out)

    return asyncio.run(main()), sizes


def test_batcher_scatters_each_row_back_to_its_caller() -> None:
    inputs = [np.full((1, 2, 2), i, np.float32) for i in range(10)]
    out, sizes = run_batcher(inputs, lambda x: [x[:, 0, 0, 0] * 2, x.sum(axis=(1, 2, 3))])
    assert [(float(a), float(b)) for a, b in out] == [(2.0 * i, 4.0 * i) for i in range(10)]  # type: ignore[misc]
    assert sum(sizes) == 10 and max(sizes) <= 4 and len(sizes) < 10


def test_batcher_max_batch_one_runs_each_alone() -> None:
    _, sizes = run_batcher([np.zeros((1, 1, 1), np.float32)] * 5, lambda x: [x], max_batch=1)
    assert sizes == [1] * 5


def test_a_failing_input_fails_only_its_own_request() -> None:
    def run(x: np.ndarray) -> list[np.ndarray]:
        if (x < 0).any():
            raise RuntimeError("poisoned")
        return [x.sum(axis=(1, 2, 3))]

    inputs = [np.full((1, 1, 1), v, np.float32) for v in (1, 2, -1, 3)]
    out, _ = run_batcher(inputs, run)
    assert isinstance(out[2], RuntimeError)
    assert [float(o[0]) for i, o in enumerate(out) if i != 2] == [1.0, 2.0, 3.0]  # type: ignore[index]


def test_full_queue_is_a_503_with_retry_after() -> None:
    async def main() -> ServeError:
        pool = concurrent.futures.ThreadPoolExecutor(1)
        b = DynamicBatcher(lambda x: [x], pool, asyncio.Semaphore(1), max_batch=1, max_wait_ms=0, max_queue=1)
        b.start()
        first = asyncio.ensure_future(b.submit(np.zeros(1, np.float32)))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(b.submit(np.zeros(1, np.float32)))
        await asyncio.sleep(0)  # the first is queued, not yet taken: the queue is full
        with pytest.raises(ServeError) as err:
            await b.submit(np.zeros(1, np.float32))
        await asyncio.gather(first, second)
        await b.close()
        with pytest.raises(ServeError, match="shutting down"):
            await b.submit(np.zeros(1, np.float32))
        pool.shutdown()
        return err.value

    e = asyncio.run(main())
    assert (e.status, e.kind, e.headers) == (503, "queue_full", {"Retry-After": "1"})


def test_decode_is_the_library_preprocessing() -> None:
    pixels = random_pixels(8, 8, 0)
    x = decode_image(png_bytes(pixels), META, max_side=64)
    mean, std = torch.tensor(META.mean).view(3, 1, 1), torch.tensor(META.std).view(3, 1, 1)
    want = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - mean) / std
    np.testing.assert_allclose(x, want.numpy(), atol=1e-6, rtol=0)
    big = random_pixels(20, 13, 1)  # resized straight to 8x8, bilinear, no crop: the loaders' path
    want_big = ((to_image_tensor(big, (8, 8)) - mean) / std).numpy()
    np.testing.assert_array_equal(decode_image(png_bytes(big), META, max_side=64), want_big)
    rgba = np.concatenate([pixels, np.full((8, 8, 1), 7, np.uint8)], axis=-1)
    np.testing.assert_array_equal(decode_image(png_bytes(rgba), META, max_side=64), x)  # alpha dropped


@pytest.mark.parametrize(
    "data, status, kind",
    [
        (b"BM" + b"\x00" * 40, 415, "unsupported_format"),
        (b"\x89PNG\r\n\x1a\n" + b"\xff" * 40, 400, "corrupt_image"),
        (b"\xff\xd8\xff" + b"\x00" * 40, 400, "corrupt_image"),
        (png_bytes(random_pixels(8, 8, 0))[:150], 400, "corrupt_image"),
        (png_bytes(np.zeros((4, 65, 3), np.uint8)), 413, "image_too_large"),
    ],
)
def test_decode_errors(data: bytes, status: int, kind: str) -> None:
    with pytest.raises(ServeError) as err:
        decode_image(data, META, max_side=64)
    assert (err.value.status, err.value.kind) == (status, kind)


def test_accept_header() -> None:
    assert wants_png("image/png;q=0.9") and wants_png("image/*") and not wants_png("application/json")
    with pytest.raises(ServeError, match="Accept must allow"):
        wants_png("text/html")


def test_settings_name_the_wrong_argument() -> None:
    with pytest.raises(ValueError, match="max_batch must be an int"):
        ServeConfig({"a": Path("a.onnx")}, max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        ServeConfig({"a": Path("a.onnx")}, max_wait_ms=-1)
    with pytest.raises(ValueError, match="at least one"):
        ServeConfig({})
    with pytest.raises(ValueError, match="NAME=PATH"):
        parse_model_spec("bad name=x.onnx")


def cli_args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_cli_checks_everything_before_starting(tmp_path: Path) -> None:
    pltx = str(tiny_exports().pltx)
    config = check(cli_args("--model", pltx, "--model", f"other={pltx}", "--max-batch", "4"))
    assert list(config.models) == ["pltx", "other"] and config.max_batch == 4
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(b"not onnx")
    cases = {
        "--model: no such file": ["--model", str(tmp_path / "missing.onnx")],
        "not a valid ONNX model": ["--model", str(foreign)],
        "given twice": ["--model", pltx, "--model", pltx],
        "--max-batch: max_batch must be": ["--model", pltx, "--max-batch", "0"],
        "--port must be": ["--model", pltx, "--port", "70000"],
        "--max-queue: max_queue": ["--model", pltx, "--max-queue", "0"],
    }
    for message, argv in cases.items():
        with pytest.raises(CLIError, match=message):
            check(cli_args(*argv))


def test_a_port_in_use_is_refused_before_the_models_load() -> None:
    import socket

    pltx = str(tiny_exports().pltx)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(CLIError, match=rf"--port {port}: 127.0.0.1:{port} is in use"):
            check(cli_args("--model", pltx, "--port", str(port)))
    check(cli_args("--model", pltx, "--port", str(port)))  # free again
    with pytest.raises(CLIError, match="--host 192.0.2.1: cannot listen on 192.0.2.1:"):  # TEST-NET: not ours
        check(cli_args("--model", pltx, "--host", "192.0.2.1"))


def test_cli_main_reports_errors_as_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from captum_vit.export.serve_cli import main

    assert main(["--model", "/nonexistent/x.onnx"]) == 2
    assert capsys.readouterr().err.strip() == "captum-vit serve: error: --model: no such file: /nonexistent/x.onnx"


def test_heatmap_png_overlay_is_the_input_image_where_the_map_is_zero() -> None:
    from PIL import Image

    from captum_vit.export.serving.images import heatmap_png

    pixels = random_pixels(8, 8, 2)
    x = decode_image(png_bytes(pixels), META, max_side=64)
    out = np.asarray(Image.open(io.BytesIO(heatmap_png(x, np.zeros((2, 2), np.float32), META))))
    np.testing.assert_allclose(out, np.round(pixels * 0.5), atol=1)


@pytest.mark.parametrize("on_its_way, waits", [(0, False), (1, True)])
def test_a_lone_request_waits_only_for_requests_on_their_way(on_its_way: int, waits: bool) -> None:
    async def main() -> float:
        pool = concurrent.futures.ThreadPoolExecutor(1)
        b = DynamicBatcher(
            lambda x: [x],
            pool,
            asyncio.Semaphore(1),
            max_batch=8,
            max_wait_ms=300,
            max_queue=8,
            upstream=lambda: on_its_way,
        )
        b.start()
        t = time.perf_counter()
        await b.submit(np.zeros(1, np.float32))
        elapsed = time.perf_counter() - t
        await b.close()
        pool.shutdown()
        return elapsed

    elapsed = asyncio.run(main())
    assert (elapsed >= 0.3) if waits else (elapsed < 0.25), elapsed
