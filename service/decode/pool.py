"""Decoding: a supervised pool of PyAV decoder processes (the upload itself is read by ``service.classify.upload``).

FFmpeg can crash its process on malformed input (SIGSEGV, PyAV #2344), so every decode runs in a worker
process. Each worker serves one job at a time over its own pipe, watched by one supervisor thread: when a worker
dies (any signal) or overruns its time limit, only the job it held fails (``DecoderCrashed`` /
``DecodeError("decode_timeout")``), and the supervisor starts a fresh process. Workers are started with
``spawn``: the server process holds torch threads, which a fork would copy in an unusable state; and with an
environment that holds none of the server's secrets (``service.decode.isolation``).

Uploads go in and frames come back through shared memory, not the pipe: each worker slot has one block
(``service.decode.shared_memory.FrameBlock``), created and unlinked by the pool's process only, that holds the upload
(when it is in memory) and that the worker writes its clip into; the supervisor copies the clip out before the slot
takes its next job. A crashed, killed or timed-out worker therefore leaves nothing behind (its replacement reuses the
slot's block), a cancelled request holds no block, and ``shutdown`` unlinks them all. A block that cannot be made or
mapped is the server's problem, never the upload's: the job goes through the pipe (``no_block``), and no worker is
restarted for it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any, Literal, NoReturn, Protocol

import numpy as np

from model.video import Clip, DecodeError, DecodeLimits, Sampling, Source, encode_video, sample_clip
from service.decode.isolation import IsolatedContext
from service.decode.priority import run_niced
from service.decode.shared_memory import SHM_BACKOFF_S, FrameBlock, attach, reply, sweep_orphans, upload_in
from service.decode.timeline import TimelineDone, TimelineJob, TimelineSink, receive_timeline, serve_timeline

log = logging.getLogger(__name__)

JobFn = Callable[[Source, int, int, DecodeLimits], "Clip | np.ndarray"]  # an array: frames of ``limits.sampling``
ACK_TIMEOUT_S = 10.0  # a live worker acknowledges a job at once; silence this long means it is gone
STARTUP_TIMEOUT_S = 120.0  # a fresh worker imports numpy and PyAV before it reports ready
# Extra wall time a worker gets past the decoder's own max_decode_s check before it is killed.
KILL_GRACE_S = 2.0
MAX_SHARED_UPLOAD = 4 * 1024 * 1024  # uploads up to this go to a worker through its block (bounds the block's size)


class DecoderCrashed(Exception):
    """The decoder worker died (a signal) while decoding this upload; the pool replaced it."""


class DecodeBusy(Exception):
    """Too many uploads are waiting for a decoder."""


@dataclass(frozen=True)
class DecodeJob:
    source: Source
    num_frames: int
    size: int
    sampling: Literal["exact", "fast"] | None = None  # None: the pool's (``DecodeLimits.sampling``)
    timeline: TimelineJob | None = None  # set: a timeline of segment clips (``submit_timeline``)


@dataclass(frozen=True)
class Decoded:
    frames: np.ndarray  # (T, size, size, 3) uint8
    seconds: float  # decode wall time inside the worker
    sampling: Sampling = "exact"  # the sampling that ran
    max_offset_s: float = 0.0  # fast: the largest time offset of a taken frame from its exact target
    backend: str = "cpu"  # the decoder that ran: `cpu` (PyAV in a worker process) or `nvdec`


class FrameDecoder(Protocol):
    """What the server decodes with: ``DecodePool`` here, or a fleet's decode tier (fleet/decode_tier.py)."""

    def start(self) -> None: ...

    def submit(self, job: DecodeJob) -> concurrent.futures.Future[Decoded]: ...

    def submit_timeline(self, job: DecodeJob, sink: TimelineSink) -> concurrent.futures.Future[TimelineDone]: ...

    @property
    def pending(self) -> int: ...

    def shutdown(self) -> None: ...


def _hand_over(block: FrameBlock, job: DecodeJob, max_upload: int) -> tuple[DecodeJob, str | None, int]:
    """(job, block name, upload bytes) as the worker gets them: an upload held in memory (up to ``max_upload``
    bytes) is written into the block after the clip's area, so that the pipe carries only its length; a larger
    one, or a spooled file's path, goes through the pipe as it is (as everything does while the block is off)."""
    clip = _clip_nbytes(job)
    if not isinstance(job.source, bytes) or len(job.source) > max_upload:
        return job, block.fit(clip), 0
    name = block.fit(clip + len(job.source))
    if name is None:
        return job, None, 0
    block.write(clip, job.source)
    return dataclasses.replace(job, source=b""), name, len(job.source)


