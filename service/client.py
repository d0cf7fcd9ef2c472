"""A small Python client of the server, sync (``Client``) and async (``AsyncClient``), over httpx.

    from service.client import Client
    with Client("http://127.0.0.1:8000") as server:
        answer = server.classify("clip.mp4", budget="low", explain=True)
        print(answer["label"], answer["confidence"], answer["request_id"])

Answers are the server's JSON bodies (dicts; see /docs). A refusal raises ``ServerError`` with the status, the
stable ``code``, the message, the request ID and Retry-After; ``post_classify`` returns the raw response instead
(the load generator counts every status). ``classify_files`` classifies many files concurrently with a progress
bar (``adafocus classify``).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
from tqdm import tqdm

DEFAULT_URL = "http://127.0.0.1:8000"
Video = str | Path | tuple[str, bytes] | tuple[str, bytes, str]  # a path, or (file name, bytes[, MIME type])


class ServerError(Exception):
    """The server refused a request: its JSON error body, with the status and the request ID."""

    def __init__(
        self, status: int, code: str, message: str, request_id: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" (request {request_id})" if request_id else ""))
        self.status, self.code, self.message = status, code, message
        self.request_id, self.retry_after = request_id, retry_after


def video_part(video: Video) -> tuple[str, bytes] | tuple[str, bytes, str]:
    """The multipart ``video`` part of a path or of (file name, bytes[, MIME type])."""
    if isinstance(video, tuple):
        return video
    path = Path(video)
    return (path.name, path.read_bytes())


def classify_form(budget: str | None, explain: bool, frames: bool) -> dict[str, str]:
    form = {"budget": budget} if budget else {}
    if explain:
        form["explain"] = "true"
    if frames:
        form["frames"] = "true"
    return form


def budget_update(level: str | None, gmacs: float | None, thresholds: Sequence[float] | None) -> dict[str, Any]:
    update: dict[str, Any] = {}
    if level is not None:
        update["level"] = level
    if gmacs is not None:
        update["gmacs"] = gmacs
    if thresholds is not None:
        update["thresholds"] = list(thresholds)
    if len(update) != 1:
        raise ValueError("give exactly one of level, gmacs, thresholds")
    return update


def body(response: httpx.Response) -> Any:
    """The JSON body of a success, or ``ServerError`` from the error body (or the bare status)."""
    if response.is_success:
        return response.json()
    try:
        error = response.json()
    except ValueError:
        error = {}
    if not isinstance(error, dict):
        error = {}
    retry = response.headers.get("retry-after")
    raise ServerError(
        response.status_code,
        str(error.get("code", "http_error")),
        str(error.get("message", response.reason_phrase or response.text[:200])),
        error.get("request_id") or response.headers.get("x-request-id"),
        float(retry) if retry and retry.replace(".", "", 1).isdigit() else None,
    )


def classify_request(
    video: Video, budget: str | None, explain: bool, frames: bool, request_id: str | None, api_key: str | None = None
) -> dict[str, Any]:
    """The keyword arguments of httpx's ``post`` for one /classify request."""
    return {
        "files": {"video": video_part(video)},
        "data": classify_form(budget, explain, frames),
        "headers": _headers(None, request_id, api_key),
    }


def _headers(token: str | None, request_id: str | None, api_key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if api_key:  # its own header: `Authorization` may carry the operator token on the same client
        headers["X-API-Key"] = api_key
    if request_id:
        headers["X-Request-ID"] = request_id
    return headers


def read_api_key(path: Path) -> str:
    """The API key held in a file (its one line; kept out of shell history and the process list); ``ValueError``."""
    try:
        key = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"the API key file {path} cannot be read: {exc}") from exc
    if not key or any(c.isspace() for c in key):
        raise ValueError(f"the API key file {path} must hold one key on one line")
    return key


