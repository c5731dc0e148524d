"""Request bodies: read with a size limit, decoded as strict UTF-8, parsed as JSON and validated, so malformed
input is a 4xx that names the problem and never reaches a model.

JSON is parsed by pydantic-core's parser (jiter), which refuses what Python's ``json`` module turns into crashes
or surprises: nesting deeper than its recursion limit (``json`` raises RecursionError at ~1,000), integers past
4,300 digits (``json`` raises a bare ValueError), ``\\ud800``-style lone surrogates (``json`` returns a str that
cannot be encoded again), and ``NaN``/``Infinity``.
"""

from __future__ import annotations

from typing import Any, TypeVar

import pydantic_core
from fastapi import Request
from pydantic import BaseModel, ValidationError

from adapterlab.serve.errors import ApiError, validation_message

Model = TypeVar("Model", bound=BaseModel)


async def read_body(request: Request, schema: type[Model], max_bytes: int) -> Model:
    """The request body as a validated ``schema``, or an ApiError naming what is wrong."""
    return parse_body(await read_bytes(request, max_bytes), schema)


async def read_bytes(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"request body is {declared} bytes; the limit is {max_bytes}", code="body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise ApiError(413, f"request body is over the limit of {max_bytes} bytes", code="body_too_large")
    return bytes(body)


def parse_body(raw: bytes, schema: type[Model]) -> Model:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"request body is not valid UTF-8 (byte {exc.start})", code="invalid_encoding") from None
    try:
        data: Any = pydantic_core.from_json(text, allow_inf_nan=False, cache_strings=False)
    except ValueError as exc:
        reason = str(exc).splitlines()[0]
        if "hex escape" in reason:
            reason += " (a \\u escape must encode a whole character; lone surrogates are refused)"
        raise ApiError(400, f"request body is not valid JSON: {reason}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(list(exc.errors(include_url=False, include_input=False)))
        raise ApiError(400, message, param=param, code="invalid_value") from None
