"""An HTTP service for exported explainers (``captum-vit serve``), with dynamic batching.

Needs the ``serve`` extra (``pip install 'captum_vit[serve]'``): FastAPI, uvicorn,
prometheus-client, python-multipart, Pillow and onnxruntime. :class:`ServeConfig` imports none
of them; :func:`create_app` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from captum_vit.export.serving.config import ServeConfig, ServeError, parse_model_spec

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["ServeConfig", "ServeError", "create_app", "parse_model_spec"]


def create_app(config: ServeConfig) -> FastAPI:
    """See :func:`captum_vit.export.serving.app.create_app`."""
    try:
        from captum_vit.export.serving.app import create_app as build
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(f"captum-vit serve needs the serve extra: pip install 'captum_vit[serve]' ({e})") from e
    return build(config)
