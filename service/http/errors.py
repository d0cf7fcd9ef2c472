"""The one error table: each domain exception -> HTTP status, JSON ``code``, reject-metric reason, Retry-After.

Domain code raises its own exceptions and knows nothing of HTTP (``DecodeError``, ``UploadTooLarge``,
``QueueFull``, ``BudgetError`` ...). Everything here is derived from ``ERRORS``: the exception handlers, the
``adafocus_rejected_total`` reason the /classify route records, and the OpenAPI error descriptions. Bad input never
becomes a 500: only a bug in the server does (code ``internal``).
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
from model.video_segments import SegmentError
from service.budget.store import BudgetFileReadOnly
from service.classify.flow import ClientGone, ServiceDraining
from service.classify.tensor_errors import TENSOR_STATUS, TensorError
from service.classify.upload import BadUpload, IncompleteUpload, NotJson, NotMultipart, TooManyFields, UploadTooLarge
from service.decode.pool import DecodeBusy, DecoderCrashed
from service.engine.errors import DeadlineExceeded, EngineDraining, QueueFull, RequestCancelled
from service.http.api_keys import ApiKeyInvalid, ApiKeyMissing, ConcurrencyLimited, RateLimited
from service.http.auth import BudgetChangesDisabled, Forbidden, Unauthorized
from service.http.guard_errors import (
    BadJson,
    BodyTooLarge,
    JsonTooDeep,
    MalformedHttp,
    ReadTimeout,
    TooManyConnections,
)
from service.http.open_inference import ModelNotFound
from service.lifecycle import ShutdownAborted
from service.logs import current_request_id
from service.schemas import ErrorBody

log = logging.getLogger(__name__)

INVALID_INPUT = "invalid_input"
DRAINING_TEXT = "the server is shutting down; retry on another replica"


@dataclass(frozen=True)
class ErrorRule:
    status: int
    code: str | None  # None: the exception's own ``code`` (DecodeError)
    reason: str | None  # adafocus_rejected_total{reason} recorded by /classify; None: the engine records it
    retry_after: bool = False  # 503s tell the client when to come back
    message: str | None = None  # None: the exception's own message
    description: str = ""  # for the OpenAPI document
    status_by_code: dict[str, int] = field(default_factory=dict)  # per-code status override (DecodeError)


ERRORS: dict[type[Exception], ErrorRule] = {
    DecodeError: ErrorRule(
        422, None, INVALID_INPUT, status_by_code={"not_a_video": 415, "too_large": 413},
        description="undecodable video or outside limits (`no_video_stream`, `zero_frames`, `undecodable`, "
        "`too_long`, `frame_too_large`, `decode_timeout`); not a video container (`not_a_video`: empty, text, "
        "still image ...); a file over the decoder's byte limit (`too_large`)",
    ),
    TensorError: ErrorRule(
        422, None, INVALID_INPUT, status_by_code=TENSOR_STATUS,
        description="an Open Inference Protocol body or tensor that cannot be used (`invalid_inference_request`, "
        "`tensor_datatype`, `tensor_shape`, `tensor_shape_mismatch`, `tensor_too_large`, `too_few_frames`, "
        "`too_many_clips`, `invalid_parameter`)",
    ),
    SegmentError: ErrorRule(
        422, None, INVALID_INPUT, description="a timeline's `segment_s` or `stride_s` that is not a positive number "
        "(`bad_segment`), below `ADAFOCUS_MIN_SEGMENT_S` (`segment_too_short`), longer than the video "
        "(`segment_too_long`), or giving more segments than `ADAFOCUS_MAX_SEGMENTS` (`too_many_segments`); a "
        "timeline sent to a fleet whose decode tier decodes single clips only (`timeline_unavailable`)",
    ),
    IncompleteUpload: ErrorRule(
        400, "incomplete_upload", INVALID_INPUT, description="the upload ended before its multipart closing boundary "
        "or its Content-Length (`incomplete_upload`): it is not decoded",
    ),
    ApiKeyMissing: ErrorRule(
        401, "api_key_required", None, description="no API key (`Authorization: Bearer` or `X-API-Key`) on a server "
        "with `ADAFOCUS_API_KEYS_FILE` (`api_key_required`)",
    ),
    ApiKeyInvalid: ErrorRule(403, "api_key_invalid", None, description="an API key not in the keys file "
                             "(`api_key_invalid`)"),
    RateLimited: ErrorRule(
        429, "rate_limited", None, True, description="the API key is over its request rate (`rate_limited`); see "
        "Retry-After",
    ),
    ConcurrencyLimited: ErrorRule(
        429, "concurrency_limited", None, True, description="the API key has its limit of requests in flight "
        "(`concurrency_limited`)",
    ),
    UploadTooLarge: ErrorRule(
        413, "too_large", INVALID_INPUT, description="the upload exceeds `ADAFOCUS_MAX_UPLOAD_BYTES` (`too_large`)"
    ),
    TooManyFields: ErrorRule(
        413, "too_many_fields", INVALID_INPUT, description="more form fields than `ADAFOCUS_MAX_FORM_FIELDS` "
        "(`too_many_fields`)"
    ),
    BodyTooLarge: ErrorRule(
        413, "body_too_large", None, description="a JSON body over `ADAFOCUS_MAX_JSON_BYTES` (`body_too_large`)"
    ),
    ReadTimeout: ErrorRule(
        408, "request_timeout", None, description="headers or a JSON body slower than `ADAFOCUS_HEADER_TIMEOUT_S` "
        "(`request_timeout`)"
    ),
    MalformedHttp: ErrorRule(400, "bad_http_request", None, description="not an HTTP/1.1 request"),
    JsonTooDeep: ErrorRule(
        422, "json_too_deep", None, description="a JSON body nested deeper than `ADAFOCUS_MAX_JSON_DEPTH` "
        "(`json_too_deep`)"
    ),
    BadJson: ErrorRule(422, "invalid_request", None, description="a body that is not UTF-8 JSON (`invalid_request`)"),
    TooManyConnections: ErrorRule(
        503, "too_many_connections", None, True,
        description="the server holds `ADAFOCUS_MAX_CONNECTIONS` connections (`too_many_connections`)",
    ),
    NotMultipart: ErrorRule(
        415, "unsupported_media_type", INVALID_INPUT, description="not multipart form data (`unsupported_media_type`)"
    ),
    NotJson: ErrorRule(
        415, "unsupported_media_type", None, description="not a JSON body (`unsupported_media_type`)"
    ),
    BadUpload: ErrorRule(422, "invalid_request", INVALID_INPUT, description="an invalid request (`invalid_request`)"),
    DecoderCrashed: ErrorRule(
        422, "decoder_crashed", INVALID_INPUT, description="the decoder crashed on this file (`decoder_crashed`)"
    ),
    BudgetError: ErrorRule(
        422, "invalid_budget", INVALID_INPUT, description="an unknown budget level or invalid thresholds "
        "(`invalid_budget`)"
    ),
    DecodeBusy: ErrorRule(
        503, "queue_full", "decode_queue_full", True, description="too many uploads wait for a decoder (`queue_full`)"
    ),
    QueueFull: ErrorRule(
        503, "queue_full", None, True, "the server is at capacity; retry later",
        description="the admission queue is full (`queue_full`); see Retry-After",
    ),
    ServiceDraining: ErrorRule(
        503, "draining", "draining", True, DRAINING_TEXT, description="the server is draining (`draining`)"
    ),
    EngineDraining: ErrorRule(503, "draining", None, True, DRAINING_TEXT),
    ShutdownAborted: ErrorRule(
        503, "draining", "draining", True,
        description="the drain timeout passed before this request finished (`draining`)",
    ),
    DeadlineExceeded: ErrorRule(
        504, "deadline_exceeded", None, description="the request passed its deadline (`deadline_exceeded`)"
    ),
    RequestCancelled: ErrorRule(499, "cancelled", None, message="the request was cancelled"),
    ClientGone: ErrorRule(499, "disconnected", "disconnected"),
    Unauthorized: ErrorRule(
        401, "unauthorized", None, description="missing or malformed `Authorization: Bearer` header"
    ),
    Forbidden: ErrorRule(403, "forbidden", None, description="wrong operator token (`forbidden`)"),
    ModelNotFound: ErrorRule(404, "model_not_found", None, description="no model of that name (`model_not_found`)"),
    BudgetFileReadOnly: ErrorRule(
        409, "budget_file_read_only", None,
        description="the budget is set by a read-only `ADAFOCUS_BUDGET_FILE` (a ConfigMap): change the file "
        "(`budget_file_read_only`)",
    ),
    BudgetChangesDisabled: ErrorRule(
        403, "budget_changes_disabled", None,
        description="budget changes are disabled: no operator token configured (`budget_changes_disabled`)",
    ),
}
INTERNAL = ErrorRule(500, "internal", None, message="internal server error")
ROUTING_CODES = {404: "not_found", 405: "method_not_allowed"}  # Starlette's routing errors; request validation: 422


@dataclass
class ApiError(Exception):
    """An answer other than 200, already mapped (``to_api_error``, validation and routing errors)."""

    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


def rule_for(exc: BaseException) -> ErrorRule:
    """The table's rule for ``exc`` (its class or the nearest base class in the table); INTERNAL otherwise."""
    for cls in type(exc).__mro__:
        if cls in ERRORS:
            return ERRORS[cls]
    return INTERNAL


