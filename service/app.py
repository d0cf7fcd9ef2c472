"""The FastAPI application: ``create_app(settings)`` and its lifespan, nothing else.

Where a request goes, in order: service/routes.py (HTTP) -> service/pipeline.py (the per-request flow) ->
service/upload.py (multipart body) -> service/decode.py (decoder processes) -> service/engine/ (scheduler, step,
runner) -> the answer (service/schemas.py); service/errors.py maps every failure. service/lifecycle.py builds and
tears down what the routes use.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from service.bodies import BodyGuard, BodyLimits
from service.errors import install_handlers
from service.lifecycle import ServiceState
from service.logs import RequestIdMiddleware
from service.oip import router as oip_router
from service.routes import router
from service.settings import Settings
from service.web import install_web


def create_app(settings: Settings | None = None, clock: Callable[[], float] = time.monotonic) -> FastAPI:
    """The application; the model loads in its lifespan, not here. ``clock`` (seconds, monotonic) times the
    request deadlines, in the routes and in the engine alike; tests inject one to pass a deadline at will."""
    state = ServiceState(settings or Settings(), clock=clock)

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
    )
    app.state.service = state
    install_handlers(app, state.settings.retry_after_s)
    app.include_router(router)
    app.include_router(oip_router)
    install_web(app)
    app.add_middleware(BodyGuard, limits=BodyLimits.of(state.settings))  # small bodies capped before routes and auth
    app.add_middleware(RequestIdMiddleware, clock=clock)  # outermost of ours: every response has an X-Request-ID
    return app
