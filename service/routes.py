"""HTTP routes: thin wrappers over ``ServiceState`` (service/lifecycle.py) and the /classify flow
(service/pipeline.py); errors are mapped by the table in service/errors.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header, Request
from fastapi.responses import JSONResponse, Response

from service import pipeline, stream
from service.auth import check_operator
from service.engine.types import BudgetState
from service.errors import error_response, error_responses, rule_for, to_api_error
from service.events import EventSink, wants_stream
from service.lifecycle import ServiceState
from service.metrics import CONTENT_TYPE, render_families
from service.pipeline import ClientGone, ServiceDraining
from service.schemas import (
    BudgetResponse,
    BudgetUpdate,
    ClassifyResponse,
    Health,
    Readiness,
    ReplicaBudget,
    level_bodies,
)
from service.upload import NotJson

log = logging.getLogger(__name__)
router = APIRouter()

# The body is streamed by service.upload.read_upload (declaring File/Form parameters would make FastAPI buffer
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
                        "description": "include the frames the model saw (PNG data URLs), to draw the cubes on",
                    },
                    "stream": {
                        "type": "boolean",
                        "default": False,
                        "description": "stream Server-Sent Events: the prediction after the glance and each cube, "
                        "then the answer (same as `Accept: text/event-stream`)",
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


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


def require_operator(state: StateDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """`Authorization: Bearer <ADAFOCUS_OPERATOR_TOKEN>`, compared in constant time."""
    check_operator(state.settings.operator_token, authorization)


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    response_model_exclude_none=True,
    responses=error_responses(413, 415, 422, 503, 504),
    openapi_extra={"requestBody": CLASSIFY_BODY},
)
async def classify(request: Request, state: StateDep) -> ClassifyResponse | Response:
    """Classify one uploaded video (multipart field `video`); with `Accept: text/event-stream` or `stream=true`,
    stream the prediction after the glance and after each cube, then the answer (Server-Sent Events)."""
    started = state.clock()
    # checked here, before the request counts as in flight: a request the drain waits for never gets refused later
    draining = state.draining
    state.inflight += 1
    log.debug("/classify: %d request(s) in flight", state.inflight)  # the drain test waits for these
    status = 500
    sink = EventSink(asyncio.get_running_loop(), wants_stream(request.headers.get("accept")))
    streaming = False

    def stream_ended(final: int) -> None:
        state.inflight -= 1
        if state.metrics is not None:
            state.metrics.on_request(final, state.clock() - started)

    try:
        if draining:
            raise ServiceDraining("the server is draining and admits no new requests")
        answer = await stream.respond(
            state, state.until_aborted(named(state, pipeline.classify(state, request, started, sink))), sink,
            stream_ended,
        )
        streaming = isinstance(answer, Response)
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
        if not streaming:  # a stream records its outcome when it ends
            stream_ended(status)


async def named(state: ServiceState, work: Awaitable[ClassifyResponse]) -> ClassifyResponse:
    """``work``'s answer with the replica that gave it (streamed or not)."""
    answer = await work
    answer.replica = state.replica
    return answer


def budget_body(
    budget: BudgetState, default: str, replica: str = "", replicas: list[ReplicaBudget] | None = None
) -> BudgetResponse:
    return BudgetResponse(
        name=budget.name,
        version=budget.version,
        thresholds=list(budget.thresholds),
        criterion=budget.criterion,
        default=default,
        levels=level_bodies(budget.levels),
        mode="manual" if budget.auto is None else "auto",
        slo_p99_s=None if budget.auto is None else budget.auto.slo_p99_s,
        min_level=None if budget.auto is None else budget.auto.min_level,
        setting_version=budget.setting_version,
        replica=replica,
        replicas=replicas or [],
    )


@router.get("/budget", response_model=BudgetResponse)
def get_budget(state: StateDep) -> BudgetResponse:
    """The active threshold set and every available level; `replicas`: each fleet replica's version."""
    assert state.engine is not None
    budget = state.engine.budget_state()
    # a fleet whose broadcast failed (no replica answered) lists this replica alone
    replicas = (state.peers.budgets() if state.peers is not None else []) or [state.own_budget()]
    return budget_body(budget, budget.levels.default, state.replica, replicas)


def require_json(content_type: Annotated[str | None, Header()] = None) -> None:
    """A JSON body, said so by its Content-Type; checked after the token, before the body is read."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        got = f"Content-Type {kind!r}" if kind else "no Content-Type"
        raise NotJson(
            f"PUT /budget takes a JSON body, got {got}: send `Content-Type: application/json`, "
            """e.g. curl -X PUT -H 'Content-Type: application/json' -d '{"level": "low"}' ..."""
        )


@router.put(
    "/budget",
    response_model=BudgetResponse,
    responses=error_responses(401, 403, 409, 415, 422),
    dependencies=[Depends(require_operator), Depends(require_json)],
)
def put_budget(state: StateDep, update: Annotated[BudgetUpdate, Body()]) -> BudgetResponse:
    """Switch the budget by level name, by a GMACs/video target, with explicit thresholds, or to the automatic
    budget (`mode: auto`, with an optional `p99_s` objective and `min_level` floor); needs the operator token.
    With a budget file it is written there (409 when read-only); in a fleet every replica applies it."""
    assert state.budget is not None
    budget = state.budget.put(update)
    return budget_body(budget, budget.levels.default, state.replica)


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
