"""The FastAPI application: ``/v1/explain``, ``/v1/models``, ``/healthz``, ``/readyz``, ``/metrics``.

Models load in the background after the server binds, so ``/healthz`` answers at once and
``/readyz`` turns 200 only when every model is loaded and has run one warm-up call. On
SIGTERM uvicorn stops accepting connections and waits for the requests in flight; the
application's shutdown then lets every batcher finish what it holds before the thread pools
close.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from captum_vit.export.serving.batcher import DynamicBatcher
from captum_vit.export.serving.config import ServeConfig, ServeError
from captum_vit.export.serving.engine import ServedModel
from captum_vit.export.serving.images import heatmap_png
from captum_vit.export.serving.request_parsing import parse_request, read_body
from captum_vit.export.serving.telemetry import LOGGER_NAME, Metrics

log = logging.getLogger(LOGGER_NAME)


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(payload), status, headers=headers, media_type="application/json")


def error_response(e: ServeError) -> Response:
    return _json({"error": {"kind": e.kind, "message": str(e)}}, e.status, e.headers)


class ServiceState:
    """Models, batchers and thread pools of one running service."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.models: dict[str, ServedModel] = {}
        self.batchers: dict[str, DynamicBatcher] = {}
        self.ready = False
        self.decoding: dict[str, int] = {}  # requests per model between parsing and the batcher
        self.load_error: str | None = None
        self.infer_pool = ThreadPoolExecutor(config.inference_workers, thread_name_prefix="captum-vit-infer")
        self.decode_pool = ThreadPoolExecutor(config.decode_workers, thread_name_prefix="captum-vit-decode")
        self._loader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loader = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.config.inference_workers)
        try:
            for name, path in self.config.models.items():
                t0 = time.perf_counter()
                threads = self.config.intra_op_threads
                model = await loop.run_in_executor(self.infer_pool, ServedModel, name, path, threads)
                await loop.run_in_executor(self.infer_pool, model.warm_up)
                self.models[name] = model
                self.batchers[name] = DynamicBatcher(
                    model.run,
                    self.infer_pool,
                    slots,
                    max_batch=self.config.max_batch,
                    max_wait_ms=self.config.max_wait_ms,
                    max_queue=self.config.max_queue,
                    retry_after_s=self.config.retry_after_s,
                    on_batch=self._batch_observer(name),
                    upstream=functools.partial(self.decoding.get, name, 0),
                )
                self.batchers[name].start()
                fields = {"event": "model_loaded", "seconds": round(time.perf_counter() - t0, 3), **model.describe()}
                log.info("model loaded", extra={"fields": fields})
            self.ready = True
            log.info("ready", extra={"fields": {"event": "ready", "models": list(self.models)}})
        except Exception as e:  # the process stays up and /readyz says why
            self.load_error = f"{type(e).__name__}: {e}"
            log.error("model loading failed", extra={"fields": {"event": "load_failed", "error": self.load_error}})

    def _batch_observer(self, name: str) -> Any:
        def observe(size: int, seconds: float) -> None:
            self.metrics.batch_size.labels(model=name).observe(size)
            self.metrics.inference.labels(model=name).observe(seconds)

        return observe

    async def close(self) -> None:
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()
        for batcher in self.batchers.values():
            await batcher.close()
        self.infer_pool.shutdown(wait=True)
        self.decode_pool.shutdown(wait=True)
        log.info("stopped", extra={"fields": {"event": "stopped"}})

    def model(self, name: str | None) -> tuple[ServedModel, DynamicBatcher]:
        if not self.ready:
            why = f" ({self.load_error})" if self.load_error else ""
            retry = {"Retry-After": str(self.config.retry_after_s)}
            raise ServeError(503, "not_ready", f"models are not loaded yet{why}", retry)
        key = self.config.default_model if name is None else name
        if key not in self.models:
            raise ServeError(404, "unknown_model", f"unknown model {name!r}; served: {sorted(self.models)}")
        return self.models[key], self.batchers[key]

    async def explain(self, request: Request) -> tuple[Response, str]:
        body = await read_body(request, self.config.max_upload_bytes)
        req = await parse_request(request, body)
        model, batcher = self.model(req.model)
        loop = asyncio.get_running_loop()
        self.decoding[model.name] = self.decoding.get(model.name, 0) + 1
        try:
            x = await loop.run_in_executor(self.decode_pool, model.preprocess, req.image, self.config.max_image_side)
        finally:
            self.decoding[model.name] -= 1
        self.metrics.queue_depth.labels(model=model.name).set(batcher.queued + 1)
        outputs = await batcher.submit(x)
        self.metrics.queue_depth.labels(model=model.name).set(batcher.queued)
        if req.want_png:
            png = await loop.run_in_executor(self.decode_pool, heatmap_png, x, outputs[0], model.metadata)
            return Response(png, media_type="image/png"), model.name
        return _json(model.answer(outputs)), model.name


def create_app(config: ServeConfig) -> FastAPI:
    """The explanation service for ``config`` (run it with uvicorn, or ``captum-vit serve``).

    Examples
    --------
    >>> from pathlib import Path
    >>> app = create_app(ServeConfig({"pltx": Path("pltx.onnx")}))
    >>> sorted(r.path for r in app.routes if r.path.startswith(("/v1", "/h", "/r", "/m")))
    ['/healthz', '/metrics', '/readyz', '/v1/explain', '/v1/models']
    """
    state = ServiceState(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start()
        yield
        await state.close()

    app = FastAPI(title="captum_vit explanations", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = state

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if state.ready:
            return _json({"status": "ready", "models": sorted(state.models)})
        return _json({"status": "loading" if state.load_error is None else "failed", "error": state.load_error}, 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> Response:
        return _json({"default": config.default_model, "models": [m.describe() for m in state.models.values()]})

    @app.post("/v1/explain")
    async def explain(request: Request) -> Response:
        start = time.perf_counter()
        name = "-"
        state.metrics.in_flight.inc()
        try:
            response, name = await state.explain(request)
        except ServeError as e:
            state.metrics.errors.labels(kind=e.kind).inc()
            response = error_response(e)
            error: str | None = f"{e.kind}: {e}"
        except Exception as e:  # never let one request take the process down
            log.exception("request failed", extra={"fields": {"event": "error"}})
            state.metrics.errors.labels(kind="internal").inc()
            response = error_response(ServeError(500, "internal", f"{type(e).__name__} while explaining"))
            error = type(e).__name__
        else:
            error = None
        finally:
            state.metrics.in_flight.dec()
        seconds = time.perf_counter() - start
        state.metrics.requests.labels(model=name, code=str(response.status_code)).inc()
        if response.status_code == 200:
            state.metrics.latency.labels(model=name).observe(seconds)
        fields = {"event": "explain", "model": name, "status": response.status_code, "ms": round(seconds * 1e3, 2)}
        if error is not None:
            fields["error"] = error
        log.info("explain", extra={"fields": fields})
        return response

    return app
