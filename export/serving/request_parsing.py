"""Reading an explain request: bounded body, then the image bytes and the fields it names.

Three shapes are accepted on ``POST /v1/explain``:

- the raw image as the body (``Content-Type: image/png``, ``image/jpeg`` or
  ``application/octet-stream``), the model in the ``model`` query parameter;
- ``multipart/form-data`` with a file field ``image`` and an optional field ``model``;
- ``application/json`` ``{"image": "<base64>", "model": "<name>"}``.

Anything else is a 4xx naming the problem.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from starlette.requests import Request

from captum_vit.export.serving.config import ServeError

RAW_TYPES = ("image/png", "image/jpeg", "application/octet-stream")
JSON_FIELDS = {"image", "model"}
QUERY_FIELDS = {"model"}


@dataclass
class ExplainRequest:
    image: bytes
    model: str | None
    want_png: bool


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            # Drop the chunks first: the traceback keeps this frame alive until it is collected.
            chunks.clear()
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ServeError:
    return ServeError(413, "payload_too_large", f"the request body exceeds {limit} bytes")


def wants_png(accept: str | None) -> bool:
    """Whether ``Accept`` asks for the PNG overlay rather than JSON; 406 when it allows neither.

    Examples
    --------
    >>> wants_png(None), wants_png("image/png"), wants_png("application/json, image/png"), wants_png("*/*")
    (False, True, False, False)
    """
    if not accept:
        return False
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in ("application/json", "application/*", "*/*"):
            return False
        if media in ("image/png", "image/*"):
            return True
    raise ServeError(406, "not_acceptable", f"Accept must allow application/json or image/png, got {accept!r}")


async def parse_request(request: Request, body: bytes) -> ExplainRequest:
    """The image bytes and model name of an explain request.

    Raises
    ------
    ServeError
        415 for an unsupported ``Content-Type``, 422 for an unknown, missing or malformed field.
    """
    unknown = set(request.query_params) - QUERY_FIELDS
    if unknown:
        raise ServeError(422, "bad_field", f"unknown query parameter(s) {sorted(unknown)}; allowed: ['model']")
    model = request.query_params.get("model")
    want_png = wants_png(request.headers.get("accept"))
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in RAW_TYPES:
        image = body
    elif ctype == "application/json":
        image, model = _from_json(body, model)
    elif ctype == "multipart/form-data":
        image, model = await _from_multipart(request, body, model)
    else:
        raise ServeError(
            415,
            "unsupported_media_type",
            f"Content-Type must be image/png, image/jpeg, application/json or multipart/form-data, got {ctype or 'none'!r}",
        )
    if not image:
        raise ServeError(422, "bad_field", "the image is empty")
    return ExplainRequest(image, model, want_png)


def _from_json(body: bytes, model: str | None) -> tuple[bytes, str | None]:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ServeError(400, "bad_json", f"the body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ServeError(422, "bad_field", 'the JSON body must be an object {"image": "<base64>", "model": "<name>"}')
    unknown = set(doc) - JSON_FIELDS
    if unknown:
        raise ServeError(422, "bad_field", f"unknown field(s) {sorted(unknown)}; allowed: {sorted(JSON_FIELDS)}")
    if not isinstance(doc.get("image"), str):
        raise ServeError(422, "bad_field", "field 'image' must be a base64 string of PNG or JPEG bytes")
    if "model" in doc:
        if not isinstance(doc["model"], str):
            raise ServeError(422, "bad_field", "field 'model' must be a string")
        model = doc["model"]
    try:
        return base64.b64decode(doc["image"], validate=True), model
    except (binascii.Error, ValueError):
        raise ServeError(422, "bad_field", "field 'image' is not valid base64") from None


async def _from_multipart(request: Request, body: bytes, model: str | None) -> tuple[bytes, str | None]:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=4).parse()
    except MultiPartException as e:
        raise ServeError(422, "bad_field", f"malformed multipart body: {e.message}") from None
    unknown = set(form.keys()) - JSON_FIELDS
    if unknown:
        raise ServeError(422, "bad_field", f"unknown field(s) {sorted(unknown)}; allowed: {sorted(JSON_FIELDS)}")
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise ServeError(422, "bad_field", "multipart field 'image' must be a file upload")
    image = await upload.read()
    name = form.get("model")
    if name is not None:
        if not isinstance(name, str):
            raise ServeError(422, "bad_field", "multipart field 'model' must be text")
        model = name
    return image, model
