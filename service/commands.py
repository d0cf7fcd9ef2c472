"""The ``serve`` subcommand: ``adafocus serve [--host H] [--port P] [--bundle PATH]`` (uvicorn).

Settings come from ``ADAFOCUS_*`` environment variables (service/settings.py); the flags override them.
SIGTERM (or Ctrl-C) drains: ``/readyz`` turns 503 and new requests get 503 at once, in-flight requests finish
(at most ``ADAFOCUS_DRAIN_TIMEOUT_S``), then the engine stops and the process exits 0. A second signal skips the
wait for in-flight requests.
"""

from __future__ import annotations

import argparse
import logging
import time
from types import FrameType
from typing import Any

import uvicorn

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the HTTP server (settings: ADAFOCUS_* environment variables)")
    serve.add_argument("--host", default=None, help="address to bind (ADAFOCUS_HOST, default 0.0.0.0)")
    serve.add_argument("--port", type=int, default=None, help="TCP port (ADAFOCUS_PORT, default 8000)")
    serve.add_argument("--bundle", default=None, help="model bundle directory (ADAFOCUS_BUNDLE; default: shipped)")
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from service.app import create_app
    from service.settings import Settings

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("bundle", args.bundle)) if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        log.error("invalid settings:\n%s", exc)
        return 2
    logging.getLogger().setLevel(settings.log_level)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # the CLI configured logging
        timeout_graceful_shutdown=int(max(1.0, settings.drain_timeout_s)),
        lifespan="on",
    )
    server = DrainingServer(config, app.state.service, settings.drain_timeout_s)
    server.run()
    return 0 if server.started else 1


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT drains before it stops listening."""

    def __init__(self, config: Any, service: Any, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.service = service
        self.drain_timeout_s = drain_timeout_s
        self.drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_deadline is None and not self.should_exit:
            self.drain_deadline = time.monotonic() + self.drain_timeout_s
            self.service.begin_drain()  # readiness fails now; the socket stays open so probes can see it
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and not self.should_exit:
            idle = self.service.inflight == 0
            if idle or time.monotonic() > self.drain_deadline:
                log.info("drained (%d request(s) still in flight); shutting down", self.service.inflight)
                self.should_exit = True
        result: bool = await super().on_tick(counter)
        return result
