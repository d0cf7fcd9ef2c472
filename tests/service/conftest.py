"""Fixtures for the HTTP tests: a tiny bundle, videos encoded by PyAV, the app in-process (``in_process``: FastAPI's
TestClient, lifespan included) and, for what needs a real socket or signals, a real `adafocus serve` process."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadtest.http.server_process import ServerProcess
from loadtest.http.server_process import free_port as free_port  # tests import it from here too
from model.config import get_config
from model.testing import fixed_budgets, spread_exit_model, untrained_bundle
from model.video import encode_video
from service.app import create_app
from service.lifecycle import ServiceState
from service.settings import Settings

with warnings.catch_warnings():  # Starlette 1.x asks for `httpx2` under its TestClient; httpx works the same here
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

OPERATOR_TOKEN = "test-operator-token-0123456789"


def make_bundle(path: Path, config_name: str = "tiny") -> Path:
    """An untrained bundle (``model.testing``) with three levels: `low` always exits after the glance, `high`
    never exits early (all K cubes), `mid` after one cube."""
    model = spread_exit_model(get_config(config_name))
    return untrained_bundle(path, model, fixed_budgets(model), f"# random {config_name} bundle for tests\n").path


class Server(ServerProcess):
    """A real `adafocus serve` subprocess on a free local port (``loadtest.http.server_process``) with the settings
    of a test server: two decoder workers, one torch thread, the CPU; ``env`` adds or overrides settings."""

    def __init__(self, bundle: Path, log_path: Path, new_session: bool = False, **env: Any) -> None:
        settings = {"decode_workers": 2, "torch_threads": 1, "device": "cpu", **env}
        super().__init__(bundle, log_path, settings, new_session)


def ramp(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A moving pattern (different per seed) so that videos differ: (T, H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8).repeat(4, 0).repeat(4, 1)
    return np.stack([np.roll(base, 2 * t, axis=1)[:height, :width] for t in range(frames)])


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def serve(bundle: Path, tmp: Path, **env: Any) -> Iterator[Server]:
    server = Server(bundle, tmp / "server.log", **env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


class ManualClock:
    """A monotonic clock that tests move forward at will (``create_app(clock=...)``): deadlines pass on demand."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def in_process(bundle: Path, clock: Callable[[], float] = time.monotonic, **settings: Any) -> Iterator[TestClient]:
    """The app in this process, its lifespan run (model load, warm-up, decoder pool self-test) as ``serve`` does,
    with the settings a real test server gets; the environment's ``ADAFOCUS_*`` variables are ignored."""
    with pytest.MonkeyPatch.context() as env:
        for key in os.environ:
            if key.startswith("ADAFOCUS_"):
                env.delenv(key)
        config = Settings(bundle=bundle, device="cpu", decode_workers=2, **settings)
    with TestClient(create_app(config, clock=clock)) as client:
        yield client


def service_state(client: TestClient) -> ServiceState:
    state: ServiceState = client.app.state.service  # type: ignore[attr-defined]
    return state


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    limit = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < limit, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.005)


def wait_until_dead(pid: int, timeout: float = 10.0) -> None:
    """Until ``pid`` has exited (a zombie until its parent reaps it)."""
    status = Path(f"/proc/{pid}/status")
    wait_until(lambda: not status.exists() or "zombie" in status.read_text(), timeout, f"process {pid} to die")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real H.264 clip (12 frames of 48 x 64) for in-process /classify tests."""
    return encode_video(tmp_path_factory.mktemp("clip") / "clip.mp4", ramp(12, 48, 64, seed=5), "libx264")


def classify_ok(app: TestClient, clip: Path, headers: dict[str, str] | None = None, **fields: str) -> dict[str, object]:
    """POST ``clip`` to an in-process app; the 200 answer's body (its request id echoed in the header)."""
    with clip.open("rb") as fh:
        response = app.post("/classify", files={"video": ("clip.mp4", fh)}, data=fields, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    assert response.headers["x-request-id"] == body["request_id"]
    return body
