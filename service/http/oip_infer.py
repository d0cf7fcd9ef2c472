"""``POST /v2/models/{name}/infer``: Open Inference Protocol inference, JSON or binary tensors (tritonclient's way).

Inputs: ``video`` (BYTES ``[N]``, one encoded file per element; decoded by the server's worker processes as a
/classify upload) or ``frames`` (UINT8 ``[N, T, H, W, 3]`` or ``[T, H, W, 3]``, decoded elsewhere; sampled and
resized by the server as its decoder would). Request parameters: ``budget``, ``deadline_ms`` (Triton's ``timeout``
in microseconds too), ``explain``, ``sampling``, and ``segment_s`` / ``stride_s``: one file's timeline (its inputs,
outputs and limits in service/http/oip_timeline.py). Outputs (``OUTPUTS``): ``label``, ``class_id``,
``probabilities`` ``[N, C]``, ``exit_step``, ``gmacs`` and, with ``explain``, ``cubes`` ``[N, K, 6]``. Every
/classify limit applies (body bytes, pixels, frames, queue, deadline, draining, API keys); errors are the
protocol's ``{"error": ...}`` with the error table's status, the stable code both at the start of the message and
as ``code`` (``oip_error``). The wire format is service/http/oip_tensors.py, the clips' flow
service/classify/frames.py.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from starlette.requests import ClientDisconnect

from service.classify.flow import ClientGone, request_deadline
from service.classify.frames import ClipAnswer, Clips, ClipsFlow, check_count, check_frames_shape
from service.classify.tensor_errors import TensorError
from service.classify.upload import FALSE_WORDS, TRUE_WORDS, BadUpload, Sampling, parse_sampling
from service.engine.errors import DeadlineExceeded
from service.http import oip_tensors as wire
from service.http.errors import ApiError, error_responses, rule_for, to_api_error
from service.http.oip_timeline import (
    TIMELINE_OUTPUTS,
    TIMELINE_PARAMETERS,
    timeline_outputs,
    timeline_parameters,
    timeline_spec,
    wants_timeline,
)
from service.http.open_inference import CUBE_FIELDS, ModelNotFound, StateDep, served_name
from service.http.routes import BEARER, X_API_KEY, require_api_key
from service.lifecycle import ServiceState
from service.logs import current_request_id
from service.schemas import ClassifyResponse, TimelineResponse

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v2", tags=["Open Inference Protocol"])

MAX_JSON_BYTES = 4 * 1024 * 1024  # the JSON part of an inference body (JSON tensor data included); binary for more
OUTPUTS = ("label", "class_id", "probabilities", "exit_step", "gmacs", "cubes")
# parameters tritonclient and Triton reserve: accepted and ignored (``timeout`` is honoured as a deadline)
RESERVED = frozenset({"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "headers"})
PARAMETERS = frozenset({"budget", "deadline_ms", "explain", "sampling", "timeout", *TIMELINE_PARAMETERS})


# The body is read by oip_tensors.read_body (JSON, or JSON then binary tensors), so it is described here.
INFER_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"type": "object", "required": ["inputs"], "description": "an OIP "
                             "inference request: `inputs` (`video` BYTES [N] or `frames` UINT8 [N, T, H, W, 3]), "
                             "optional `outputs` and `parameters` (budget, deadline_ms, explain, sampling; "
                             "segment_s and stride_s: a timeline of one `video`)"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary", "description": "the same "
                                     "JSON (its length in `Inference-Header-Content-Length`), then binary tensors"}},
    },
}


def oip_error(error: ApiError) -> JSONResponse:
    """The protocol's error body: ``error`` (what tritonclient shows: ``code: message``), plus ``code`` and the
    request id."""
    body = {"error": f"{error.code}: {error.message}", "code": error.code, "request_id": current_request_id()}
    return JSONResponse(body, error.status, headers=error.headers)


def _parameter_error(name: str, message: str) -> TensorError:
    return TensorError("invalid_parameter", f"parameter {name!r} {message}")


def _deadline_ms(parameters: dict[str, Any]) -> float | None:
    """``deadline_ms`` and Triton's ``timeout`` (microseconds): positive finite numbers; the sooner of the two."""
    asked = []
    for name, scale in (("deadline_ms", 1.0), ("timeout", 1e-3)):
        value = parameters.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
            raise _parameter_error(name, f"must be a positive finite number, got {str(value)[:32]!r}")
        asked.append(value * scale)
    return min(asked) if asked else None


