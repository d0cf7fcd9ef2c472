"""The connection-exhaustion attack of issue 26, as a bounded client: sockets that never send a byte, held open
and re-opened as soon as the server closes them, beside a normal client whose answers are counted.

Linux routes the whole of 127.0.0.0/8 to the loopback interface, so binding a client socket to 127.0.0.2,
127.0.0.3 ... makes distinct client addresses for the server's per-client accounting.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

TICK_S = 0.01  # the attacker's loop: every 10 ms it notices closed sockets and re-opens some


class Flood:
    """``count`` silent sockets to ``127.0.0.1:port``, from ``sources`` in turn, each one the server closes re-opened
    (at most ``per_tick`` a tick: 400 a second by default, four times the issue's reproduction); runs in a thread
    while the ``with`` block runs."""

    def __init__(self, port: int, sources: Sequence[str], count: int, per_tick: int = 4) -> None:
        self.port, self.sources, self.count, self.per_tick = port, list(sources), count, per_tick
        self.opened = 0  # connections made, re-openings included
        self.closed_by_server = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flood", daemon=True)

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def held(self) -> int:
        return len(self._held)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._drop_closed()
                for _ in range(min(self.per_tick, self.count - len(self._held))):
                    self._open()
                time.sleep(TICK_S)
        finally:
            for sock in self._held:
                sock.close()
            self._held.clear()

    def _open(self) -> None:
        source = self.sources[self.opened % len(self.sources)]
        self.opened += 1
        with contextlib.suppress(OSError):  # a full accept queue: the next tick tries again
            self._held.append(socket.create_connection(("127.0.0.1", self.port), 1.0, (source, 0)))

    def _drop_closed(self) -> None:
        poll = select.poll()  # not select(): a flood's descriptors go past 1024
        by_fd = {sock.fileno(): sock for sock in self._held}
        for fd in by_fd:
            poll.register(fd, select.POLLIN)
        for fd, _ in poll.poll(0):  # the server never sends these sockets anything but its close
            sock = by_fd[fd]
            try:
                data = sock.recv(1)
            except OSError:
                data = b""
            if not data:
                self._held.remove(sock)
                sock.close()
                self.closed_by_server += 1


def normal_requests(port: int, source: str, video: Path, count: int) -> list[int | str]:
    """``count`` sequential ``POST /classify`` from ``source`` with keep-alive, as a normal client sends them: each
    answer's status, or the name of the transport error that replaced it."""
    outcomes: list[int | str] = []
    transport = httpx.HTTPTransport(local_address=source)
    body = video.read_bytes()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", transport=transport, timeout=30) as client:
        for _ in range(count):
            try:
                outcomes.append(client.post("/classify", files={"video": ("v.mp4", body)}).status_code)
            except httpx.TransportError as exc:
                outcomes.append(type(exc).__name__)
    return outcomes
