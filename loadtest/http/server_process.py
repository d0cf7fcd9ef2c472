"""A real ``adafocus serve`` in a subprocess on a free local port: the tests that need a socket or signals, and the
end-to-end bench (``loadtest.bench.e2e``), start their servers here.

The server is configured by its caller alone: its environment is this process's without any ``ADAFOCUS_*``
variable, plus the ``settings`` given (``max_batch=8`` becomes ``ADAFOCUS_MAX_BATCH=8``). Its stdout and stderr go
to ``log_path`` (``log()`` reads it back, for assertions and for the error of a server that never got ready).
``stop()`` is SIGTERM (the server drains), then SIGKILL past the timeout; it always reaps the process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from service.startup import listen_socket

ADAFOCUS = Path(sys.executable).parent / "adafocus"  # the installed console script, as a user runs it
HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A port that is free on ``host`` now (bound as the server binds it, then released for the server)."""
    with listen_socket(host, 0) as sock:
        return int(sock.getsockname()[1])


class ServerProcess:
    """``adafocus serve --bundle bundle`` on ``url``, started at construction (``wait_ready`` waits for /readyz).

    ``new_session``: the server leads its own process group, as a terminal's foreground job does, so that a signal
    to the group (``os.killpg(server.process.pid, ...)``, Ctrl-C) reaches its decoder workers too.
    """

    def __init__(
        self, bundle: Path, log_path: Path, settings: Mapping[str, object], new_session: bool = False
    ) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("ADAFOCUS_")}
        env.update({f"ADAFOCUS_{k.upper()}": str(v) for k, v in settings.items()})
        cmd = [str(ADAFOCUS), "serve", "--host", HOST, "--port", str(self.port), "--bundle", str(bundle)]
        self._log = log_path.open("wb")
        try:
            self.process = subprocess.Popen(
                cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=new_session
            )
        except BaseException:
            self._log.close()
            raise

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Until /readyz answers 200; ``RuntimeError`` when the server exits first, ``TimeoutError`` past
        ``timeout_s`` (each with the end of its log)."""
        limit = time.monotonic() + timeout_s
        while time.monotonic() < limit:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the server was not ready after {timeout_s:g} s:\n{self.log_tail()}")

    def log(self) -> str:
        """Everything the server wrote so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log()[-chars:]

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; returns its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return int(self.process.returncode)