def _options(p: dict[str, Any]) -> tuple[str | None, bool, Sampling | None, float | None]:
    """The parameters every request may give: budget, explain, sampling, the deadline."""
    unknown = sorted(k for k in p if k not in PARAMETERS | RESERVED and not k.startswith("triton_"))
    if unknown:
        raise _parameter_error(unknown[0], f"is unknown; the parameters are {sorted(PARAMETERS)}")
    budget, explain = p.get("budget"), p.get("explain", False)
    if budget is not None and not isinstance(budget, str):
        raise _parameter_error("budget", "must be a budget level name")
    if isinstance(explain, str) and explain.lower() in TRUE_WORDS | FALSE_WORDS:
        explain = explain.lower() in TRUE_WORDS  # the words of /classify's boolean fields
    if not isinstance(explain, bool):
        raise _parameter_error("explain", "must be true or false")
    try:
        sampling = parse_sampling(p.get("sampling"), "parameter")  # /classify's one rule
    except BadUpload as exc:
        raise TensorError("invalid_parameter", str(exc)) from None
    return budget, explain, sampling, _deadline_ms(p)


def clips_of(state: ServiceState, body: wire.InferBody) -> Clips:
    """The request's clips and parameters, checked in order: parameters, inputs, counts and shapes, then data;
    with ``segment_s``, one file's timeline (service/http/oip_timeline.py)."""
    budget, explain, sampling, deadline_ms = _options(body.parameters)
    if wants_timeline(body.parameters):
        spec = timeline_spec(state, body.parameters, body.inputs)
        _check_outputs(body, TIMELINE_OUTPUTS)
        return Clips(wire.byte_elements(body.inputs[0]), None, budget, explain, sampling, deadline_ms, spec)
    names = sorted(t.name for t in body.inputs)
    if names not in (["video"], ["frames"]):
        raise TensorError("invalid_inference_request", f"give one input, `video` or `frames`; got {names}")
    _check_outputs(body, OUTPUTS)
    tensor = body.inputs[0]
    if tensor.name == "video":
        if len(tensor.shape) != 1:
            raise TensorError("tensor_shape", f"video must be [N] (one file per element), got {list(tensor.shape)}")
        check_count(state, tensor.shape[0])
        return Clips(wire.byte_elements(tensor), None, budget, explain, sampling, deadline_ms)
    shape = tensor.shape if len(tensor.shape) == 5 else (1, *tensor.shape) if len(tensor.shape) == 4 else None
    if shape is None:
        raise TensorError("tensor_shape", f"frames must be [N, T, H, W, 3] or [T, H, W, 3], got {list(tensor.shape)}")
    check_count(state, shape[0])
    check_frames_shape(state, shape)
    return Clips(None, wire.array(tensor, "UINT8").reshape(shape), budget, explain, None, deadline_ms)


def _check_outputs(body: wire.InferBody, known: tuple[str, ...]) -> None:
    if body.outputs is not None and (extra := sorted(set(body.outputs) - set(known))):
        kind = "a timeline's" if known is TIMELINE_OUTPUTS else "the"
        raise TensorError("invalid_inference_request", f"unknown outputs {extra}; {kind} outputs are {list(known)}")


def outputs_of(state: ServiceState, clips: list[ClipAnswer], explain: bool) -> list[wire.Output]:
    """The output tensors of N answers (every one; the route keeps those the request names)."""
    assert state.bundle is not None
    cfg = state.bundle.config
    answers = [c.body for c in clips]
    probabilities = np.array([c.probabilities for c in clips], np.float32).reshape(len(clips), cfg.num_classes)
    outputs = [
        wire.Output("label", "BYTES", [a.label.encode() for a in answers]),
        wire.Output("class_id", "INT64", np.array([a.class_id for a in answers], np.int64)),  # (N,)
        wire.Output("probabilities", "FP32", probabilities),
        wire.Output("exit_step", "INT32", np.array([a.exit_step for a in answers], np.int32)),  # (N,)
        wire.Output("gmacs", "FP32", np.array([a.gmacs for a in answers], np.float32)),  # (N,)
    ]
    if explain:
        cubes = np.full((len(answers), cfg.num_cubes, CUBE_FIELDS), -1, np.int32)  # (N, K, 6)
        for n, a in enumerate(answers):
            for k, c in enumerate(a.cubes or []):
                cubes[n, k] = (c.t, c.y, c.x, c.frames, c.size, int(c.skipped))
        outputs.append(wire.Output("cubes", "INT32", cubes))
    return outputs


