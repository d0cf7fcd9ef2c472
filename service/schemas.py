"""Response and request bodies of the HTTP API, every field described for the OpenAPI document; and the two files an
operator writes in the same terms: the budget file (a ``BudgetUpdate``) and the API keys file (``parse_api_keys``)."""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from model.budgets import BudgetTable, Criterion
from service.engine.types import ExitReason

# The automatic budget's objective: from 1 ms (below it no request can be answered) to an hour (past it there is no
# latency to keep); PUT /budget, the budget file and ADAFOCUS_SLO_P99_S share the range.
P99_MIN_S, P99_MAX_S = 0.001, 3600.0


def a_number(value: object, what: str = "the value") -> object:
    """JSON numbers only: `true` is not 1 and `"0.5"` is not 0.5 (checked in lax validation too, e.g. the budget
    file's)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number, got {type(value).__name__} {value!r:.32}")
    return value


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable error code, e.g. `not_a_video`, `queue_full`")
    message: str = Field(description="human-readable explanation")
    request_id: str | None = Field(default=None, description="the request's ID (also in the `X-Request-ID` header)")


class TopK(BaseModel):
    class_id: int = Field(description="class index")
    label: str = Field(description="class name")
    probability: float = Field(description="softmax probability at the exit the video stopped at")


class Timings(BaseModel):
    queue: float = Field(description="seconds from engine submission to the start of the video's glance")
    decode: float = Field(description="seconds spent decoding the upload in a worker process")
    compute: float = Field(description="seconds from the glance start to the answer (all steps it took part in)")
    total: float = Field(description="seconds from the start of the request (before the upload) to the answer")


class Cube(BaseModel):
    t: int = Field(description="start frame of the cube (0-based, in the sampled clip)")
    y: int = Field(description="start row, in pixels of the model's frames")
    x: int = Field(description="start column, in pixels of the model's frames")
    size: int = Field(description="cube side (height = width) in pixels")
    frames: int = Field(description="cube duration in frames")
    skipped: bool = Field(description="true when earlier cubes already covered its frames and it was not run")


class Step(BaseModel):
    exit: int = Field(description="exit index: 0 after the glance, k after cube k")
    class_id: int = Field(description="the predicted class at this exit")
    label: str = Field(description="its name")
    confidence: float = Field(description="its softmax probability")
    score: float = Field(description="the exit criterion's score here (entropy, or max probability)")
    threshold: float | None = Field(description="the budget's threshold eta_k here (null: not known any more)")
    exited: bool = Field(description="the video stopped here")
    gmacs: float = Field(description="compute spent up to and including this exit, in GMACs")


class DecodeInfo(BaseModel):
    sampling: Literal["exact", "fast", "legacy"] = Field(
        description="how the frames were picked: `exact` the frames at the target times, `fast` the cheapest frame "
        "within the tolerance of each (see `max_offset_s`), `legacy` the old decoder (a benchmark's server)"
    )
    max_offset_s: float = Field(description="fast: the largest time offset of a taken frame from its target; else 0")
    backend: str = Field(description="the decoder that ran: `cpu` (PyAV in a worker process) or `nvdec` (NVIDIA)")


class ClassifyResponse(BaseModel):
    request_id: str = Field(description="the request's ID (the client's `X-Request-ID`, or one made up)")
    label: str = Field(description="predicted class name")
    class_id: int = Field(description="predicted class index")
    confidence: float = Field(description="softmax probability of the predicted class")
    top_k: list[TopK] = Field(description="the most probable classes, best first (up to 5)")
    cubes_used: int = Field(description="cubes processed by the local network (the glance is not a cube)")
    exit_step: int = Field(description="exit index 0..K at which the video stopped (0 = after the glance)")
    exit_reason: ExitReason = Field(
        description="`confident`: the exit criterion met its threshold; `max_cubes`: every cube was used; "
        "`deadline`: the request's deadline came near, and this is its prediction so far"
    )
    gmacs: float = Field(description="compute spent on this video, in GMACs (multiply-adds)")
    budget: str = Field(description="budget level the video ran under (`custom` for explicit thresholds)")
    budget_version: int = Field(description="version of the threshold set that decided the exit")
    replica: str | None = Field(default=None, description="the server (fleet replica) that answered; also `X-Replica`")
    timings: Timings = Field(description="per-stage wall times in seconds")
    decode: DecodeInfo | None = Field(default=None, description="how the upload was decoded")
    cached: bool = Field(default=False, description="true: the answer to an earlier identical request, from the "
                         "result cache (ADAFOCUS_RESULT_CACHE_ENTRIES); nothing was decoded or run for this one")
    cubes: list[Cube] | None = Field(
        default=None, description="the cubes chosen by the policy, in order (with `explain`)"
    )
    steps: list[Step] | None = Field(
        default=None,
        description="the prediction after the glance and after each cube up to the exit (with `explain`; recorded "
        "by the engine as it ran the request)",
    )
    frames: list[str] | None = Field(
        default=None, description="the frames the model saw, in order, as PNG data URLs (with `frames`)"
    )


class Segment(BaseModel):
    index: int = Field(description="the segment's index: it covers [index * stride_s, index * stride_s + segment_s)")
    start_s: float = Field(description="start, in seconds from the first frame's presentation time")
    end_s: float = Field(description="end, in seconds (the last segment may be shorter)")
    label: str = Field(description="predicted class name")
    class_id: int = Field(description="predicted class index")
    confidence: float = Field(description="softmax probability of the predicted class")
    top_k: list[TopK] = Field(description="the most probable classes, best first (up to 5)")
    exit_step: int = Field(description="exit index 0..K at which the segment stopped (0 = after the glance)")
    exit_reason: ExitReason = Field(description="as for a whole video: `confident`, `max_cubes` or `deadline`")
    gmacs: float = Field(description="compute spent on this segment, in GMACs")
    cubes: list[Cube] | None = Field(default=None, description="the cubes the policy chose (with `explain`)")


class Gap(BaseModel):
    start_s: float = Field(description="start of a stretch without frames, in seconds")
    end_s: float = Field(description="its end")


class TimelineResponse(BaseModel):
    request_id: str = Field(description="the request's ID (the client's `X-Request-ID`, or one made up)")
    label: str = Field(description="the video's label: the class of the highest mean probability over its segments")
    class_id: int = Field(description="its class index")
    confidence: float = Field(description="its mean probability over the segments")
    top_k: list[TopK] = Field(description="the classes of the highest mean probabilities over the segments")
    segments: list[Segment] = Field(description="one per segment answered, in time order")
    segment_s: float = Field(description="segment length asked for, in seconds")
    stride_s: float = Field(description="seconds between segment starts (`segment_s` unless `stride_s` was given)")
    duration_s: float = Field(description="the video's duration by its frames' presentation times")
    segments_planned: int = Field(description="segments the video is cut into (gaps and an early end included)")
    gaps: list[Gap] = Field(description="stretches without frames; a segment mostly inside one has no answer")
    skipped: list[int] = Field(description="indices of the segments not answered because they fall in gaps")
    ended_at_s: float | None = Field(
        default=None, description="set when the video ended before its planned end (a truncated or broken stream, "
        "or the request's deadline): the segments after this time are missing"
    )
    end_reason: str | None = Field(default=None, description="why it ended early (with `ended_at_s`)")
    gmacs: float = Field(description="compute spent on every segment, in GMACs")
    gmacs_all_k: float = Field(description="what the segments would have cost with every cube (no early exit)")
    budget: str = Field(description="budget level the segments ran under")
    budget_version: int = Field(description="version of the threshold set of the first segment answered")
    sampling: str = Field(description="the decoder's sampling (`exact` or `fast`)")
    decode_method: str = Field(description="how the one decode pass crossed the video: `seek` or `scan`")
    frames_decoded: int = Field(description="frames the decoder decoded for the whole timeline")
    first_segment_s: float | None = Field(
        default=None, description="seconds from the start of the request to the first segment answered"
    )
    replica: str | None = Field(default=None, description="the server (fleet replica) that answered; also `X-Replica`")
    timings: Timings = Field(
        description="`decode`: the one decode pass; `queue`, `compute`: summed over the segments; `total`: the request"
    )


class BudgetLevelBody(BaseModel):
    name: str = Field(description="level name")
    thresholds: list[float] = Field(description="exit thresholds eta_0..eta_K")
    expected_gmacs: float = Field(description="mean GMACs/video on the calibration split")
    expected_accuracy: float = Field(description="accuracy on the calibration split, in [0, 1]")


def level_bodies(table: BudgetTable) -> list[BudgetLevelBody]:
    """Every named level of ``table``, cheapest first (GET /budget, GET /v2/models/{name})."""
    return [
        BudgetLevelBody(
            name=lvl.name,
            thresholds=list(lvl.thresholds),
            expected_gmacs=lvl.expected_gmacs,
            expected_accuracy=lvl.expected_accuracy,
        )
        for lvl in table.levels
    ]


class ReplicaBudget(BaseModel):
    replica: str = Field(description="the replica's name (the `replica` field and `X-Replica` header of its answers)")
    name: str = Field(description="its active level")
    version: int = Field(description="its budget version (answers report it as `budget_version`)")
    setting_version: int = Field(
        description="the version of the operator's setting it applied; equal on every replica once a change "
        "reached them all (the automatic budget's own level changes bump `version` only)"
    )


class BudgetResponse(BaseModel):
    name: str = Field(description="the active level (`custom` for explicit thresholds)")
    version: int = Field(description="incremented by every change; results report the version they ran under")
    thresholds: list[float] = Field(description="the active exit thresholds eta_0..eta_K")
    criterion: Criterion = Field(
        description="`entropy`: exit when entropy <= eta_k; `max_prob`: exit when max probability >= eta_k"
    )
    default: str = Field(description="the level the server started with")
    levels: list[BudgetLevelBody] = Field(description="every named level, cheapest first")
    mode: Literal["manual", "auto"] = Field(
        default="manual", description="`auto`: the automatic budget chooses the level to keep `slo_p99_s`"
    )
    slo_p99_s: float | None = Field(default=None, description="automatic budget: the p99 latency objective (s)")
    min_level: str | None = Field(default=None, description="automatic budget: the least accurate level it may use")
    setting_version: int = Field(default=1, description="the version of the operator's setting this state comes from")
    replica: str = Field(default="", description="the replica that answered")
    replicas: list[ReplicaBudget] = Field(
        default_factory=list, description="every live replica's budget (one entry on a single server)"
    )


class BudgetUpdate(BaseModel):
    """Exactly one of `level`, `gmacs` or `thresholds` (manual), or `mode: "auto"` with optional `p99_s` and
    `min_level` (the automatic budget); `mode: "manual"` alone keeps the level the automatic budget chose. Unknown
    keys are refused (a typo must not pass as "no change")."""

    model_config = ConfigDict(extra="forbid")

    level: str | None = Field(default=None, description="switch to this named level")
    gmacs: float | None = Field(
        default=None, description="switch to the most accurate level expected within this GMACs/video"
    )
    thresholds: list[float] | None = Field(
        default=None, description="explicit thresholds eta_0..eta_K (numbers: finite, >= 0)"
    )
    mode: Literal["manual", "auto"] | None = Field(
        default=None, description="`auto`: let the automatic budget choose the level; `manual`: stop it"
    )
    p99_s: float | None = Field(
        default=None, ge=P99_MIN_S, le=P99_MAX_S, allow_inf_nan=False,
        description=f"with `mode: auto`: the p99 latency objective, {P99_MIN_S:g} to {P99_MAX_S:g} s; default "
        "ADAFOCUS_SLO_P99_S",
    )
    min_level: str | None = Field(default=None, description="with `mode: auto`: the least accurate level to use")

    @field_validator("gmacs", "p99_s", mode="before")
    @classmethod
    def _numbers(cls, value: object) -> object:
        return value if value is None else a_number(value, "it")

    @field_validator("thresholds", mode="before")
    @classmethod
    def _threshold_numbers(cls, value: object) -> object:
        if not isinstance(value, list | tuple):
            return value
        return [a_number(v, f"thresholds[{i}]") for i, v in enumerate(value)]

    @model_validator(mode="after")
    def _exactly_one(self) -> BudgetUpdate:
        given = [name for name in ("level", "gmacs", "thresholds") if getattr(self, name) is not None]
        if self.mode == "auto":
            if given:
                raise ValueError(f"mode auto chooses the level itself: drop {given}")
            return self
        if self.p99_s is not None or self.min_level is not None:
            raise ValueError("p99_s and min_level go with mode auto")
        if self.mode == "manual" and not given:
            return self
        if len(given) != 1:
            raise ValueError(f"give exactly one of level, gmacs, thresholds, or mode (got {given or 'none'})")
        if self.gmacs is not None and not (math.isfinite(self.gmacs) and self.gmacs > 0):
            raise ValueError("gmacs must be a positive finite number")
        return self


class Health(BaseModel):
    status: Literal["ok"] = Field(description="the process is alive and its event loop answers")


class Readiness(BaseModel):
    ready: bool = Field(description="true when every check passes and the server is not draining")
    checks: dict[str, bool] = Field(
        description="model_loaded, warmed_up, decoder_self_test, engine_running, not_draining"
    )


# ----------------------------------------------------------------------------------------------- the API keys file
MIN_API_KEY_CHARS = 16
API_KEY_NAME = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # a metric label value, safe in a log line
API_KEY_OPTIONS = ("rate", "burst", "concurrency")


class ApiKeyFileError(ValueError):
    """An ``ADAFOCUS_API_KEYS_FILE`` that cannot be used; the message names the line, never a key."""


@dataclass(frozen=True)
class ApiKeyEntry:
    """One line of the API keys file: ``KEY [NAME] [rate=R] [burst=B] [concurrency=C]``."""

    name: str  # in the metrics and the logs instead of the key; default `key-<line number>`
    digest: bytes  # SHA-256 of the key: the key itself is not kept
    rate: float | None = None  # requests per second (the token bucket's refill); None: ADAFOCUS_API_KEY_RATE
    burst: int | None = None  # the bucket's size; None: ADAFOCUS_API_KEY_BURST
    concurrency: int | None = None  # /classify requests in flight; None: ADAFOCUS_API_KEY_CONCURRENCY


def api_key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def read_api_keys(path: Path) -> tuple[ApiKeyEntry, ...]:
    """``parse_api_keys`` of the file at ``path``; ``ApiKeyFileError`` when it cannot be read either."""
    try:
        text = path.read_bytes().decode()
    except OSError as exc:
        raise ApiKeyFileError(f"cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ApiKeyFileError("not UTF-8 text") from None  # the exception's text would show a byte of the file
    return parse_api_keys(text)


def parse_api_keys(text: str) -> tuple[ApiKeyEntry, ...]:
    """Every key of an API keys file (blank lines and `#` comments skipped); ``ApiKeyFileError`` for a bad line,
    a key shorter than ``MIN_API_KEY_CHARS``, or a key or name given twice."""
    entries: list[ApiKeyEntry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if words:
            entries.append(_api_key_line(number, words))
    for what, values in (("key", [e.digest for e in entries]), ("name", [e.name for e in entries])):
        if len(set(values)) != len(values):
            raise ApiKeyFileError(f"the same {what} is on two lines")
    return tuple(entries)


def _api_key_line(number: int, words: list[str]) -> ApiKeyEntry:
    key, rest = words[0], words[1:]
    if len(key) < MIN_API_KEY_CHARS:
        raise ApiKeyFileError(f"line {number}: a key needs at least {MIN_API_KEY_CHARS} characters")
    names = [w for w in rest if "=" not in w]
    options = dict(w.split("=", 1) for w in rest if "=" in w)
    if len(names) > 1 or (names and not API_KEY_NAME.fullmatch(names[0])):
        raise ApiKeyFileError(f"line {number}: expected `KEY [NAME] [rate=R] [burst=B] [concurrency=C]`, the name "
                              "of 1-64 of `A-Z a-z 0-9 . _ : -`")
    unknown = sorted(set(options) - set(API_KEY_OPTIONS))
    if unknown:
        raise ApiKeyFileError(f"line {number}: unknown options {unknown}; known: {list(API_KEY_OPTIONS)}")
    try:
        rate = float(options["rate"]) if "rate" in options else None
        burst, concurrency = (int(options[o]) if o in options else None for o in ("burst", "concurrency"))
    except ValueError:
        raise ApiKeyFileError(f"line {number}: rate is a number, burst and concurrency whole numbers") from None
    bad_rate = rate is not None and not (math.isfinite(rate) and rate > 0)
    if bad_rate or any(v is not None and v < 1 for v in (burst, concurrency)):
        raise ApiKeyFileError(f"line {number}: rate must be positive, burst and concurrency at least 1")
    name = names[0] if names else f"key-{number}"
    return ApiKeyEntry(name, api_key_digest(key), rate, burst, concurrency)
