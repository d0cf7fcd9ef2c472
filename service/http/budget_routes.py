"""The budget routes: ``GET /budget`` (the active threshold set and every level) and ``PUT /budget`` (operator token,
JSON body), thin wrappers over the service's budget control (``service.budget.control``) and store.

PUT /budget checks, in order: the operator token, the Content-Type, the body's JSON (depth, UTF-8: ``check_json``),
and only then does FastAPI parse and validate the body (``TokenFirst``: FastAPI parses a body before it solves a
route's dependencies, so a dependency cannot check the token first)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response
from fastapi.routing import APIRoute

from service.classify.upload import NotJson
from service.engine.types import BudgetState
from service.http.body_guard import check_json
from service.http.errors import error_responses
from service.http.routes import StateDep, get_state, require_operator
from service.schemas import BudgetResponse, BudgetUpdate, ReplicaBudget, level_bodies


class TokenFirst(APIRoute):
    """A route whose operator token, Content-Type and JSON body are checked before FastAPI parses the body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        parse_and_run = super().get_route_handler()

        async def handler(request: Request) -> Response:
            state = await get_state(request)
            require_operator(state, request.headers.get("authorization"))
            require_json(request.headers.get("content-type"))
            check_json(await request.body(), state.settings.max_json_depth)  # the body guard has read it (capped)
            return await parse_and_run(request)

        return handler


router = APIRouter()
operator = APIRouter(route_class=TokenFirst)  # PUT /budget; included in ``router`` below


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
    assert state.control is not None
    budget = state.control.current()
    # a fleet whose broadcast failed (no replica answered) lists this replica alone
    replicas = (state.peers.budgets() if state.peers is not None else []) or [state.own_budget()]
    return budget_body(budget, budget.levels.default, state.replica, replicas)


def require_json(content_type: str | None) -> None:
    """A JSON body, said so by its Content-Type; checked after the token, before the body is parsed."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        got = f"Content-Type {kind!r}" if kind else "no Content-Type"
        raise NotJson(
            f"PUT /budget takes a JSON body, got {got}: send `Content-Type: application/json`, "
            """e.g. curl -X PUT -H 'Content-Type: application/json' -d '{"level": "low"}' ..."""
        )


@operator.put("/budget", response_model=BudgetResponse, responses=error_responses(401, 403, 409, 415, 422))
def put_budget(state: StateDep, update: Annotated[BudgetUpdate, Body()]) -> BudgetResponse:
    """Switch the budget by level name, by a GMACs/video target, with explicit thresholds, or to the automatic
    budget (`mode: auto`, with an optional `p99_s` objective and `min_level` floor); needs the operator token.
    With a budget file it is written there (409 when read-only); in a fleet every replica applies it."""
    assert state.budget is not None
    budget = state.budget.put(update)
    return budget_body(budget, budget.levels.default, state.replica)


router.include_router(operator)