def _clip_nbytes(job: DecodeJob) -> int:
    return job.num_frames * job.size * job.size * 3  # (T, size, size, 3) uint8


def _worker_main(conn: Connection, job_fn: JobFn, limits: DecodeLimits) -> None:
    """Worker process: decode jobs from the pipe until it closes; errors go back as values."""
    # Ctrl-C in a terminal signals the whole process group: the server drains, so its decoders must not die
    # under the requests in flight; they stop when the server closes their pipes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn.send(("ready",))  # imports done: from here on, time limits measure decoding only
    block: SharedMemory | None = None
    while True:
        try:
            job, block_name, upload = conn.recv()
            conn.send(("started",))
        except (EOFError, OSError):
            return
        try:  # None: no block for the slot now, everything goes through the pipe
            block = attach(block, block_name) if block_name is not None else block
        except OSError as exc:  # unlinked or unreachable: the server's fault; the pool resends through the pipe
            block = None
            conn.send(("no_block", f"{type(exc).__name__}: {exc}"))
            continue
        _decode_one(conn, job_fn, limits, job, block if block_name is not None else None, upload)


def _decode_one(
    conn: Connection, job_fn: JobFn, limits: DecodeLimits, job: DecodeJob, shared: SharedMemory | None, upload: int
) -> None:
    started = time.monotonic()
    try:
        source = upload_in(shared, _clip_nbytes(job), upload) if shared is not None and upload else job.source
        if job.timeline is not None:
            timeline = job.timeline
            run_niced(lambda: serve_timeline(conn, job, timeline, limits, source, shared), timeline.nice)
            return
        if job.sampling is not None and job.sampling != limits.sampling:
            limits = dataclasses.replace(limits, sampling=job.sampling)
        clip = job_fn(source, job.num_frames, job.size, limits)
        if not isinstance(clip, Clip):  # a job function that returns bare frames sampled as the limits say
            clip = Clip(clip, limits.sampling, 0.0, 0)
        info = (clip.sampling, clip.max_offset_s, clip.backend)
        conn.send(reply(clip.frames, shared, time.monotonic() - started, info))
    except DecodeError as exc:
        conn.send(("decode_error", exc.code, exc.message))
    except Exception as exc:  # a decoder bug must not kill the worker: report it as undecodable input
        conn.send(("decode_error", "undecodable", f"decoder failure: {type(exc).__name__}: {exc}"))


class _Worker:
    """One decoder process and its pipe; restarted by its supervisor thread when it dies."""

    def __init__(self, ctx: Any, job_fn: JobFn, limits: DecodeLimits, block: FrameBlock) -> None:
        self.ctx, self.job_fn, self.limits = ctx, job_fn, limits
        self.process: Any = None
        self.conn: Connection | None = None
        self.restarts = 0
        self.broken: str | None = None  # why the process must be replaced before its next job (restart reason)
        self.block = block  # the slot's, not the process's: a replacement worker writes into it too

    def start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.process = self.ctx.Process(
            target=_worker_main, args=(child, self.job_fn, self.limits), name="adafocus-decoder", daemon=True
        )
        self.process.start()
        child.close()
        self.conn = parent

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        assert self.conn is not None
        try:
            if self.conn.poll(timeout) and self.conn.recv() == ("ready",):
                return
        except (EOFError, OSError):
            pass
        raise RuntimeError(f"decoder worker {self.pid} did not start (exit code {self.process.exitcode})")

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        if self.process is not None:
            self.process.join(timeout=1.0)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(timeout=1.0)
        self.block.release()

    def exit_status(self) -> str:
        """How the process ended, once it has (reaped first, so that a signal is not read as "exit code None")."""
        if self.process is None:
            return "no process"
        self.process.join(timeout=1.0)
        code = self.process.exitcode
        if code is None:
            return "still running"
        if code < 0:
            try:
                return f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def kill_and_restart(self) -> None:
        self.broken = None
        if self.process is not None and self.process.is_alive():
            self.process.kill()
        if self.process is not None:
            self.process.join(timeout=2.0)
        if self.conn is not None:
            self.conn.close()
        self.restarts += 1
        self.start()
        self.wait_ready()

    @property
    def pid(self) -> int | None:
        pid = None if self.process is None else self.process.pid  # None too while a replacement is starting
        return None if pid is None else int(pid)


