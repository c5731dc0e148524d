"""Errors in the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``, for every path out of the app.

A handler raises :class:`ApiError`; FastAPI's own errors (404, 405, validation) and unexpected exceptions are
turned into the same shape here, and :class:`LastResortErrors` answers in JSON even when uvicorn cancels a
request before its response started (uvicorn would send a plain-text 500).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("adapterlab.serve")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
}


class ApiError(Exception):
    """A request that ends with an error response (4xx when the client can fix it)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        message = " ".join(message.split())  # one line, whatever a loader or an echoed value put in it
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """The body of every error response (documented in the OpenAPI schema)."""

    error: ErrorDetail


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class SafeJSONResponse(JSONResponse):
    """JSON that can always be sent: text that is not valid Unicode (a lone surrogate echoed back in a message)
    is escaped instead of failing the response with a UnicodeEncodeError."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None, headers: dict | None = None
) -> JSONResponse:
    return SafeJSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def error_param(loc: tuple) -> str | None:
    """The field a validation error is about (``messages.0.role``), without pydantic's union-member labels."""
    parts = [str(p) for p in loc if isinstance(p, int) or not (set(str(p)) & set("[(-") or p in _TYPE_LABELS)]
    return ".".join(parts) or None


_TYPE_LABELS = {"str", "int", "float", "bool", "list", "dict", "body", "constrained-str", "function-after"}


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param = error_param(tuple(first["loc"]))
    return (f"{param}: {first['msg']}" if param else first["msg"]), param


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)


async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.param, exc.code)


async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # Starlette's 405 carries the Allow header; keep whatever headers the exception has.
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return error_response(exc.status_code, message, code=code, headers=getattr(exc, "headers", None))


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    message, param = validation_message(list(exc.errors()))
    return error_response(400, message, param, "invalid_value")


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error")
    return error_response(500, f"internal error: {type(exc).__name__}", code="internal_error")


class LastResortErrors:
    """ASGI wrapper: a request that uvicorn cancels before its response started (it does when its shutdown limit
    passes) still gets an OpenAI-shaped 503, not uvicorn's plain-text 500. Exceptions are Starlette's to answer
    (``_unexpected``)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            if not started:
                body = json.dumps(error_body(503, "the server is shutting down", code="shutting_down")).encode()
                headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
                try:
                    await send({"type": "http.response.start", "status": 503, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                except Exception:  # the connection is gone; nothing left to tell
                    pass
            raise
