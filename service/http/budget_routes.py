"""The budget routes: ``GET /budget`` (the active threshold set and every level) and ``PUT /budget`` (operator token,
JSON body), thin wrappers over the service's budget control (``service.budget.control``) and store."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header

from service.classify.upload import NotJson
from service.engine.types import BudgetState
from service.http.errors import error_responses
from service.http.routes import StateDep, require_operator
from service.schemas import BudgetResponse, BudgetUpdate, ReplicaBudget, level_bodies

router = APIRouter()


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
