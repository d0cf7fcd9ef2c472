"""A small Python client of the server, sync (``Client``) and async (``AsyncClient``), over httpx.

    from service.client import Client
    with Client("http://127.0.0.1:8000") as server:
        answer = server.classify("clip.mp4", budget="low", explain=True)
        print(answer["label"], answer["confidence"], answer["request_id"])

Answers are the server's JSON bodies (dicts; see /docs). A refusal raises ``ServerError`` with the status, the
stable ``code``, the message, the request ID and Retry-After; ``post_classify`` returns the raw response instead
(the load generator counts every status). ``classify_files`` classifies many files concurrently with a progress
bar (``adafocus classify``). ``decode="local"`` decodes on the client's cores with the project's decoder (the
server's sampling and limits) and sends the model-sized frames through ``POST /v2/models/{name}/infer`` as binary
tensors (service/http/oip_tensors.py); every answer says where decoding ran (``decoded_on``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
from tqdm import tqdm

from model.video import DecodeError, DecodeLimits, sample_clip
from service.http import oip_tensors as wire

DEFAULT_URL = "http://127.0.0.1:8000"
Video = str | Path | tuple[str, bytes] | tuple[str, bytes, str]  # a path, or (file name, bytes[, MIME type])
Decode = Literal["server", "local"]  # where a video is decoded: by the server (/classify), or here (frames over OIP)


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


def classify_form(budget: str | None, explain: bool, frames: bool, sampling: str | None = None) -> dict[str, str]:
    form = {"budget": budget} if budget else {}
    if sampling:
        form["sampling"] = sampling
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
        str(error.get("message", error.get("error", response.reason_phrase or response.text[:200]))),
        error.get("request_id") or response.headers.get("x-request-id"),
        float(retry) if retry and retry.replace(".", "", 1).isdigit() else None,
    )


def classify_request(
    video: Video, budget: str | None, explain: bool, frames: bool, request_id: str | None, sampling: str | None = None,
    fields: Mapping[str, str] | None = None, api_key: str | None = None,
) -> dict[str, Any]:
    """The keyword arguments of httpx's ``post`` for one /classify request (``fields``: more form fields, e.g.
    ``{"segment_s": "2"}`` for a timeline)."""
    return {
        "files": {"video": video_part(video)},
        "data": {**classify_form(budget, explain, frames, sampling), **(fields or {})},
        "headers": _headers(None, request_id, api_key),
    }


def _headers(token: str | None, request_id: str | None, api_key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if api_key:  # its own header: `Authorization` may carry the operator token on the same client
        headers["X-API-Key"] = api_key
    if request_id:
        headers["X-Request-ID"] = request_id
    return headers


@dataclass(frozen=True)
class Geometry:
    """What local decoding needs of the served model (``GET /v2/models/{name}``)."""

    name: str
    num_frames: int
    frame_size: int


def geometry(model: dict[str, Any]) -> Geometry:
    return Geometry(model["name"], model["num_frames"], model["frame_size"])


def check_local(fields: Mapping[str, str] | None) -> None:
    """Local decoding sends frames, which carry no presentation times and take no form fields: a timeline
    (``segment_s``) is cut by the server's decoder (``ValueError``, rather than a single clip's answer)."""
    if fields:
        raise ValueError(f"decode='local' sends decoded frames and takes no form fields (got {sorted(fields)}); a "
                         "timeline (segment_s) is cut by the server's decoder: use decode='server'")


def local_frames(video: Video, model: Geometry, sampling: Literal["exact", "fast"]) -> tuple[np.ndarray, float]:
    """The video decoded here as the server's decoder would: ((T, size, size, 3) uint8, seconds)."""
    source: str | bytes = video[1] if isinstance(video, tuple) else str(video)
    started = time.monotonic()
    clip = sample_clip(source, model.num_frames, model.frame_size, DecodeLimits(sampling=sampling))
    return clip.frames, time.monotonic() - started


def frames_request(
    frames: np.ndarray, budget: str | None, explain: bool, request_id: str | None, api_key: str | None = None
) -> dict[str, Any]:
    """httpx ``post`` keyword arguments: one clip's frames (1, T, H, W, 3) as a binary OIP inference request."""
    parameters: dict[str, Any] = {"explain": explain} | ({"budget": budget} if budget else {})
    content, header = wire.encode_request([wire.Output("frames", "UINT8", frames[None])], parameters)
    binary = {wire.HEADER_LENGTH: str(header), "Content-Type": "application/octet-stream"}
    headers = _headers(None, request_id, api_key) | binary
    return {"content": content, "headers": headers}


