"""Fixtures for the HTTP tests: a tiny bundle, videos encoded by PyAV, the app in-process (``in_process``: FastAPI's
TestClient, lifespan included) and, for what needs a real socket or signals, a real `adafocus serve` process."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from model.adafocus import AdaFocusV3
from model.budgets import BudgetLevel, BudgetTable
from model.bundle import save_bundle
from model.config import get_config
from model.macs import cost_report
from service.app import create_app
from service.lifecycle import ServiceState
from service.settings import Settings

with warnings.catch_warnings():  # Starlette 1.x asks for `httpx2` under its TestClient; httpx works the same here
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

OPERATOR_TOKEN = "test-operator-token-0123456789"


def make_bundle(path: Path, config_name: str = "tiny") -> Path:
    """A randomly initialised bundle with three levels: `low` always exits after the glance, `high` never
    exits early (all K cubes), `mid` in between."""
    torch.manual_seed(0)
    model = AdaFocusV3(get_config(config_name)).eval()
    costs = cost_report(model)
    exits = model.config.num_cubes + 1
    ln_c = math.log(model.config.num_classes)
    levels = (
        BudgetLevel("low", (ln_c + 1.0,) * exits, costs.exit_gmacs[0], 0.3),
        BudgetLevel("mid", (0.0,) + (ln_c + 1.0,) * (exits - 1), costs.exit_gmacs[1], 0.5),
        BudgetLevel("high", (0.0,) * exits, costs.exit_gmacs[-1], 0.7),
    )
    budgets = BudgetTable(criterion="entropy", levels=levels, default="high")
    return save_bundle(path, model, budgets, f"# random {config_name} bundle for tests\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A real `adafocus serve` subprocess on a free local port."""

    def __init__(self, bundle: Path, log_path: Path, new_session: bool = False, **env: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        environ = {k: v for k, v in os.environ.items() if not k.startswith("ADAFOCUS_")}
        environ.update({"ADAFOCUS_DECODE_WORKERS": "2", "ADAFOCUS_TORCH_THREADS": "1", "ADAFOCUS_DEVICE": "cpu"})
        environ.update({f"ADAFOCUS_{k.upper()}": str(v) for k, v in env.items()})
        entry = Path(sys.executable).parent / "adafocus"  # the installed console script, as a user runs it
        cmd = [str(entry), "serve", "--host", "127.0.0.1", "--port", str(self.port), "--bundle", str(bundle)]
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(  # new_session: its own process group, as a terminal's foreground job
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=environ, start_new_session=new_session
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        limit = time.monotonic() + timeout
        while time.monotonic() < limit:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return int(self.process.returncode)


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
