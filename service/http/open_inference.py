"""Health and metadata in the shape of the Open Inference Protocol (KServe v2), beside the native routes.

``GET /v2`` (server metadata), ``/v2/health/live``, ``/v2/health/ready``, ``GET /v2/models/{name}`` (the bundle:
labels, input geometry, K, cube size, GMACs per exit, budget levels, sha256, backend, device) and
``/v2/models/{name}/ready``. The served model's name is its bundle directory's name (``default`` for the shipped
bundle). Inference is ``POST /v2/models/{name}/infer`` (service/http/oip_infer.py: encoded files or decoded frames,
JSON or Triton's binary tensors), beside the native ``POST /classify``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from service.lifecycle import ServiceState
from service.schemas import BudgetLevelBody, level_bodies

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol"])
SERVER_NAME = "adafocus-serve"
EXTENSIONS = ["binary_tensor_data"]  # Triton's binary tensor data extension (service/http/oip_tensors.py)
CUBE_FIELDS = 6  # t, y, x, frames, size, skipped per cube; -1 rows past the clip's exit


def timeline_shapes(num_classes: int, num_cubes: int) -> list[tuple[str, str, list[int]]]:
    """(name, datatype, shape) of the outputs only a timeline has, for the model's metadata."""
    return [
        ("gmacs_all_k", "FP32", [1]), ("segment_index", "INT32", [-1]), ("segment_start_s", "FP32", [-1]),
        ("segment_end_s", "FP32", [-1]), ("segment_label", "BYTES", [-1]), ("segment_class_id", "INT64", [-1]),
        ("segment_confidence", "FP32", [-1]), ("segment_probabilities", "FP32", [-1, num_classes]),
        ("segment_exit_step", "INT32", [-1]), ("segment_exit_reason", "BYTES", [-1]), ("segment_gmacs", "FP32", [-1]),
        ("segment_cubes", "INT32", [-1, num_cubes, CUBE_FIELDS]), ("gaps", "FP32", [-1, 2]),
    ]


class ModelNotFound(Exception):
    """No model of that name is served here."""

    def __init__(self, name: str, served: str | None) -> None:
        super().__init__(f"no model {name!r} here; this server serves {served!r}")


class ServerMetadata(BaseModel):
    name: str = Field(description="the server's name")
    version: str = Field(description="the server's version")
    extensions: list[str] = Field(description="protocol extensions supported (`binary_tensor_data`)")
    models: list[str] = Field(description="the models served (one: the bundle's directory name)")


class LiveBody(BaseModel):
    live: bool = Field(description="the process answers")


class ReadyBody(BaseModel):
    ready: bool = Field(description="model loaded, warmed up, decoder self-tested, engine running, not draining")


class ModelReadyBody(ReadyBody):
    name: str = Field(description="model name")


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str = Field(description="model name (the bundle's directory name)")
    versions: list[str] = Field(description="one version: the first 12 hex digits of the bundle's sha256")
    platform: str = Field(description="`pytorch` or `onnxruntime`: the runner that serves it")
    inputs: list[TensorMetadata] = Field(description="`video` (BYTES [N]: encoded files, any container FFmpeg reads) "
                                         "or `frames` (UINT8 [N, T, H, W, 3]; [T, H, W, 3] is one clip)")
    outputs: list[TensorMetadata] = Field(description="per clip: label, class id, probabilities, exit step, GMACs; "
                                          "`cubes` (t, y, x, frames, size, skipped) with `explain`; with the "
                                          "parameter `segment_s` (a timeline of one `video`): the video's label, "
                                          "class id, mean probabilities, GMACs and `gmacs_all_k`, the `segment_*` "
                                          "outputs per segment and `gaps`")
    architecture: str = Field(description="the architecture's config name")
    labels: list[str] = Field(description="class names, by class id")
    num_frames: int = Field(description="T: frames sampled uniformly from each video")
    frame_size: int = Field(description="frames are resized to frame_size x frame_size pixels")
    glance_size: int = Field(description="side of the low-resolution frames the glance sees")
    num_cubes: int = Field(description="K: the most cubes a video can use")
    cube_size: int = Field(description="cube height = width, in pixels of the model's frames")
    cube_frames: int = Field(description="cube duration, in frames")
    exit_gmacs: list[float] = Field(description="GMACs spent by a video that stops at exit 0..K")
    criterion: str = Field(description="exit criterion of the thresholds (`entropy` or `max_prob`)")
    budget: str = Field(description="the active budget level (`custom` for explicit thresholds)")
    budget_version: int = Field(description="version of the active threshold set")
    default_budget: str = Field(description="the level the server started with")
    budget_levels: list[BudgetLevelBody] = Field(description="every named level, cheapest first")
    sha256: str = Field(description="the bundle's hash over its manifest (weights, config, thresholds)")
    backend: str = Field(description="runner: `torch` or `onnx`")
    device: str = Field(description="where the model runs, e.g. `cpu`, `cuda:0`")


