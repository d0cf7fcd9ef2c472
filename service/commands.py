"""The ``serve`` subcommand: ``adafocus serve [--host H] [--port P] [--bundle PATH]`` (uvicorn), and the client:
``adafocus classify FILE... [--url URL] [--budget L] [--explain] [--sampling S] [--json] [--concurrency N]
[--decode local]``
(service/client.py).

Settings come from ``ADAFOCUS_*`` environment variables (service/settings.py); the flags override them.
SIGTERM (or Ctrl-C) drains: ``/readyz`` turns 503 and new requests get 503 at once, in-flight requests finish
(at most ``ADAFOCUS_DRAIN_TIMEOUT_S``; those still running then are answered 503 ``draining``), then the engine
stops and the process exits 0. A second signal skips the wait for in-flight requests. Connections are guarded by
service/http/connection_guard.py (header deadline, connection cap), request bodies by service/http/body_guard.py.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

log = logging.getLogger(__name__)
ABORT_GRACE_S = 5.0  # after the drain timeout, how long the aborted requests get to send their 503


def register(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the HTTP server (settings: ADAFOCUS_* environment variables)")
    serve.add_argument("--host", default=None, help="address to bind (ADAFOCUS_HOST, default 0.0.0.0)")
    serve.add_argument("--port", type=int, default=None, help="TCP port (ADAFOCUS_PORT, default 8000)")
    serve.add_argument("--bundle", default=None, help="model bundle directory (ADAFOCUS_BUNDLE; default: shipped)")
    serve.set_defaults(handler=run_serve)

    classify = sub.add_parser("classify", help="classify video files with a running server (progress bar, JSON)")
    classify.add_argument("files", nargs="+", metavar="FILE", help="video files (any container FFmpeg reads)")
    classify.add_argument("--url", default="http://127.0.0.1:8000", help="server URL (default %(default)s)")
    classify.add_argument("--budget", default=None, help="budget level for these requests (default: the active one)")
    classify.add_argument("--explain", action="store_true", help="also list the cubes the policy chose")
    classify.add_argument("--sampling", choices=("exact", "fast"), default=None,
                          help="decode sampling for these requests (default: the server's ADAFOCUS_DECODE_SAMPLING)")
    classify.add_argument("--json", action="store_true", help="one JSON object per file (JSON Lines) on stdout")
    classify.add_argument("--concurrency", type=int, default=4, help="requests in flight (default %(default)s)")
    classify.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default %(default)s)")
    classify.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    classify.add_argument(
        "--decode", choices=("server", "local"), default="server",
        help="where videos are decoded: by the server (an upload to /classify), or here on this machine's cores "
        "(the project's decoder, frames sent to /v2/models/{name}/infer); default %(default)s",
    )
    classify.add_argument("--segment-s", type=float, default=None,
                          help="cut each video into segments of this many seconds: a timeline (one line per segment)")
    classify.add_argument("--stride-s", type=float, default=None, help="seconds between segment starts (--segment-s)")
    key = classify.add_mutually_exclusive_group()
    key.add_argument("--api-key", default=None, help="API key for a server with ADAFOCUS_API_KEYS_FILE (sent as "
                     "X-API-Key; visible in the process list: prefer --api-key-file)")
    key.add_argument("--api-key-file", type=Path, default=None, help="file holding the API key (one line)")
    classify.set_defaults(handler=run_classify)


def run_serve(args: argparse.Namespace) -> int:
    from service.app import create_app
    from service.http.body_guard import BodyLimits
    from service.http.connection_guard import ConnectionLimits, guarded_protocol
    from service.logs import configure_logging
    from service.startup import StartupError, listen_socket, load_settings

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("bundle", args.bundle)) if v is not None}
    try:  # both before the model loads: a typo or a busy port is reported at once
        settings = load_settings(overrides)
        sock = listen_socket(settings.host, settings.port, overrides)
    except StartupError as exc:
        log.error("%s", exc)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    log.info("listening on %s:%d", *sock.getsockname()[:2])
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # the CLI configured logging
        timeout_graceful_shutdown=int(max(1.0, settings.drain_timeout_s)),
        lifespan="on",
        access_log=False,  # service/logs.py writes the access log, with the request ID
        http=guarded_protocol(ConnectionLimits.of(settings), BodyLimits.of(settings), app.state.service),
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]  # uvicorn annotates int; call_later takes float
    )
    server = DrainingServer(config, app.state.service, settings.drain_timeout_s)
    server.run(sockets=[sock])
    return 0 if server.started else 1


def run_classify(args: argparse.Namespace) -> int:
    """Exit 0 when every file was classified, 1 when any was refused or failed."""
    import asyncio
    import sys

    from service.client import AsyncClient, classify_files, read_api_key
    from service.client_output import write_outcomes

    try:
        api_key = read_api_key(args.api_key_file) if args.api_key_file is not None else args.api_key
    except ValueError as exc:
        log.error("%s", exc)
        return 2

    if args.decode == "local" and timeline_fields(args):
        log.error("--segment-s / --stride-s need --decode server: the server's decoder cuts the timeline by the "
                  "video's presentation times (local decoding sends frames, which have none)")
        return 2

    async def run() -> int:
        async with AsyncClient(args.url, timeout=args.timeout, api_key=api_key) as client:
            paths = [Path(f) for f in args.files]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                log.error("no such file: %s", ", ".join(missing))
                return 2
            outcomes = await classify_files(
                client, paths, budget=args.budget, explain=args.explain, concurrency=args.concurrency,
                progress=not args.no_progress and len(paths) > 1, sampling=args.sampling, decode=args.decode,
                fields=timeline_fields(args),
            )
        write_outcomes(outcomes, args.json, sys.stdout)
        return 0 if all(o.answer is not None for o in outcomes) else 1

    return asyncio.run(run())


def timeline_fields(args: argparse.Namespace) -> dict[str, str]:
    """The form fields of ``--segment-s`` / ``--stride-s`` (none without them)."""
    fields = {} if args.segment_s is None else {"segment_s": repr(args.segment_s)}
    if args.stride_s is not None:
        fields["stride_s"] = repr(args.stride_s)
    return fields


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT drains before it stops listening."""

    def __init__(self, config: Any, service: Any, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.service = service
        self.drain_timeout_s = drain_timeout_s
        self.drain_deadline: float | None = None
        self.aborted_at: float | None = None  # when the requests still in flight at the drain deadline were answered

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_deadline is None and not self.should_exit:
            self.drain_deadline = time.monotonic() + self.drain_timeout_s
            self.service.begin_drain()  # readiness fails now; the socket stays open so probes can see it
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and not self.should_exit:
            now, inflight = time.monotonic(), self.service.inflight
            if inflight and now > self.drain_deadline and self.aborted_at is None:
                # uvicorn would cancel them with a plain-text 500: answer them 503 `draining` (JSON) first
                self.aborted_at = now
                log.warning("drain timeout: answering %d request(s) 503 draining", self.service.abort_inflight())
            elif inflight == 0 or (self.aborted_at is not None and now > self.aborted_at + ABORT_GRACE_S):
                log.info("drained (%d request(s) still in flight); shutting down", inflight)
                self.should_exit = True
        result: bool = await super().on_tick(counter)
        return result