async def _infer(request: Request, state: ServiceState, flow: ClipsFlow, name: str, started: float) -> Response:
    s = state.settings
    deadline = request_deadline(state, started, request.headers.get("x-deadline-ms"))
    try:  # a slow body counts against the deadline, as a /classify upload does
        async with asyncio.timeout(max(0.0, deadline - state.clock())):
            body = await wire.read_body(request.stream(), request.headers.get("content-length"), s.max_upload_bytes)
    except ClientDisconnect:
        raise ClientGone() from None
    except TimeoutError:
        raise DeadlineExceeded(f"the body did not arrive within {s.request_timeout_s:g} s") from None
    parsed = wire.parse_infer(body, request.headers.get(wire.HEADER_LENGTH), MAX_JSON_BYTES, s.max_json_depth)
    flow.trace.uploaded()  # the body is read and parsed: the decode stage begins (its checks included)
    clips = clips_of(state, parsed)
    answered: ClassifyResponse | TimelineResponse
    if clips.timeline is not None:
        timeline = await flow.timeline(clips)
        outputs, answered = timeline_outputs(state, timeline, clips.explain), timeline.body
        extra = timeline_parameters(timeline.body)
    else:
        answers = await flow.answer(clips)
        outputs, answered, extra = outputs_of(state, answers, clips.explain), answers[0].body, {}
    wanted = parsed.outputs
    outputs = [o for o in outputs if wanted is None or o.name in wanted]
    assert state.bundle is not None
    parameters = {
        "decoded_on": "server" if clips.videos is not None else "client",
        "budget": answered.budget, "budget_version": answered.budget_version,
        "request_id": current_request_id() or "-", "replica": state.replica, **extra,
    }
    content, header = wire.encode_response(
        name, state.bundle.sha256[:12], parsed.id, parameters, outputs, parsed.binary
    )
    if header is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream", headers={wire.HEADER_LENGTH: str(header)})


@router.post(
    "/models/{name}/infer", response_class=Response,
    responses=error_responses(400, 401, 403, 404, 413, 422, 429, 503, 504),
    openapi_extra={"requestBody": INFER_BODY},
)
async def infer(
    request: Request,
    state: StateDep,
    name: Annotated[str, Path(description="the model's name (the bundle's directory name)")],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    header: Annotated[str | None, Depends(X_API_KEY)],
) -> Response:
    """Classify N clips (input `video`: BYTES files; or `frames`: UINT8 [N, T, H, W, 3]), JSON or binary tensors."""
    started = state.clock()
    flow = ClipsFlow(state, request, started)  # before the request counts in flight: it reads ``draining``
    grant = None
    state.inflight += 1
    status = 500
    try:
        grant = await require_api_key(request, state, bearer, header)
        if name != served_name(state):
            raise ModelNotFound(name, served_name(state))
        response = await _infer(request, state, flow, name, started)
        status = 200
        flow.trace.end(None)
        return response
    except Exception as exc:
        flow.trace.end(exc)
        error = to_api_error(exc, state.settings.retry_after_s)
        status = error.status
        reason = rule_for(exc).reason
        if reason is not None and state.metrics is not None:
            state.metrics.on_reject(reason)
        if isinstance(exc, ClientGone):
            return Response(status_code=499)
        if status == 500:
            log.exception("unhandled error in /v2/models/%s/infer", name, exc_info=exc)
        return oip_error(error)
    finally:
        state.inflight -= 1
        if grant is not None:
            grant.release()
        if state.metrics is not None:
            state.metrics.on_request(status, state.clock() - started)
