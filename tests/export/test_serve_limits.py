"""The service under pressure: a full queue answers 503 with Retry-After, SIGTERM finishes the
requests in flight, and good requests mixed with bad ones all get their right answer."""

from __future__ import annotations

import concurrent.futures
import signal
import time

import httpx
import numpy as np
import pytest

from tests.export.test_serve_support import Server, png_bytes, random_pixels, reference_map, slow_export

ATOL = 1e-5


def post(srv: Server, body: bytes) -> httpx.Response:
    return httpx.post(srv.url + "/v1/explain", content=body, headers={"Content-Type": "image/png"}, timeout=120)


def test_full_queue_answers_503_then_sigterm_finishes_the_requests_in_flight() -> None:
    # One server for both (a start costs seconds here): first flood it, then stop it mid-load.
    path = slow_export()
    # A 3-deep queue: the flood of 16 overflows it, while the three requests sent before SIGTERM
    # always fit (one or more running, the rest queued), so none of them is ever refused.
    srv = Server({"slow": path}, "--max-batch", "1", "--max-queue", "3", "--decode-workers", "4")
    try:
        srv.wait_ready()
        images = [random_pixels(64, 64, seed) for seed in range(16)]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(lambda im: post(srv, png_bytes(im)), images))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 503} and codes.count(503) >= 1 and codes.count(200) >= 3, codes
        for pixels, r in zip(images, responses):
            if r.status_code == 503:
                assert r.headers["retry-after"] == "1" and r.json()["error"]["kind"] == "queue_full"
            else:
                np.testing.assert_allclose(np.array(r.json()["map"]), reference_map(path, pixels), atol=ATOL, rtol=0)
        assert srv.metric("captum_vit_errors_total", kind="queue_full") == codes.count(503)

        answered = srv.metric("captum_vit_requests_total", model="slow", code="200")

        def held() -> tuple[float, float]:
            # From one scrape: requests in the server now, and those plus the ones answered since the flood.
            # (No request of these three can be refused, so every request in flight is one the server keeps.)
            scraped = srv.scrape()
            in_flight = srv.metric("captum_vit_requests_in_flight", scraped)
            return in_flight, in_flight + srv.metric("captum_vit_requests_total", scraped, model="slow", code="200") - answered

        images = [random_pixels(64, 64, 50 + i) for i in range(3)]
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(post, srv, png_bytes(im)) for im in images]
            # Stop only once the server holds all three: on a loaded machine a request still being
            # sent when SIGTERM lands would be refused, rightly, and the test would prove nothing.
            deadline = time.monotonic() + 60
            in_flight, received = held()
            while received < 3 and time.monotonic() < deadline:
                time.sleep(0.005)
                in_flight, received = held()
            assert received == 3, f"the three requests never reached the server ({received} did)"
            srv.proc.send_signal(signal.SIGTERM)
            responses = [f.result() for f in futures]
        assert in_flight >= 1, "every request was answered before SIGTERM: nothing was left to finish"
        assert srv.proc.wait(60) == 0, srv.log()
        for pixels, r in zip(images, responses):
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(np.array(r.json()["map"]), reference_map(path, pixels), atol=ATOL, rtol=0)
        with pytest.raises(httpx.TransportError):
            httpx.get(srv.url + "/healthz", timeout=5)
        assert '"event": "stopped"' in srv.log()
    finally:
        srv.stop()