class Client:
    """Blocking client; ``http`` may be any httpx.Client whose base URL is the server (a TestClient too)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.http = http or httpx.Client(base_url=url, timeout=timeout)
        self.token = token  # the operator token, for PUT /budget
        self.api_key = api_key  # sent with /classify as `X-API-Key` (the server's ADAFOCUS_API_KEYS_FILE)
        self._owned = http is None

    def post_classify(
        self,
        video: Video,
        *,
        budget: str | None = None,
        explain: bool = False,
        frames: bool = False,
        request_id: str | None = None,
    ) -> httpx.Response:
        request = classify_request(video, budget, explain, frames, request_id, self.api_key)
        return self.http.post("/classify", **request)

    def classify(
        self,
        video: Video,
        *,
        budget: str | None = None,
        explain: bool = False,
        frames: bool = False,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """Classify one video; ``budget`` a level name for this request, ``explain`` the cubes and steps."""
        result: dict[str, Any] = body(
            self.post_classify(video, budget=budget, explain=explain, frames=frames, request_id=request_id)
        )
        return result

    def budget(self) -> dict[str, Any]:
        """The active threshold set and every level (``GET /budget``)."""
        result: dict[str, Any] = body(self.http.get("/budget"))
        return result

    def set_budget(
        self, level: str | None = None, *, gmacs: float | None = None, thresholds: Sequence[float] | None = None
    ) -> dict[str, Any]:
        """Switch the budget for every later request (``PUT /budget``, needs the operator token)."""
        response = self.http.put(
            "/budget", json=budget_update(level, gmacs, thresholds), headers=_headers(self.token, None)
        )
        result: dict[str, Any] = body(response)
        return result

    def model(self) -> dict[str, Any]:
        """The served model's metadata (``GET /v2/models/{name}``)."""
        name = body(self.http.get("/v2"))["models"][0]
        result: dict[str, Any] = body(self.http.get(f"/v2/models/{name}"))
        return result

    def ready(self) -> bool:
        return self.http.get("/v2/health/ready").status_code == 200

    def close(self) -> None:
        if self._owned:
            self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncClient:
    """The same, for asyncio; ``http`` may be any httpx.AsyncClient whose base URL is the server."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.http = http or httpx.AsyncClient(base_url=url, timeout=timeout)
        self.token = token
        self.api_key = api_key
        self._owned = http is None

    async def post_classify(
        self,
        video: Video,
        *,
        budget: str | None = None,
        explain: bool = False,
        frames: bool = False,
        request_id: str | None = None,
    ) -> httpx.Response:
        request = classify_request(video, budget, explain, frames, request_id, self.api_key)
        return await self.http.post("/classify", **request)

    async def classify(
        self,
        video: Video,
        *,
        budget: str | None = None,
        explain: bool = False,
        frames: bool = False,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        response = await self.post_classify(video, budget=budget, explain=explain, frames=frames, request_id=request_id)
        result: dict[str, Any] = body(response)
        return result

    async def budget(self) -> dict[str, Any]:
        result: dict[str, Any] = body(await self.http.get("/budget"))
        return result

    async def set_budget(
        self, level: str | None = None, *, gmacs: float | None = None, thresholds: Sequence[float] | None = None
    ) -> dict[str, Any]:
        response = await self.http.put(
            "/budget", json=budget_update(level, gmacs, thresholds), headers=_headers(self.token, None)
        )
        result: dict[str, Any] = body(response)
        return result

    async def model(self) -> dict[str, Any]:
        name = body(await self.http.get("/v2"))["models"][0]
        result: dict[str, Any] = body(await self.http.get(f"/v2/models/{name}"))
        return result

    async def ready(self) -> bool:
        return (await self.http.get("/v2/health/ready")).status_code == 200

    async def aclose(self) -> None:
        if self._owned:
            await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


# ------------------------------------------------------------------------------------------------ many files
@dataclass
class Outcome:
    path: Path
    answer: dict[str, Any] | None = None
    error: ServerError | str | None = None


def describe(outcome: Outcome) -> str:
    """One line per file: label, confidence, exit, compute, budget (or the error)."""
    if outcome.answer is None:
        return f"{outcome.path}: error {outcome.error}"
    a = outcome.answer
    line = (
        f"{outcome.path}: {a['label']} {100 * a['confidence']:.1f}%  exit {a['exit_step']} ({a['exit_reason']})  "
        f"{a['gmacs']:.4f} GMACs  budget {a['budget']}  {1e3 * a['timings']['total']:.0f} ms  [{a['request_id']}]"
    )
    for cube in a.get("cubes") or []:
        line += f"\n    cube t={cube['t']} y={cube['y']} x={cube['x']} size={cube['size']} frames={cube['frames']}" + (
            " (skipped)" if cube["skipped"] else ""
        )
    return line


async def classify_files(
    client: AsyncClient,
    paths: Sequence[Path],
    *,
    budget: str | None = None,
    explain: bool = False,
    concurrency: int = 4,
    progress: bool = True,
) -> list[Outcome]:
    """Classify ``paths`` with at most ``concurrency`` requests in flight; results in the order of ``paths``."""
    outcomes = [Outcome(path) for path in paths]
    queue: asyncio.Queue[Outcome] = asyncio.Queue()
    for outcome in outcomes:
        queue.put_nowait(outcome)
    bar = tqdm(total=len(paths), unit="video", disable=not progress, file=sys.stderr)

    async def worker() -> None:
        while not queue.empty():
            outcome = queue.get_nowait()
            try:
                outcome.answer = await client.classify(outcome.path, budget=budget, explain=explain)
            except ServerError as exc:
                outcome.error = exc
            except (httpx.HTTPError, OSError) as exc:
                outcome.error = f"{type(exc).__name__}: {exc}"
            bar.update(1)

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    finally:
        bar.close()
    return outcomes


def write_outcomes(outcomes: Sequence[Outcome], as_json: bool, out: TextIO) -> None:
    """Print the answers: one line each (or indented cubes), or one JSON object per file (JSON Lines)."""
    for outcome in outcomes:
        if as_json:
            error = outcome.error
            record: dict[str, Any] = {"file": str(outcome.path)}
            if outcome.answer is not None:
                record.update(outcome.answer)
            elif isinstance(error, ServerError):
                record["error"] = {
                    "status": error.status,
                    "code": error.code,
                    "message": error.message,
                    "request_id": error.request_id,
                }
            else:
                record["error"] = {"status": None, "code": "connection", "message": str(error)}
            out.write(json.dumps(record) + "\n")
        else:
            out.write(describe(outcome) + "\n")