async def get_state(request: Request) -> ServiceState:
    """The app's service state (``async``: no worker-thread round trip per request, as routes.get_state)."""
    state: ServiceState = request.app.state.service
    return state


# NOTE(oip): not routes.StateDep: service/http/errors.py maps ModelNotFound, and routes imports errors (no cycle).
StateDep = Annotated[ServiceState, Depends(get_state)]


def served_name(state: ServiceState) -> str | None:
    return state.bundle.path.name if state.bundle is not None else None


def _ready(state: ServiceState) -> bool:
    return all(state.readiness().values())


def _ready_response(body: BaseModel, ready: bool, retry_after_s: int) -> JSONResponse:
    headers = {} if ready else {"Retry-After": str(retry_after_s)}
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503, headers=headers)


@router.get("", response_model=ServerMetadata)
def server_metadata(request: Request, state: StateDep) -> ServerMetadata:
    """Server metadata."""
    name = served_name(state)
    return ServerMetadata(
        name=SERVER_NAME, version=request.app.version, extensions=EXTENSIONS, models=[name] if name else []
    )


@router.get("/health/live", response_model=LiveBody)
def live() -> LiveBody:
    """Liveness: the process answers (as `GET /healthz`)."""
    return LiveBody(live=True)


@router.get("/health/ready", response_model=ReadyBody, responses={503: {"model": ReadyBody}})
def ready(state: StateDep) -> JSONResponse:
    """Readiness (as `GET /readyz`): 503 with Retry-After while loading or draining."""
    ok = _ready(state)
    return _ready_response(ReadyBody(ready=ok), ok, state.settings.retry_after_s)


async def check_name(state: StateDep, name: Annotated[str, Path(description="model name")]) -> str:
    if name != served_name(state):
        raise ModelNotFound(name, served_name(state))
    return name


NameDep = Annotated[str, Depends(check_name)]


@router.get("/models/{name}", response_model=ModelMetadata, responses={404: {"description": "unknown model"}})
def model_metadata(state: StateDep, name: NameDep) -> ModelMetadata:
    """The served model: labels, input geometry, cubes, cost per exit, budget levels, hash, backend, device."""
    assert state.bundle is not None and state.engine is not None
    cfg, runner = state.bundle.config, state.engine.runner
    budget = state.engine.budget.current()
    return ModelMetadata(
        name=name,
        versions=[state.bundle.sha256[:12]],
        platform="onnxruntime" if runner.name == "onnx" else "pytorch",
        inputs=[
            TensorMetadata(name="video", datatype="BYTES", shape=[-1]),
            TensorMetadata(name="frames", datatype="UINT8", shape=[-1, -1, -1, -1, 3]),
        ],
        outputs=[
            TensorMetadata(name="label", datatype="BYTES", shape=[-1]),
            TensorMetadata(name="class_id", datatype="INT64", shape=[-1]),
            TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, cfg.num_classes]),
            TensorMetadata(name="exit_step", datatype="INT32", shape=[-1]),
            TensorMetadata(name="gmacs", datatype="FP32", shape=[-1]),
            TensorMetadata(name="cubes", datatype="INT32", shape=[-1, cfg.num_cubes, 6]),
            *(TensorMetadata(name=n, datatype=d, shape=s) for n, d, s in timeline_shapes(cfg.num_classes,
                                                                                         cfg.num_cubes)),
        ],
        architecture=cfg.name,
        labels=list(cfg.class_names),
        num_frames=cfg.num_frames,
        frame_size=cfg.frame_size,
        glance_size=cfg.glance_size,
        num_cubes=cfg.num_cubes,
        cube_size=cfg.cube_size,
        cube_frames=cfg.cube_frames,
        exit_gmacs=list(state.engine.costs.exit_gmacs),
        criterion=budget.criterion,
        budget=budget.name,
        budget_version=budget.version,
        default_budget=budget.levels.default,
        budget_levels=level_bodies(budget.levels),
        sha256=state.bundle.sha256,
        backend=runner.name,
        device=str(runner.device),
    )


@router.get("/models/{name}/ready", response_model=ModelReadyBody, responses={503: {"model": ModelReadyBody}})
def model_ready(state: StateDep, name: NameDep) -> JSONResponse:
    """The model is ready for requests (503 with Retry-After while loading or draining)."""
    ok = _ready(state)
    return _ready_response(ModelReadyBody(name=name, ready=ok), ok, state.settings.retry_after_s)
