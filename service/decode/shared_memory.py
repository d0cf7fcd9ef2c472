"""The decoder pool's shared-memory blocks: one per worker slot, made and unlinked by the pool's process only.

A block's name carries this host's token (boot and PID namespace) and the pool's PID:
``/dev/shm/adafocus-frames-<token>-<pid>-<random>``. Servers that share /dev/shm across PID namespaces
(``--ipc=host``, pods sharing IPC) see each other's PIDs as dead; the token keeps ``sweep_orphans`` to the blocks
whose PID means something here.

Shared memory is an optimisation, never a condition of decoding: when a block cannot be made, reserved or mapped
(EMFILE, EACCES, ENOSPC, unlinked by someone else), the slot's clips go through the pipe, and the slot tries again
only after ``backoff_s`` (one warning per try, not one per job).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SHM_PREFIX = "adafocus-frames-"
SHM_DIR = Path("/dev/shm")  # where Linux lists POSIX shared memory
MIN_BLOCK_BYTES = 64 * 1024
SHM_BACKOFF_S = 60.0  # a slot whose block failed goes through the pipe this long before it tries again


@functools.cache
def host_token() -> str:
    """This boot's and PID namespace's token (12 hex digits): PIDs in block names are comparable within it only.
    Without /proc, a token of this process alone: no other pool's block ever matches it, so none is swept."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return secrets.token_hex(6)
    return hashlib.blake2b(f"{boot}:{namespace}".encode(), digest_size=6).hexdigest()


def block_prefix(pid: int, token: str | None = None) -> str:
    """The name prefix of the blocks of the pool in process ``pid`` (this host's token by default)."""
    return f"{SHM_PREFIX}{token or host_token()}-{pid}-"


class FrameBlock:
    """One worker slot's block for uploads and decoded clips, owned by the pool's process (which alone unlinks it).

    ``fit`` grows it for a larger clip (a new block; the old one is unlinked), ``read`` copies a clip out,
    ``back_off`` drops it and sends the slot's clips through the pipe for ``backoff_s``.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, backoff_s: float = SHM_BACKOFF_S) -> None:
        self.shm: SharedMemory | None = None
        self.clock, self.backoff_s = clock, backoff_s
        self.retry_at: float | None = None  # while the clock is before this, no block: the pipe

    @property
    def name(self) -> str | None:
        return None if self.shm is None else self.shm.name

    def fit(self, nbytes: int) -> str | None:
        """The block's name, after growing it (to the next power of two, at least 64 KiB) when it is too small;
        None when the slot is backing off or the block cannot be made (the clip then goes through the pipe)."""
        if self.retry_at is not None and self.clock() < self.retry_at:
            return None
        if self.shm is None or self.shm.size < nbytes:
            self.release()
            try:
                self.shm = _create(max(MIN_BLOCK_BYTES, 1 << (nbytes - 1).bit_length()))
            except OSError as exc:  # EMFILE, EACCES, ENOSPC: the server's resources, not the upload's fault
                self.back_off(f"cannot make a {nbytes}-byte decoder block in /dev/shm ({exc})")
                return None
        self.retry_at = None
        return self.shm.name

    def back_off(self, reason: str) -> None:
        """Drop the block; the slot's clips go through the pipe until ``backoff_s`` has passed."""
        self.release()
        self.retry_at = self.clock() + self.backoff_s
        log.warning("%s; this slot's clips go through the pipe for %.0f s", reason, self.backoff_s)

    def write(self, offset: int, data: bytes) -> None:
        assert self.shm is not None and self.shm.buf is not None
        self.shm.buf[offset : offset + len(data)] = data

    def read(self, shape: tuple[int, ...]) -> np.ndarray:
        assert self.shm is not None
        return np.ndarray(shape, np.uint8, buffer=self.shm.buf).copy()  # the slot's next job reuses the block

    def release(self) -> None:
        if self.shm is not None:
            shm, self.shm = self.shm, None
            shm.close()
            _unlink(shm)


def _create(size: int) -> SharedMemory:
    """A new block of ``size`` bytes with its pages reserved, or OSError (nothing left behind)."""
    shm = SharedMemory(f"{block_prefix(os.getpid())}{secrets.token_hex(6)}", create=True, size=size)
    try:
        _reserve(shm)
    except OSError:
        shm.close()
        _unlink(shm)
        raise
    return shm


def _unlink(shm: SharedMemory) -> None:
    try:
        shm.unlink()
    except FileNotFoundError:  # unlinked by someone else: still ours to forget (the tracker would warn at exit)
        resource_tracker.unregister(f"/{shm.name}", "shared_memory")


def _reserve(shm: SharedMemory) -> None:
    """Allocate the block's pages in /dev/shm now: a tmpfs that runs out of room later (Docker's default is 64 MiB)
    would kill the writing process with SIGBUS; here it is an OSError (ENOSPC) the pool routes around."""
    path = SHM_DIR / shm.name.lstrip("/")
    if not path.exists():
        return  # not Linux's /dev/shm: nothing to reserve through
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, shm.size)
    finally:
        os.close(fd)


def sweep_orphans(directory: Path = SHM_DIR, token: str | None = None) -> list[str]:
    """Unlink the blocks of this host's pools whose process is gone without unlinking them (killed together with
    multiprocessing's resource tracker, e.g. SIGKILL to a process group); returns their names. Blocks with another
    token (another PID namespace sharing /dev/shm, or another boot's) are left alone: their PIDs mean nothing here."""
    removed = []
    prefix = f"{SHM_PREFIX}{token or host_token()}-"
    for path in directory.glob(f"{prefix}*"):
        pid = path.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


# ---------------------------------------------------------------------------------------------- the worker's side
def attach(held: SharedMemory | None, name: str) -> SharedMemory:
    """The worker's mapping of its slot's block (a new one after the pool grew it); OSError when it cannot."""
    if held is not None and held.name == name:
        return held
    if held is not None:
        held.close()
    return SharedMemory(name)


def upload_in(block: SharedMemory, offset: int, nbytes: int) -> bytes:
    """The upload the pool wrote into the block (after the clip's area)."""
    assert block.buf is not None
    return bytes(block.buf[offset : offset + nbytes])


def reply(
    frames: np.ndarray, block: SharedMemory | None, seconds: float, info: tuple[Any, ...] = ()
) -> tuple[Any, ...]:
    """A clip goes into the shared block (only its shape through the pipe); anything else is pickled; ``info``
    (how the clip was sampled) follows the decode time."""
    if block is None or frames.dtype != np.uint8 or frames.nbytes > block.size:
        return ("ok", frames, seconds, *info)
    view = np.ndarray(frames.shape, np.uint8, buffer=block.buf)  # (T, size, size, 3) over the shared block
    view[...] = frames
    del view  # no export of the block's buffer may outlive this call (close() would fail)
    return ("shm", frames.shape, seconds, *info)