def frames_answer(response: httpx.Response, decode_s: float) -> dict[str, Any]:
    """A /classify-shaped answer of one clip's OIP answer (``ServerError`` for a refusal)."""
    if not response.is_success:
        body(response)
    head, out = wire.decode_response(response.content, response.headers.get(wire.HEADER_LENGTH))
    probabilities = out["probabilities"][0].astype(float)  # (C,)
    class_id = int(out["class_id"][0])
    top = np.argsort(-probabilities)[:5]
    p = head.get("parameters", {})
    answer: dict[str, Any] = {
        "request_id": p.get("request_id"), "label": out["label"][0].decode(), "class_id": class_id,
        "confidence": float(probabilities[class_id]),
        "top_k": [{"class_id": int(i), "probability": float(probabilities[i])} for i in top],
        "exit_step": int(out["exit_step"][0]), "gmacs": float(out["gmacs"][0]), "budget": p.get("budget"),
        "budget_version": p.get("budget_version"), "decoded_on": p.get("decoded_on"), "decode_s": decode_s,
    }
    if "cubes" in out:
        answer["cubes"] = [dict(zip(("t", "y", "x", "frames", "size"), map(int, c[:5]), strict=True))
                           | {"skipped": bool(c[5])} for c in out["cubes"][0] if c[0] >= 0]
    return answer


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
        self._geometry: Geometry | None = None  # the served model's, fetched at the first local decode

    def post_classify(
        self,
        video: Video,
        *,
        budget: str | None = None,
        explain: bool = False,
        frames: bool = False,
        request_id: str | None = None,
        sampling: str | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        request = classify_request(video, budget, explain, frames, request_id, sampling, fields, self.api_key)
        return self.http.post("/classify", **request)

    def classify(
        self,
        video: Video,
        *,
        budget: str | None = None,
        explain: bool = False,
        frames: bool = False,
        request_id: str | None = None,
        sampling: str | None = None,
        decode: Decode = "server",
        fields: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Classify one video; ``budget`` a level name for this request, ``explain`` the cubes and steps,
        ``sampling`` `exact` or `fast` (None: the server's); ``decode="local"``: decoded here (with ``sampling``,
        `exact` when None), sent as frames; ``fields={"segment_s": "2"}``: a timeline of 2 s segments (the
        server's decode only: ``ValueError`` with ``decode="local"``)."""
        if decode == "local":
            check_local(fields)
            model = self._model_geometry()
            clip, seconds = local_frames(video, model, "fast" if sampling == "fast" else "exact")
            post = frames_request(clip, budget, explain, request_id, self.api_key)
            return frames_answer(self.http.post(f"/v2/models/{model.name}/infer", **post), seconds)
        result: dict[str, Any] = body(self.post_classify(
            video, budget=budget, explain=explain, frames=frames, request_id=request_id, sampling=sampling,
            fields=fields,
        ))
        result.setdefault("decoded_on", "server")
        return result

    def _model_geometry(self) -> Geometry:
        if self._geometry is None:
            self._geometry = geometry(self.model())
        return self._geometry

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
        self._geometry: Geometry | None = None

    async def post_classify(
        self,
        video: Video,
        *,
        budget: str | None = None,
        explain: bool = False,
        frames: bool = False,
        request_id: str | None = None,
        sampling: str | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        request = classify_request(video, budget, explain, frames, request_id, sampling, fields, self.api_key)
        return await self.http.post("/classify", **request)

    async def classify(
        self,
        video: Video,
        *,
        budget: str | None = None,
        explain: bool = False,
        frames: bool = False,
        request_id: str | None = None,
        sampling: str | None = None,
        decode: Decode = "server",
        fields: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        if decode == "local":  # the decoder releases the GIL: concurrent requests decode on several cores
            check_local(fields)
            if self._geometry is None:
                self._geometry = geometry(await self.model())
            model = self._geometry
            local: Literal["exact", "fast"] = "fast" if sampling == "fast" else "exact"
            clip, seconds = await asyncio.to_thread(local_frames, video, model, local)
            post = frames_request(clip, budget, explain, request_id, self.api_key)
            return frames_answer(await self.http.post(f"/v2/models/{model.name}/infer", **post), seconds)
        response = await self.post_classify(
            video, budget=budget, explain=explain, frames=frames, request_id=request_id, sampling=sampling,
            fields=fields,
        )
        result: dict[str, Any] = body(response)
        result.setdefault("decoded_on", "server")
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
    error: ServerError | DecodeError | str | None = None  # DecodeError: refused by the local decoder


async def classify_files(
    client: AsyncClient,
    paths: Sequence[Path],
    *,
    budget: str | None = None,
    explain: bool = False,
    concurrency: int = 4,
    progress: bool = True,
    sampling: str | None = None,
    decode: Decode = "server",
    fields: Mapping[str, str] | None = None,
) -> list[Outcome]:
    """Classify ``paths`` with at most ``concurrency`` requests in flight (``decode="local"``: each decoded here
    first); results in the order of ``paths``."""
    outcomes = [Outcome(path) for path in paths]
    queue: asyncio.Queue[Outcome] = asyncio.Queue()
    for outcome in outcomes:
        queue.put_nowait(outcome)
    bar = tqdm(total=len(paths), unit="video", disable=not progress, file=sys.stderr)

    async def worker() -> None:
        while not queue.empty():
            outcome = queue.get_nowait()
            try:
                outcome.answer = await client.classify(
                    outcome.path, budget=budget, explain=explain, sampling=sampling, decode=decode, fields=fields
                )
            except ServerError as exc:
                outcome.error = exc
            except DecodeError as exc:  # decoding here (``decode="local"``) refused the file: never sent
                outcome.error = exc
            except (httpx.HTTPError, OSError) as exc:
                outcome.error = f"{type(exc).__name__}: {exc}"
            bar.update(1)

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    finally:
        bar.close()
    return outcomes


