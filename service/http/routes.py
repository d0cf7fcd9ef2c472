"""HTTP routes (the budget's are in service/http/budget_routes.py): thin wrappers over ``ServiceState``
(service/lifecycle.py) and the /classify flow (service/classify/flow.py), with /classify's optional API key check
(``require_api_key``, service/http/api_keys.py); errors are mapped by the table in service/http/errors.py."""

from __future__ import annotations

import logging
import math
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.classify.flow import ClassifyFlow, ClientGone
from service.http import sse
from service.http.api_keys import ApiKeys, Grant, KeyFile, KeyLimits, KeyRefused, RateLimited, presented_key
from service.http.auth import check_operator
from service.http.errors import error_response, error_responses, rule_for, to_api_error
from service.lifecycle import ServiceState
from service.metrics import CONTENT_TYPE, render_families
from service.schemas import (
    ClassifyResponse,
    Health,
    Readiness,
    TimelineResponse,
)

log = logging.getLogger(__name__)
router = APIRouter()

# The body is streamed by service.classify.upload.read_upload (declaring File/Form parameters would make FastAPI buffer
# the whole form first), so the multipart schema is written out for the OpenAPI document here.
CLASSIFY_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["video"],
                "properties": {
                    "video": {
                        "type": "string",
                        "format": "binary",
                        "description": "the video file (MP4, WebM, MKV, AVI, MOV ...: any container FFmpeg reads)",
                    },
                    "budget": {"type": "string", "description": "budget level name for this request only"},
                    "explain": {
                        "type": "boolean",
                        "default": False,
                        "description": "include the cubes the policy chose and the prediction after each exit",
                    },
                    "frames": {
                        "type": "boolean",
                        "default": False,
                        "description": "include the frames the model saw (PNG data URLs), to draw the cubes on; "
                        "not with `segment_s` (a 422: a timeline's answer does not carry frames)",
                    },
                    "stream": {
                        "type": "boolean",
                        "default": False,
                        "description": "stream Server-Sent Events: the prediction after the glance and each cube, "
                        "then the answer (same as `Accept: text/event-stream`)",
                    },
                    "segment_s": {
                        "type": "number",
                        "description": "cut the video into segments of this many seconds and classify each: the "
                        "answer is a timeline (`segments`, the video's label = the mean of their probabilities)",
                    },
                    "stride_s": {"type": "number", "description": "seconds between segment starts (default segment_s)"},
                    "sampling": {
                        "type": "string", "enum": ["exact", "fast"],
                        "description": "the decoder's sampling for this request (absent: ADAFOCUS_DECODE_SAMPLING)",
                    },
                    "deadline_ms": {
                        "type": "number",
                        "description": "this request's deadline in ms (at most ADAFOCUS_REQUEST_TIMEOUT_S; also the "
                        "`X-Deadline-Ms` header): near it the answer is the prediction so far",
                    },
                },
            }
        }
    },
}


async def get_state(request: Request) -> ServiceState:
    """The app's service state. NOTE(perf): ``async`` so FastAPI calls it on the event loop; a plain ``def``
    dependency costs every request a worker-thread round trip (issue 22: 14% of the loop thread's time)."""
    state: ServiceState = request.app.state.service
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


def require_operator(state: StateDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """`Authorization: Bearer <ADAFOCUS_OPERATOR_TOKEN>`, compared in constant time."""
    check_operator(state.settings.operator_token, authorization)


# the API key's two headers, declared for the OpenAPI document (Swagger UI's "Authorize"); checked by require_api_key
BEARER = HTTPBearer(auto_error=False, description="an API key, when the server has ADAFOCUS_API_KEYS_FILE")
X_API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="the same API key, in its own header")


def api_keys(request: Request, state: ServiceState) -> ApiKeys | None:
    """The app's API key check (made at its first use; None without ADAFOCUS_API_KEYS_FILE, read and validated by
    the settings at start-up)."""
    s = state.settings
    if s.api_keys_file is None:
        return None
    keys: ApiKeys | None = getattr(request.app.state, "api_keys", None)
    if keys is None:
        source = KeyFile(s.api_keys_file, s.api_keys_poll_s, state.clock)
        limits = KeyLimits(s.api_key_rate, s.api_key_burst, s.api_key_concurrency)
        keys = request.app.state.api_keys = ApiKeys(source.entries, limits, state.clock)
    return keys


