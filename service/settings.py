"""Service settings: the one place that reads the environment (``ADAFOCUS_*`` variables), validated at start-up.

Every field is documented in the README's configuration table. Bad values fail fast with a message naming the
variable, before any model is loaded.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.video import DecodeLimits
from service.engine.config import AdmissionRule, Backend, EngineConfig, EngineMode, Precision
from service.logs import LogFormat
from service.schemas import P99_MAX_S, P99_MIN_S, ApiKeyFileError, BudgetUpdate, read_api_keys
from service.tracing.setup import TracingConfig, sdk_missing

MIN_TOKEN_CHARS = 16
# The engine's settings default to EngineConfig's own defaults (written once, there); every other default is
# written here only: the HTTP guards and the upload reader take their limits from these settings.
ENGINE = EngineConfig()


class Settings(BaseSettings):
    # hide_input_in_errors: a rejected value (the operator token ...) must never reach a log through the error text
    # validate_by_name: the fields read from standard OTEL_* variables too (validation_alias) still take their name
    model_config = SettingsConfigDict(
        env_prefix="ADAFOCUS_", extra="ignore", frozen=True, hide_input_in_errors=True, validate_by_name=True
    )

    host: str = Field(default="0.0.0.0", description="address to bind")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port (0 = any free port)")
    bundle: Path | None = Field(default=None, description="model bundle directory; unset = the shipped bundle")
    device: str = Field(default="auto", description="auto (CUDA when available), cpu, cuda or cuda:N")
    backend: Backend = Field(default="torch", description="model runner")
    torch_threads: int | None = Field(default=None, ge=1, description="torch CPU threads; unset = default")
    precision: Precision = Field(
        default="fp32", description="torch backend: `fp32`, or `bf16` (every stage under autocast; answers in fp32)"
    )
    channels_last: bool = Field(
        default=False, description="torch backend: the frame encoders' weights in NHWC (faster convolutions on GPUs)"
    )
    cuda_graphs: bool = Field(
        default=False, description="torch backend on CUDA: each stage captured once per batch bucket (powers of two "
        "up to ADAFOCUS_MAX_BATCH) at start-up and replayed"
    )

    mode: EngineMode = Field(default=ENGINE.mode, description="engine batching mode")
    max_batch: int = Field(default=ENGINE.max_batch, ge=1, description="max samples per model call, per stage")
    max_active: int = Field(
        default=ENGINE.max_active, ge=1, description="max admitted requests holding frames on the device"
    )
    max_queue: int = Field(
        default=ENGINE.max_queue, ge=1, description="admission queue length; beyond it requests get 503"
    )
    admission: AdmissionRule = Field(
        default=ENGINE.admission,
        description="continuous mode: cost = hold waiting requests while admitting them costs the requests in flight "
        "more than it gains them (the measured step costs); eager = admit as soon as a slot is free",
    )
    min_glance_batch: int | Literal["auto"] = Field(
        default="auto" if ENGINE.min_glance_batch is None else ENGINE.min_glance_batch,
        description="continuous mode: admit waiting requests once this many slots are free; auto = the knee of "
        "the measured glance cost per video",
    )
    max_glance_wait_steps: int = Field(
        default=ENGINE.max_glance_wait_steps, ge=1,
        description="continuous mode: steps the oldest waiting request may wait for a glance batch",
    )
    request_timeout_s: float = Field(default=30.0, gt=0, description="deadline per /classify request")
    deadline_answers: bool = Field(
        default=ENGINE.deadline_answers,
        description="a request near its deadline that had its glance is answered with its prediction so far (200, "
        "exit_reason deadline) instead of 504",
    )
    group_max_active: int = Field(
        default=ENGINE.group_max_active, ge=1, description="fairness: active engine slots one request group (the "
        "segments of one long video) may hold; waiting groups and single clips are admitted round robin"
    )
    max_segments: int = Field(default=600, ge=1, description="segments one /classify timeline may have; beyond it 422")
    min_segment_s: float = Field(default=0.5, gt=0, description="shortest `segment_s` a timeline may ask for")
    timeline_timeout_s: float = Field(
        default=300.0, gt=0, description="deadline of a timeline request (`segment_s`), instead of "
        "ADAFOCUS_REQUEST_TIMEOUT_S; `deadline_ms` may shorten it"
    )
    timeline_decode_s: float = Field(
        default=240.0, gt=0, description="wall-time limit of a timeline's one decode pass (the worker is killed)"
    )
    timeline_decode_nice: int = Field(
        default=0, ge=0, le=19, description="how much a timeline's decode raises its nice value above the decoder "
        "worker's (0: same priority as single clips; 19: only what the rest of the server leaves)"
    )
    budget_mode: Literal["manual", "auto"] = Field(
        default="manual", description="`auto`: the automatic budget picks the level that keeps ADAFOCUS_SLO_P99_S"
    )
    slo_p99_s: float = Field(
        default=0.5, ge=P99_MIN_S, le=P99_MAX_S, description="automatic budget: the p99 latency objective in seconds"
    )
    min_level: str | None = Field(
        default=None, description="automatic budget: the cheapest level it may choose; unset = any level"
    )
    budget: str | None = Field(
        default=None, description="the budget level to start with; unset = the bundle's default (a budget file wins)"
    )
    budget_file: Path | None = Field(
        default=None, description="JSON file holding the budget setting (a PUT /budget body plus `version`): read at "
        "start-up, watched, written by PUT /budget when writable (else 409); a Kubernetes ConfigMap"
    )
    budget_poll_s: float = Field(default=1.0, gt=0, description="how often the budget file is checked for changes")
    replica_name: str | None = Field(
        default=None, description="this server's name in answers (`replica`, `X-Replica`); unset = the host name"
    )
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After seconds sent with 503 answers")

    max_upload_bytes: int = Field(default=100 * 1024 * 1024, ge=1, description="uploads above this get 413")
    spool_bytes: int = Field(default=8 * 1024 * 1024, ge=0, description="larger uploads spool to disk")
    max_pixels_per_frame: int = Field(default=3840 * 2160, ge=1, description="coded width x height limit")
    max_duration_s: float = Field(default=600.0, gt=0, description="video duration limit")
    max_decode_s: float = Field(default=20.0, gt=0, description="wall-time limit of one decode (the worker is killed)")
    decode_workers: int = Field(default=2, ge=1, le=64, description="decoder worker processes")
    decode_queue: int = Field(default=64, ge=1, description="uploads waiting for or in a decoder; beyond it 503")
    decode_sampling: Literal["exact", "fast", "legacy"] = Field(
        default="exact", description="`exact`: the frames at the T target times, decoding only them and the "
        "reference frames they need; `fast`: per target the cheapest frame within ADAFOCUS_DECODE_TOLERANCE_S (a "
        "keyframe, else a reference frame), exact where none is near; `legacy`: the old decoder (same frames as "
        "`exact` at more CPU), for `adafocus bench e2e` only; the form field `sampling` overrides it per request"
    )
    decode_tolerance_s: float = Field(
        default=0.5, ge=0, le=10, description="fast sampling: the largest time offset a frame may take from its target"
    )
    decoder: Literal["cpu", "nvdec", "auto"] = Field(
        default="auto", description="the decoder backend, chosen once at start-up and logged: `cpu` (PyAV), `nvdec` "
        "(NVIDIA's hardware decoder through PyNvVideoCodec, the `gpu` extra; refused at start-up where it cannot run), "
        "`auto` (NVDEC when a CUDA device and the package are usable, else the CPU)"
    )
    result_cache_entries: int = Field(
        default=0, ge=0, le=1_000_000, description="answers kept by upload content, model, budget version and the "
        "fields that change them (an LRU; a repeated upload is answered without decoding); 0 = off, the default, "
        "since load tests and benchmarks resend the same files (a cache would answer them)"
    )
    max_form_fields: int = Field(
        default=8, ge=1, le=1000, description="non-file fields of a /classify form (each at most 1 KiB; their bytes "
        "count in ADAFOCUS_MAX_UPLOAD_BYTES); beyond it 413"
    )
    max_json_bytes: int = Field(
        default=16 * 1024, ge=64, description="body of every other request (PUT /budget ...); beyond it 413, "
        "checked from Content-Length and while streaming, before authentication"
    )
    max_json_depth: int = Field(
        default=32, ge=1, le=256, description="arrays and objects nested in a JSON body (PUT /budget); deeper gets "
        "422 json_too_deep, checked after the operator token, before the body is parsed"
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="a connection must send a request's whole headers (and a JSON body) within "
        "this, else it is closed (408 once bytes arrived)"
    )
    first_byte_timeout_s: float = Field(
        default=2.0, gt=0, description="a new connection must send its first byte within this (at most "
        "ADAFOCUS_HEADER_TIMEOUT_S), else it is closed without an answer"
    )
    keep_alive_s: float = Field(default=5.0, gt=0, description="idle keep-alive connections are closed after this")
    max_connections: int = Field(
        default=1000, ge=1, description="open connections; beyond it the one idle longest is closed for a new one, "
        "or, none idle, the new one gets 503 and is closed"
    )
    max_connections_per_client: int = Field(
        default=256, ge=1, description="open connections of one client address; beyond it a new one is closed at "
        "once (behind a proxy every client has the proxy's address: set ADAFOCUS_MAX_CONNECTIONS)"
    )
    linger_s: float = Field(
        default=10.0, ge=0, description="after an early answer (413, 504 ...), at most this long reading and "
        "discarding the rest of the request body, so the client gets the answer instead of a reset"
    )

    operator_token: SecretStr | None = Field(
        default=None, description="bearer token for PUT /budget, at least 16 characters; unset = refused"
    )
    operator_token_file: Path | None = Field(
        default=None, description="file holding the operator token (Docker secrets); used when the token is unset"
    )
    api_keys_file: Path | None = Field(
        default=None, description="API keys for /classify, one a line: `KEY [NAME] [rate=R] [burst=B] "
        "[concurrency=C]`; reloaded when it changes; unset = no key needed"
    )
    api_keys_poll_s: float = Field(default=1.0, gt=0, description="how often the API keys file is checked for changes")
    api_key_rate: float | None = Field(
        default=None, gt=0, description="requests per second per API key (a token bucket); unset = no rate limit"
    )
    api_key_burst: int | None = Field(
        default=None, ge=1, description="requests an API key may send at once above its rate; unset = the rate, "
        "rounded up"
    )
    api_key_concurrency: int | None = Field(
        default=None, ge=1, description="/classify requests in flight per API key; unset = no limit"
    )
    drain_timeout_s: float = Field(default=30.0, ge=0, description="on SIGTERM, max wait for in-flight requests")
    warmup: bool = Field(default=True, description="run the model at the batch sizes used before reporting ready")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="logging level")
    log_format: LogFormat = Field(
        default="text", description="`text`, or `json`: one JSON object per line (access log included), with the "
        "request ID"
    )
    otlp_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("ADAFOCUS_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        description="OpenTelemetry: the OTLP/HTTP collector's base URL (spans go to <it>/v1/traces); also read from "
        "OTEL_EXPORTER_OTLP_ENDPOINT; unset = tracing off",
    )
    trace_service_name: str = Field(
        default="adafocus", min_length=1,
        validation_alias=AliasChoices("ADAFOCUS_TRACE_SERVICE_NAME", "OTEL_SERVICE_NAME"),
        description="tracing: the spans' service.name (also read from OTEL_SERVICE_NAME)",
    )
    trace_sample_ratio: float = Field(
        default=1.0, ge=0, le=1, description="tracing: the share of new traces kept (a client's traceparent decides "
        "for its own)",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"ADAFOCUS_DEVICE must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp_endpoint(cls, value: str | None) -> str | None:
        if not value:
            return None  # an empty variable means "no endpoint": tracing off
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
            raise ValueError("must be an http:// or https:// URL (the collector's OTLP/HTTP base URL)")
        if sdk_missing():
            raise ValueError("tracing needs the OpenTelemetry SDK: pip install 'adafocus-serve[otel]'")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("operator_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None  # an empty variable means "no token": budget changes are refused
        if len(value.get_secret_value()) < MIN_TOKEN_CHARS:
            raise ValueError(f"ADAFOCUS_OPERATOR_TOKEN must have at least {MIN_TOKEN_CHARS} characters")
        return value

    @model_validator(mode="after")
    def _token_from_file(self) -> Settings:
        if self.operator_token is not None or self.operator_token_file is None:
            return self
        try:
            token = self.operator_token_file.read_text().strip()
        except OSError as exc:
            raise ValueError(f"ADAFOCUS_OPERATOR_TOKEN_FILE cannot be read: {exc}") from exc
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"ADAFOCUS_OPERATOR_TOKEN_FILE: the token needs at least {MIN_TOKEN_CHARS} characters")
        object.__setattr__(self, "operator_token", SecretStr(token))  # frozen model: set once, while validating
        return self

    @model_validator(mode="after")
    def _api_keys(self) -> Settings:
        if self.api_keys_file is None:
            return self
        try:  # read again by the server whenever the file changes; here only so that a bad one stops the start-up
            read_api_keys(self.api_keys_file)
        except ApiKeyFileError as exc:
            raise ValueError(f"ADAFOCUS_API_KEYS_FILE: {exc}") from None
        return self

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.bundle is not None and not self.bundle.is_dir():
            raise ValueError(f"ADAFOCUS_BUNDLE={self.bundle} is not a directory")
        if self.budget and self.budget_mode == "auto":
            raise ValueError("ADAFOCUS_BUDGET is a fixed level: with ADAFOCUS_BUDGET_MODE=auto set ADAFOCUS_MIN_LEVEL")
        if self.budget_file is not None and not self.budget_file.parent.is_dir():
            raise ValueError(f"ADAFOCUS_BUDGET_FILE={self.budget_file}: its directory does not exist")
        torch_only = self.precision != "fp32" or self.channels_last or self.cuda_graphs
        if self.backend == "onnx" and torch_only:
            raise ValueError("ADAFOCUS_PRECISION, ADAFOCUS_CHANNELS_LAST and ADAFOCUS_CUDA_GRAPHS apply to the torch "
                             "backend (ADAFOCUS_BACKEND=torch or auto), not to onnx")
        if self.cuda_graphs and self.device == "cpu":
            raise ValueError("ADAFOCUS_CUDA_GRAPHS needs a CUDA device; ADAFOCUS_DEVICE is cpu")
        self.engine_config()  # validated once, by the engine's own configuration type (its message names the field)
        return self

    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(
            max_bytes=self.max_upload_bytes,
            max_pixels_per_frame=self.max_pixels_per_frame,
            max_duration_s=self.max_duration_s,
            max_decode_s=self.max_decode_s,
            sampling=self.decode_sampling,
            tolerance_s=self.decode_tolerance_s,
        )

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            mode=self.mode,
            max_batch=self.max_batch,
            max_active=self.max_active,
            max_queue=self.max_queue,
            admission=self.admission,
            min_glance_batch=None if self.min_glance_batch == "auto" else self.min_glance_batch,
            max_glance_wait_steps=self.max_glance_wait_steps,
            deadline_answers=self.deadline_answers,
            group_max_active=self.group_max_active,
        )

    def tracing_config(self, instance: str) -> TracingConfig:
        """Tracing as set (off without an endpoint); ``instance`` names this server in its spans."""
        return TracingConfig(self.otlp_endpoint, self.trace_service_name, self.trace_sample_ratio, instance)

    def startup_budget(self) -> BudgetUpdate:
        """The budget setting to start with when no budget file holds one (levels are checked by the engine)."""
        if self.budget_mode == "auto":
            return BudgetUpdate(mode="auto", p99_s=self.slo_p99_s, min_level=self.min_level or None)
        return BudgetUpdate(level=self.budget) if self.budget else BudgetUpdate(mode="manual")

    def replica(self) -> str:
        return self.replica_name or socket.gethostname()

    def resolved_device(self) -> str:
        """``auto`` -> cuda when torch sees a GPU, else cpu."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