class DecodePool:
    """``workers`` supervised decoder processes; ``submit`` returns a future of ``Decoded``."""

    def __init__(
        self,
        workers: int,
        limits: DecodeLimits,
        max_pending: int = 256,
        job_fn: JobFn = sample_clip,
        on_restart: Callable[[str], None] | None = None,
        start_method: str = "spawn",
        kill_grace_s: float = KILL_GRACE_S,
        max_shared_upload: int = MAX_SHARED_UPLOAD,
        clock: Callable[[], float] = time.monotonic,
        shm_backoff_s: float = SHM_BACKOFF_S,
    ) -> None:
        self.limits = limits
        self.max_shared_upload = max_shared_upload  # larger uploads held in memory go through the pipe
        self.kill_grace_s = kill_grace_s
        self.max_pending = max_pending
        self.on_restart = on_restart or (lambda reason: None)
        # spawn: each worker starts with only the harmless part of the server's environment (no secrets)
        ctx = IsolatedContext(os.environ) if start_method == "spawn" else mp.get_context(start_method)
        self._workers = [_Worker(ctx, job_fn, limits, FrameBlock(clock, shm_backoff_s)) for _ in range(workers)]
        self._jobs: queue.Queue[tuple[DecodeJob, concurrent.futures.Future[Any], TimelineSink | None] | None] = (
            queue.Queue()
        )
        self._threads: list[threading.Thread] = []
        self._pending = 0
        self._lock = threading.Lock()
        self._closed = False
        # timelines hold a worker for a whole long video: one worker always stays free for single clips
        self._timelines = threading.BoundedSemaphore(max(1, workers - 1))

    def start(self) -> None:
        orphans = sweep_orphans()
        if orphans:
            log.warning("unlinked %d shared-memory block(s) left by dead decoder pools: %s", len(orphans), orphans)
        for worker in self._workers:
            worker.start()  # all processes import in parallel
        for i, worker in enumerate(self._workers):
            worker.wait_ready()
            name = f"decode-supervisor-{i}"
            thread = threading.Thread(target=self._supervise, args=(worker,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, job: DecodeJob) -> concurrent.futures.Future[Decoded]:
        """Queue a decode; raises ``DecodeBusy`` when ``max_pending`` jobs already wait or run."""
        return self._submit(job, None)

    def submit_timeline(self, job: DecodeJob, sink: TimelineSink) -> concurrent.futures.Future[TimelineDone]:
        """Queue a timeline decode (``job.timeline`` set): its segments go to ``sink`` as they are decoded
        (``service.decode.timeline``); the future's result is the pass's summary."""
        assert job.timeline is not None
        if not self._timelines.acquire(blocking=False):
            raise DecodeBusy("every decoder a timeline may use is decoding one; retry later")
        try:
            future = self._submit(job, sink)
        except BaseException:
            self._timelines.release()
            raise
        future.add_done_callback(lambda _: self._timelines.release())
        return future

    def _submit(self, job: DecodeJob, sink: TimelineSink | None) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise DecodeBusy("the decoder pool is shut down")
            if self._pending >= self.max_pending:
                raise DecodeBusy(f"{self._pending} uploads are waiting for a decoder; retry later")
            self._pending += 1
        future.add_done_callback(self._done)
        self._jobs.put((job, future, sink))
        return future

    def _done(self, _: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._pending -= 1

    @property
    def pending(self) -> int:
        return self._pending

    def worker_pids(self) -> list[int]:
        return [pid for pid in (w.pid for w in self._workers) if pid is not None]

    @property
    def restarts(self) -> int:
        return sum(w.restarts for w in self._workers)

    def shared_blocks(self) -> list[str]:
        """Names of the shared-memory blocks the pool holds now (at most one per worker)."""
        return [name for name in (w.block.name for w in self._workers) if name is not None]

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=self.limits.max_decode_s + self.kill_grace_s + 1.0)
        for worker in self._workers:
            worker.stop()

    def _supervise(self, worker: _Worker) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, future, sink = item
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while waiting
            try:
                future.set_result(self._run(worker, job) if sink is None else receive_timeline(self, worker, job, sink))
            except BaseException as exc:
                future.set_exception(exc)
            if worker.broken is not None:  # the job is answered first; only then is its crashed worker replaced
                self.on_restart(worker.broken)
                try:
                    worker.kill_and_restart()
                except Exception:  # the next job finds it dead and tries again ("died_idle")
                    log.exception("replacing decoder worker %s failed", worker.pid)

    def _run(self, worker: _Worker, job: DecodeJob) -> Decoded:
        reply = self._exchange(worker, job)
        if reply[0] == "no_block":  # the worker could not map the slot's block: the server's fault, not the upload's
            worker.block.back_off(f"decoder worker {worker.pid} could not map its shared block ({reply[1]})")
            reply = self._exchange(worker, job, shared=False)  # through the pipe, whatever the clock says
        if reply[0] == "shm":
            return Decoded(worker.block.read(reply[1]), float(reply[2]), reply[3], float(reply[4]), reply[5])
        if reply[0] == "ok":
            return Decoded(reply[1], float(reply[2]), reply[3], float(reply[4]), reply[5])
        raise DecodeError(reply[1], reply[2])

    def _exchange(self, worker: _Worker, job: DecodeJob, shared: bool = True) -> tuple[Any, ...]:
        """The worker's reply to the job, within its time limit (``shared``: through the slot's block if it has one)."""
        # A worker acknowledges a job before it starts decoding, so a worker that died while idle (its death
        # noticed only now) is told apart from one that the job itself crashed: the job then goes to a fresh one.
        if not self._deliver(worker, job, self.max_shared_upload, shared):
            log.warning("decoder worker %s was dead before it took a job; replacing it", worker.pid)
            worker.kill_and_restart()
            self.on_restart("died_idle")
            if not self._deliver(worker, job, self.max_shared_upload, shared):
                raise DecoderCrashed("a fresh decoder worker failed to take the job")
        assert worker.conn is not None
        try:
            if not worker.conn.poll(self.limits.max_decode_s + self.kill_grace_s):
                log.warning("decoder worker %s overran %.1f s; killing it", worker.pid, self.limits.max_decode_s)
                worker.process.kill()
                worker.broken = "timeout"
                raise DecodeError("decode_timeout", f"decoding took longer than {self.limits.max_decode_s:.1f} s")
            return tuple(worker.conn.recv())
        except (EOFError, OSError):
            self._died(worker)
            raise

    @staticmethod
    def _died(worker: _Worker) -> NoReturn:
        """The worker's pipe broke under a job: it crashed on the file (it is replaced once the job is answered)."""
        status = worker.exit_status()
        log.warning("decoder worker %s died (%s) decoding an upload; replacing it", worker.pid, status)
        worker.broken = "crashed"
        raise DecoderCrashed(f"the video decoder crashed on this file ({status})") from None

    @staticmethod
    def _deliver(worker: _Worker, job: DecodeJob, max_upload: int, shared: bool) -> bool:
        """Send the job and wait for the worker's acknowledgement; False when the worker is dead."""
        if worker.conn is None or worker.process is None or not worker.process.is_alive():
            return False
        # no OSError from the block: one that cannot be made means the pipe, never a dead worker
        message = _hand_over(worker.block, job, max_upload) if shared else (job, None, 0)
        try:
            worker.conn.send(message)
            if not worker.conn.poll(ACK_TIMEOUT_S):
                return False
            return bool(worker.conn.recv() == ("started",))
        except (EOFError, OSError):
            return False


def self_test_video(directory: Path, num_frames: int, size: int) -> Path:
    """A tiny H.264 MP4 encoded now with PyAV, for the start-up decoder self-test."""
    frames = np.zeros((max(4, num_frames), 2 * size, 2 * size, 3), np.uint8)  # (T, H, W, 3)
    frames[..., 0] = np.linspace(0, 255, frames.shape[0], dtype=np.uint8)[:, None, None]
    return encode_video(directory / "self-test.mp4", frames, "libx264", fps=8)
