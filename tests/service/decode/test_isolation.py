"""Decoder workers hold none of the server's secrets: their environment and descriptors, read from /proc."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from model.video import DecodeLimits
from service.decode.isolation import worker_environment
from service.decode.pool import DecodeJob, DecodePool
from tests.service.conftest import OPERATOR_TOKEN, Server, serve
from tests.service.jobs import scripted_job

SECRETS = {
    "ADAFOCUS_OPERATOR_TOKEN": OPERATOR_TOKEN,
    "ADAFOCUS_API_KEYS_FILE": "/run/secrets/adafocus-keys",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-0123456789abcdef",
    "HF_TOKEN": "hf_secret0123456789",
    "DATABASE_URL": "postgres://admin:hunter2@db/prod",
}


def environ_of(pid: int) -> dict[str, str]:
    """The environment a process was started with (its exec-time block, as /proc shows it)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(entry.split("=", 1) for entry in raw.decode().split("\0") if entry)


def descriptors_of(pid: int) -> dict[int, str]:
    """Every open descriptor of a process past stdio, and what it points at (``pipe:[..]``, ``socket:[..]``, a path)."""
    fds = Path(f"/proc/{pid}/fd")
    return {int(fd.name): os.readlink(fd) for fd in fds.iterdir() if int(fd.name) > 2}


def test_the_worker_environment_keeps_only_the_named_harmless_variables() -> None:
    server = {
        **SECRETS, "ADAFOCUS_MAX_BATCH": "8", "PATH": "/usr/bin", "HOME": "/home/u", "LC_ALL": "C.UTF-8",
        "PYTHONPATH": "/srv", "CUDA_VISIBLE_DEVICES": "0", "OMP_NUM_THREADS": "1", "PYTHONADAFOCUS": "kept",
        "MY_PATH": "/x",
    }
    assert worker_environment(server) == {
        "PATH": "/usr/bin", "HOME": "/home/u", "LC_ALL": "C.UTF-8", "PYTHONPATH": "/srv", "CUDA_VISIBLE_DEVICES": "0",
        "OMP_NUM_THREADS": "1", "PYTHONADAFOCUS": "kept",
    }


@pytest.fixture()
def planted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[int, int]]:
    """Secrets in the server's environment, and an inheritable file and listening socket that it holds."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    secret_file = (tmp_path / "keys").open("w")
    listener = socket.create_server(("127.0.0.1", 0))
    os.set_inheritable(secret_file.fileno(), True)  # even descriptors a child could inherit stay behind
    os.set_inheritable(listener.fileno(), True)
    try:
        yield secret_file.fileno(), listener.fileno()
    finally:
        secret_file.close()
        listener.close()


def test_a_pools_workers_start_without_the_servers_secrets_or_descriptors(planted: tuple[int, int]) -> None:
    pool = DecodePool(2, DecodeLimits(), job_fn=scripted_job)
    pool.start()
    try:
        assert pool.submit(DecodeJob(b"abc", 2, 4)).result(timeout=30).frames[0, 0, 0, 0] == 3  # they work
        own = {os.readlink(f"/proc/self/fd/{fd}") for fd in planted}
        for pid in pool.worker_pids():
            env = environ_of(pid)
            assert not set(SECRETS) & set(env), sorted(env)
            assert not any(value in entry for value in SECRETS.values() for entry in env.values())
            assert env["PATH"] == os.environ["PATH"]
            fds = descriptors_of(pid)
            assert not own & set(fds.values()), fds
            blocks = {f"/dev/shm/{name}" for name in pool.shared_blocks()}
            kinds = sorted(target.split(":")[0] for target in fds.values() if target not in blocks)
            # multiprocessing's start, sentinel and resource-tracker pipes, its job pipe (a socket pair), stdin
            # replaced by /dev/null, and the slot's shared-memory block
            assert kinds == ["/dev/null", "pipe", "pipe", "pipe", "socket"], fds
        before = pool.worker_pids()
        pool.submit(DecodeJob(b"segfault", 2, 4)).exception(timeout=30)  # a replacement, started on a thread
        pool.submit(DecodeJob(b"ok", 2, 4)).result(timeout=30)
        for pid in set(pool.worker_pids()) - set(before):
            assert not set(SECRETS) & set(environ_of(pid))
    finally:
        pool.shutdown()


def test_a_real_servers_decoders_hold_none_of_its_secrets(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("key-for-the-isolation-test-0123 team-a\n")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRETS["AWS_SECRET_ACCESS_KEY"])
    server: Server
    for server in serve(tiny_bundle, tmp_path, operator_token=OPERATOR_TOKEN, api_keys_file=keys):
        assert environ_of(server.process.pid)["ADAFOCUS_OPERATOR_TOKEN"] == OPERATOR_TOKEN  # the server has them
        workers = [pid for pid in children(server.process.pid) if b"--multiprocessing-fork" in cmdline(pid)]
        assert len(workers) == 2
        for pid in workers:
            env = environ_of(pid)
            assert not [name for name in env if name.startswith("ADAFOCUS_") or name == "AWS_SECRET_ACCESS_KEY"]
            assert not [target for target in descriptors_of(pid).values() if target == str(keys)]
            sockets = [target for target in descriptors_of(pid).values() if target.startswith("socket:")]
            assert len(sockets) == 1  # its job pipe; not the server's listening socket nor a client's connection


def children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return [int(c) for task in tasks for c in (task / "children").read_text().split()]


def cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()
