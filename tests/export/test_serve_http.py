"""``captum-vit serve`` end to end: a real uvicorn server in a subprocess on a loopback port.

Maps are checked against :class:`FastAttribution` on the same image tensors (<= 1e-5), for every
request shape, batched and alone; every kind of bad request gets its 4xx and JSON error.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch

from captum_vit.export.serving.images import heatmap_png
from tests.export.test_serve_support import (
    Server,
    normalised,
    png_bytes,
    random_pixels,
    reference_map,
    tiny_exports,
)

ATOL = 1e-5
SIDE = 32  # the tiny explainers' input size


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    ex = tiny_exports()
    srv = Server(
        {"pltx": ex.pltx, "predict": ex.predict},
        "--max-batch", "8", "--max-wait-ms", "50", "--max-upload-bytes", "200000", "--max-image-side", "512",
    )  # fmt: skip
    try:
        srv.wait_ready()
        yield srv
    finally:
        assert srv.stop() == 0, srv.log()


def explain(srv: Server, body: bytes, ctype: str = "image/png", **kw: object) -> httpx.Response:
    headers = {"Content-Type": ctype, **kw.pop("headers", {})}  # type: ignore[dict-item]
    return httpx.post(srv.url + "/v1/explain", content=body, headers=headers, timeout=60, **kw)  # type: ignore[arg-type]


def test_health_ready_models_and_structured_logs(server: Server) -> None:
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").json() == {"status": "ready", "models": ["pltx", "predict"]}
    models = httpx.get(server.url + "/v1/models").json()
    assert models["default"] == "pltx"
    assert [m["outputs"] for m in models["models"]] == [["maps"], ["maps", "logits"]]
    import json

    events = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert {"model_loaded", "ready"} <= {e.get("event") for e in events}


def test_concurrent_requests_are_batched_and_each_gets_its_own_map(server: Server) -> None:
    images = [random_pixels(SIDE, SIDE, seed) for seed in range(12)]
    before_count = server.metric("captum_vit_batch_size_count", model="pltx")
    before_sum = server.metric("captum_vit_batch_size_sum", model="pltx")
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda im: explain(server, png_bytes(im)), images))
    for pixels, r in zip(images, responses):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "pltx" and body["grid"] == [4, 4] and "class" not in body
        np.testing.assert_allclose(np.array(body["map"]), reference_map(tiny_exports().pltx, pixels), atol=ATOL, rtol=0)
    calls = server.metric("captum_vit_batch_size_count", model="pltx") - before_count
    served = server.metric("captum_vit_batch_size_sum", model="pltx") - before_sum
    assert served == 12 and calls < 12  # at least one onnxruntime call held several requests


def test_json_base64_multipart_and_jpeg_give_the_library_map(server: Server) -> None:
    pixels = random_pixels(SIDE, SIDE, 100)
    want = reference_map(tiny_exports().pltx, pixels)
    data = png_bytes(pixels)
    as_json = httpx.post(server.url + "/v1/explain", json={"image": base64.b64encode(data).decode(), "model": "pltx"})
    as_form = httpx.post(
        server.url + "/v1/explain", files={"image": ("x.png", data, "image/png")}, data={"model": "pltx"}
    )
    for r in (as_json, as_form):
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.array(r.json()["map"]), want, atol=ATOL, rtol=0)
    from PIL import Image

    jpeg = png_bytes(pixels, "JPEG", quality=90)
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))  # the same decoder as the service
    r = explain(server, jpeg, "image/jpeg")
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(
        np.array(r.json()["map"]), reference_map(tiny_exports().pltx, decoded), atol=ATOL, rtol=0
    )


def test_images_of_another_size_are_resized_as_the_library_does(server: Server) -> None:
    from PIL import Image

    pixels = random_pixels(50, 70, 7)
    resized = np.asarray(Image.fromarray(pixels).resize((SIDE, SIDE), Image.Resampling.BILINEAR))
    r = explain(server, png_bytes(pixels), params={"model": "pltx"})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(
        np.array(r.json()["map"]), reference_map(tiny_exports().pltx, resized), atol=ATOL, rtol=0
    )


def test_predict_and_explain_graph_returns_class_and_probability(server: Server) -> None:
    ex = tiny_exports()
    pixels = random_pixels(SIDE, SIDE, 11)
    r = explain(server, png_bytes(pixels), params={"model": "predict"})
    assert r.status_code == 200, r.text
    body = r.json()
    with torch.no_grad():
        probs = ex.vit(normalised(ex.predict, pixels)).softmax(-1)[0]
    assert body["class"] == int(probs.argmax()) and body["label"] == f"class-{int(probs.argmax())}"
    assert abs(body["probability"] - float(probs.max())) <= ATOL
    np.testing.assert_allclose(np.array(body["map"]), reference_map(ex.pltx, pixels), atol=ATOL, rtol=0)


def test_png_overlay(server: Server) -> None:
    from PIL import Image

    pixels = random_pixels(SIDE, SIDE, 3)
    r = explain(server, png_bytes(pixels), headers={"Accept": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (SIDE, SIDE)
    ex = tiny_exports()
    from captum_vit.export import read_metadata

    x = normalised(ex.pltx, pixels)[0].numpy()
    assert r.content == heatmap_png(x, reference_map(ex.pltx, pixels), read_metadata(ex.pltx))


BAD_REQUESTS = {
    "corrupt PNG": (dict(body=b"\x89PNG\r\n\x1a\n" + b"\x00" * 64), 400, "corrupt_image"),
    "truncated PNG": (dict(body=png_bytes(random_pixels(SIDE, SIDE, 0))[:120]), 400, "corrupt_image"),
    "GIF": (dict(body=b"GIF89a" + b"\x00" * 32), 415, "unsupported_format"),
    "text body": (dict(body=b"hello", ctype="text/plain"), 415, "unsupported_media_type"),
    "oversized upload": (dict(body=b"\x89PNG\r\n\x1a\n" + b"\x00" * 300_000), 413, "payload_too_large"),
    "image side too large": (dict(body=png_bytes(np.zeros((8, 600, 3), np.uint8))), 413, "image_too_large"),
    "unknown model": (
        dict(body=png_bytes(random_pixels(SIDE, SIDE, 0)), params={"model": "nope"}),
        404,
        "unknown_model",
    ),
    "unknown query field": (dict(body=png_bytes(random_pixels(SIDE, SIDE, 0)), params={"x": "1"}), 422, "bad_field"),
    "wrong JSON field": (dict(body=b'{"img": "AAAA"}', ctype="application/json"), 422, "bad_field"),
    "bad base64": (dict(body=b'{"image": "***"}', ctype="application/json"), 422, "bad_field"),
    "not JSON": (dict(body=b"{", ctype="application/json"), 400, "bad_json"),
    "empty body": (dict(body=b""), 422, "bad_field"),
    "unacceptable Accept": (dict(body=b"x", headers={"Accept": "text/html"}), 406, "not_acceptable"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_json_4xx_naming_the_problem(server: Server, case: str) -> None:
    kwargs, status, kind = BAD_REQUESTS[case]
    kwargs = dict(kwargs)
    r = explain(server, kwargs.pop("body"), kwargs.pop("ctype", "image/png"), **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]["kind"] == kind and r.json()["error"]["message"]
    assert server.metric("captum_vit_errors_total", kind=kind) >= 1
    ok = explain(server, png_bytes(random_pixels(SIDE, SIDE, 1)))  # the process is unharmed
    assert ok.status_code == 200
