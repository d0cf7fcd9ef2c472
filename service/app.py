"""The FastAPI application: ``create_app(settings)``, its lifespan and its middleware, nothing else.

Where a POST /classify goes, in order: uvicorn's protocol with the connection guard (service/http/connection_guard.py:
header deadline, connection cap; installed by ``adafocus serve``) -> ``ReplicaHeader`` (here) -> the request ID and
access log (service/logs.py) -> the body guard (service/http/body_guard.py) -> the route (service/http/routes.py) ->
the classify flow (service/classify/: the upload spooled by upload.py, decoded by the worker processes of
service/decode/, classified step by step by the engine in service/engine/, progress streamed as Server-Sent Events)
-> the answer (service/schemas.py). service/http/errors.py maps every failure to its status; service/lifecycle.py
builds and tears down what the routes use.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.budget.store import BudgetStore
from service.classify.result_cache import ResultCache
from service.decode.pool import FrameDecoder
from service.engine.runners.torch_runner import Runner
from service.http.body_guard import BodyGuard, BodyLimits, routed_by
from service.http.budget_routes import router as budget_router
from service.http.errors import install_handlers, to_api_error
from service.http.oip_infer import router as oip_infer_router
from service.http.open_inference import router as oip_router
from service.http.routes import router
from service.http.web import install_web
from service.lifecycle import Peers, ServiceState
from service.logs import RequestIdMiddleware
from service.metrics import Metrics
from service.settings import Settings


def create_app(
    settings: Settings | None = None,
    clock: Callable[[], float] = time.monotonic,
    budget: BudgetStore | None = None,
    peers: Peers | None = None,
    replica: str = "",
    wrap_runner: Callable[[Runner], Runner] | None = None,
    decoders: Callable[[Settings, Metrics], FrameDecoder] | None = None,
) -> FastAPI:
    """The application; the model loads in its lifespan, not here. ``clock`` (seconds, monotonic) times the
    request deadlines, in the routes and in the engine alike; tests inject one to pass a deadline at will.
    ``budget``, ``peers``, ``replica``, ``wrap_runner``, ``decoders`` (a decode tier): a fleet replica's
    (fleet/replica.py); by default a single server's."""
    state = ServiceState(
        settings or Settings(), clock=clock, budget=budget, peers=peers, replica=replica, wrap_runner=wrap_runner,
        decoders=decoders, describe_error=describe_error,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(state.start)
        try:
            yield
        finally:
            await asyncio.to_thread(state.stop)

    # /docs (Swagger UI) from assets shipped in a package, not a CDN, so it works offline; no ReDoc (its bundle
    # still fetches a logo from its CDN)
    app = FastAPIOffline(
        redoc_url=None,
        title="AdaFocusV3 video classification",
        version="0.1.0",
        description="Early-exit video recognition with continuous batching. Errors are JSON `{code, message}`.",
        lifespan=lifespan,
        redirect_slashes=False,  # `POST /classify/` is not found, not redirected (a redirect drops the body)
    )
    app.state.service = state
    app.state.results = ResultCache(  # the classify flow's (service/classify/result_cache.py); metrics once started
        state.settings.result_cache_entries, lambda hit: state.metrics.on_result_cache(hit) if state.metrics else None
    )
    install_handlers(app, state.settings.retry_after_s)
    app.include_router(router)
    app.include_router(budget_router)
    app.include_router(oip_router)
    app.include_router(oip_infer_router)
    install_web(app)
    # small bodies capped before routes and auth; a request with no route is answered without its body read first
    app.add_middleware(BodyGuard, limits=BodyLimits.of(state.settings), routed=routed_by(app.router))
    app.add_middleware(RequestIdMiddleware, clock=clock)  # every response has an X-Request-ID
    app.add_middleware(ReplicaHeader, state=state)  # outermost: every response names the replica (fleet or not)
    return app


def describe_error(exc: BaseException) -> tuple[int, str]:
    """A request error's HTTP status and stable code, for its trace (service/tracing/)."""
    error = to_api_error(exc, 0)
    return error.status, error.code


class ReplicaHeader:
    """Adds ``X-Replica: <the server's name>`` to every response (pure ASGI: streams pass through untouched)."""

    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start" and self.state.replica:
                MutableHeaders(scope=message).append("X-Replica", self.state.replica)
            await send(message)

        await self.app(scope, receive, named)
