"""Prometheus metrics and JSON logs of the explanation service."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LOGGER_NAME = "captum_vit.serve"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Metrics:
    """The service's metrics, in a registry of their own (one per app, so tests can build many).

    Examples
    --------
    >>> m = Metrics()
    >>> m.requests.labels(model="pltx", code="200").inc()
    >>> b"captum_vit_requests_total" in m.exposition()
    True
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("captum_vit_requests", "Explain requests answered", ["model", "code"], registry=r)
        self.errors = Counter("captum_vit_errors", "Refused or failed requests by kind", ["kind"], registry=r)
        self.batch_size = Histogram(
            "captum_vit_batch_size", "Images per onnxruntime call", ["model"], buckets=_BATCH_BUCKETS, registry=r
        )
        self.latency = Histogram(
            "captum_vit_request_latency_seconds",
            "Explain request latency, body read to answer",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "captum_vit_inference_seconds", "onnxruntime call time", ["model"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("captum_vit_queue_depth", "Requests waiting for a batch", ["model"], registry=r)
        self.in_flight = Gauge("captum_vit_requests_in_flight", "Explain requests received, not yet answered", registry=r)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's ``fields``.

    Examples
    --------
    >>> rec = logging.LogRecord("x", logging.INFO, "", 0, "request", None, None)
    >>> rec.fields = {"status": 200}
    >>> json.loads(JSONFormatter().format(rec))["status"]
    200
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def log_config(level: str = "info") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn and the service: JSON lines on stderr."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    loggers = {
        name: {"handlers": ["json"], "level": level.upper(), "propagate": False} for name in ("uvicorn", LOGGER_NAME)
    }
    loggers["uvicorn.error"] = {"level": level.upper()}
    loggers["uvicorn.access"] = {"handlers": [], "level": "WARNING", "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JSONFormatter"}},
        "handlers": {"json": handler},
        "loggers": loggers,
    }