async def require_api_key(
    request: Request,
    state: StateDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    header: Annotated[str | None, Depends(X_API_KEY)],
) -> Grant | None:
    """With ADAFOCUS_API_KEYS_FILE: the request's API key admitted under its limits (401, 403 or 429 otherwise),
    before its body is read; the route releases the grant when its answer ends. On the event loop (async): the
    limits' counters need no lock."""
    keys = api_keys(request, state)
    if keys is None:
        return None
    try:
        grant = keys.admit(presented_key(bearer.credentials if bearer else None, header))
    except KeyRefused as exc:
        if state.metrics is not None:
            state.metrics.on_api_key(exc.name, exc.reason)
        if isinstance(exc, RateLimited):  # Retry-After: when the key's bucket holds a token again
            error = to_api_error(exc, state.settings.retry_after_s)
            error.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
            raise error from None
        raise
    if state.metrics is not None:
        state.metrics.on_api_key(grant.name, None)
    return grant


GrantDep = Annotated[Grant | None, Depends(require_api_key)]


@router.post(
    "/classify",
    response_model=ClassifyResponse | TimelineResponse,
    response_model_exclude_none=True,
    responses=error_responses(400, 401, 403, 413, 415, 422, 429, 503, 504),
    openapi_extra={"requestBody": CLASSIFY_BODY},
)
async def classify(
    request: Request, state: StateDep, grant: GrantDep
) -> ClassifyResponse | TimelineResponse | Response:
    """Classify one uploaded video (multipart field `video`); with `Accept: text/event-stream` or `stream=true`,
    stream the prediction after the glance and after each cube, then the answer (Server-Sent Events)."""
    started = state.clock()
    flow = ClassifyFlow(state, request, started)  # before the request counts in flight: it reads ``draining``
    state.inflight += 1
    log.debug("/classify: %d request(s) in flight", state.inflight)  # the drain test waits for these
    status = 500
    streaming = False

    def ended(final: int) -> None:
        state.inflight -= 1
        if grant is not None:
            grant.release()  # the key's slot: when the answer ended, streamed or not
        if state.metrics is not None:
            state.metrics.on_request(final, state.clock() - started)

    try:
        answer = await flow.answer()
        if not isinstance(answer, ClassifyResponse | TimelineResponse):
            streaming = True  # a stream records its outcome when it ends
            return sse.respond(state, answer, ended)
        status = 200
        return answer
    except Exception as exc:
        error = to_api_error(exc, state.settings.retry_after_s)
        status = error.status
        reason = rule_for(exc).reason
        if reason is not None and state.metrics is not None:
            state.metrics.on_reject(reason)
        if isinstance(exc, ClientGone):
            return Response(status_code=499)  # nobody reads this answer; the engine already dropped the request
        if status == 500:
            raise
        return error_response(error)
    finally:
        if not streaming:
            ended(status)


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness, "description": "not ready"}})
def readyz(state: StateDep) -> JSONResponse:
    """Readiness: model loaded, warmed up, decoder self-tested, engine running, not draining."""
    checks = state.readiness()
    ready = all(checks.values())
    body = Readiness(ready=ready, checks=checks).model_dump()
    headers = {} if ready else {"Retry-After": str(state.settings.retry_after_s)}
    return JSONResponse(body, status_code=200 if ready else 503, headers=headers)


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
def metrics(state: StateDep) -> Response:
    """Prometheus metrics (text exposition format)."""
    if state.peers is None:
        return Response(state.render_metrics(), media_type=CONTENT_TYPE)
    # a fleet whose broadcast failed (no replica answered): this replica's own series, labelled as usual
    body = state.peers.metrics() or render_families(state.metric_families())
    return Response(body, media_type=CONTENT_TYPE)
