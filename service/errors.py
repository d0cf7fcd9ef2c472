"""Every error the API can answer, in one place: domain exceptions -> HTTP status + JSON ``{code, message}``.

Domain code raises its own exceptions (``DecodeError``, ``QueueFull``, ``BudgetError`` ...); this module maps
them. Bad input never becomes a 500: only a bug in the server does (code ``internal``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from model.budgets import BudgetError
from model.video import DecodeError
from service.engine.errors import DeadlineExceeded, EngineDraining, QueueFull, RequestCancelled

log = logging.getLogger(__name__)

DECODE_STATUS = {"not_a_video": 415, "too_large": 413}  # every other decode code is 422


@dataclass
class ApiError(Exception):
    """An answer other than 200: raised by routes and by ``to_api_error`` for domain exceptions."""

    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


class UploadTooLarge(Exception):
    """The upload passed ``max_upload_bytes`` (raised while streaming, before the whole body arrived)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the upload exceeds the limit of {limit} bytes")
        self.limit = limit


class BadUpload(Exception):
    """A request that is not a usable multipart upload (no ``video`` part, malformed form data)."""

    def __init__(self, message: str, status: int = 422, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.status, self.code = status, code


class DecoderCrashed(Exception):
    """The decoder worker died (a signal) while decoding this upload; the pool replaced it."""


class DecodeBusy(Exception):
    """Too many uploads are waiting for a decoder."""


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def to_api_error(exc: BaseException, retry_after_s: int = 1) -> ApiError:
    """Map a domain exception to its answer."""
    retry = {"Retry-After": str(retry_after_s)}
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, DecodeError):
        return ApiError(DECODE_STATUS.get(exc.code, 422), exc.code, exc.message)
    if isinstance(exc, UploadTooLarge):
        return ApiError(413, "too_large", str(exc))
    if isinstance(exc, BadUpload):
        return ApiError(exc.status, exc.code, str(exc))
    if isinstance(exc, DecoderCrashed):
        return ApiError(422, "decoder_crashed", str(exc))
    if isinstance(exc, DecodeBusy):
        return ApiError(503, "queue_full", str(exc), retry)
    if isinstance(exc, QueueFull):
        return ApiError(503, "queue_full", "the server is at capacity; retry later", retry)
    if isinstance(exc, EngineDraining):
        return ApiError(503, "draining", "the server is shutting down; retry on another replica", retry)
    if isinstance(exc, DeadlineExceeded):
        return ApiError(504, "deadline_exceeded", str(exc) or "the request was not answered before its deadline")
    if isinstance(exc, RequestCancelled):
        return ApiError(499, "cancelled", "the request was cancelled")
    if isinstance(exc, BudgetError):
        return ApiError(422, "invalid_budget", str(exc))
    if isinstance(exc, AuthError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
        return ApiError(exc.status, exc.code, str(exc), headers)
    return ApiError(500, "internal", "internal server error")


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse({"code": error.code, "message": error.message}, error.status, headers=error.headers)


def install_handlers(app: FastAPI, retry_after_s: int = 1) -> None:
    """Register the JSON error handlers for domain, validation and routing errors."""

    async def domain(_: Request, exc: Exception) -> JSONResponse:
        error = to_api_error(exc, retry_after_s)
        if error.status >= 500 and error.code == "internal":
            log.exception("unhandled error", exc_info=exc)
        return error_response(error)

    async def validation(_: Request, exc: Exception) -> JSONResponse:
        errors: Any = exc.errors() if isinstance(exc, RequestValidationError) else []
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in errors]
        return error_response(ApiError(422, "invalid_request", "; ".join(parts) or "invalid request"))

    async def http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        codes = {404: "not_found", 405: "method_not_allowed"}
        headers = dict(exc.headers or {})
        return error_response(ApiError(exc.status_code, codes.get(exc.status_code, "http_error"), exc.detail, headers))

    for kind in (ApiError, DecodeError, UploadTooLarge, BadUpload, DecoderCrashed, DecodeBusy, QueueFull,
                 EngineDraining, DeadlineExceeded, RequestCancelled, BudgetError, AuthError, Exception):
        app.add_exception_handler(kind, domain)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http)