def to_api_error(exc: BaseException, retry_after_s: int) -> ApiError:
    """Map a domain exception to its answer."""
    if isinstance(exc, ApiError):
        return exc
    rule = rule_for(exc)
    code = rule.code if rule.code is not None else str(getattr(exc, "code", "internal"))
    status = rule.status_by_code.get(code, rule.status)
    message = rule.message or getattr(exc, "message", None) or str(exc) or code
    headers = {"Retry-After": str(retry_after_s)} if rule.retry_after else {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return ApiError(status, code, message, headers)


def error_response(error: ApiError) -> JSONResponse:
    body = {"code": error.code, "message": error.message, "request_id": current_request_id()}
    return JSONResponse(body, error.status, headers=error.headers)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the listed statuses, described by the table's rules."""
    texts: dict[int, list[str]] = {status: [] for status in statuses}
    for rule in ERRORS.values():
        for status in {rule.status, *rule.status_by_code.values()} & texts.keys():
            if rule.description:
                texts[status].append(rule.description)
    return {status: {"model": ErrorBody, "description": "; or ".join(texts[status])} for status in statuses}


def install_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Register the JSON error handlers for every table entry, validation and routing errors, and bugs."""

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
        headers = dict(exc.headers or {})
        code = ROUTING_CODES.get(exc.status_code, "http_error")
        return error_response(ApiError(exc.status_code, code, exc.detail, headers))

    kinds: list[type[Exception]] = [ApiError, *ERRORS, Exception]
    for kind in kinds:
        app.add_exception_handler(kind, domain)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http)
