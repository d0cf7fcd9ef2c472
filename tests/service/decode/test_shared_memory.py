"""Decoded clips travel through shared memory, and no block outlives its pool: crashes, kills, time-outs,
cancellations and larger clips all leave /dev/shm as the pool's own books say, and shutdown leaves nothing."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import signal
import subprocess
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np
import pytest

from model.video import DecodeError, DecodeLimits, decode_clip, encode_video
from service.decode import shared_memory as shm
from service.decode.pool import DecodeJob, DecodePool, DecoderCrashed
from service.decode.shared_memory import MIN_BLOCK_BYTES, SHM_PREFIX, block_prefix, host_token
from tests.service.conftest import ManualClock, ramp, wait_until, wait_until_dead
from tests.service.jobs import scripted_job

SHM = Path("/dev/shm")
pytestmark = pytest.mark.skipif(not SHM.is_dir(), reason="POSIX shared memory is listed under /dev/shm on Linux")


def blocks_on_disk() -> set[str]:
    """This process's pool blocks as the kernel lists them."""
    return {p.name for p in SHM.glob(f"{block_prefix(os.getpid())}*")}


def test_clips_come_back_through_one_shared_block_per_worker() -> None:
    pool = DecodePool(2, DecodeLimits(), job_fn=scripted_job)
    pool.start()
    try:
        assert pool.shared_blocks() == [] and blocks_on_disk() == set()  # blocks are made for the first job
        results = [pool.submit(DecodeJob(b"x" * n, 3, 5)) for n in range(1, 9)]
        clips = [f.result(timeout=30).frames for f in results]
        assert [int(c[0, 0, 0, 0]) for c in clips] == list(range(1, 9))
        assert all(c.shape == (3, 5, 5, 3) and c.dtype == np.uint8 and c.flags.owndata for c in clips)
        names = pool.shared_blocks()
        assert 1 <= len(names) <= 2 and set(names) == blocks_on_disk()
        assert all((SHM / name).stat().st_size >= 3 * 5 * 5 * 3 for name in names)
        clips[0][...] = 0  # a clip is the caller's own copy: the block is free for the next job
        assert int(pool.submit(DecodeJob(b"abc", 3, 5)).result(timeout=30).frames.max()) == 3
    finally:
        pool.shutdown()
    assert pool.shared_blocks() == [] and blocks_on_disk() == set()


def test_crashes_kills_and_timeouts_leave_only_the_pools_blocks() -> None:
    pool = DecodePool(1, DecodeLimits(max_decode_s=0.5), job_fn=scripted_job, kill_grace_s=0.2)
    pool.start()
    try:
        assert pool.submit(DecodeJob(b"ok", 2, 4)).result(timeout=30).frames.shape == (2, 4, 4, 3)
        (name,) = pool.shared_blocks()
        with pytest.raises(DecoderCrashed):
            pool.submit(DecodeJob(b"segfault", 2, 4)).result(timeout=30)
        with pytest.raises(DecodeError) as timeout:
            pool.submit(DecodeJob(b"hang", 2, 4)).result(timeout=30)
        assert timeout.value.code == "decode_timeout"
        assert pool.submit(DecodeJob(b"ok", 2, 4)).result(timeout=30).frames.shape == (2, 4, 4, 3)  # replaced
        (pid,) = pool.worker_pids()
        os.kill(pid, signal.SIGKILL)  # killed while idle
        wait_until_dead(pid)
        assert pool.submit(DecodeJob(b"abcd", 2, 4)).result(timeout=30).frames[0, 0, 0, 0] == 4
        wait_until(lambda: pool.restarts == 3, what="three replacements")
        assert pool.shared_blocks() == [name] and blocks_on_disk() == {name}  # the slot's block, reused throughout
    finally:
        pool.shutdown()
    assert blocks_on_disk() == set()


def test_a_larger_clip_replaces_the_block_and_unlinks_the_old_one() -> None:
    pool = DecodePool(1, DecodeLimits(), job_fn=scripted_job)
    pool.start()
    try:
        pool.submit(DecodeJob(b"a", 2, 4)).result(timeout=30)
        (small,) = pool.shared_blocks()
        assert (SHM / small).stat().st_size == MIN_BLOCK_BYTES
        big = pool.submit(DecodeJob(b"ab", 4, 128)).result(timeout=30).frames  # 196,610 bytes with its upload
        assert big.shape == (4, 128, 128, 3) and int(big.min()) == int(big.max()) == 2
        (large,) = pool.shared_blocks()
        assert large != small and blocks_on_disk() == {large} and (SHM / large).stat().st_size == 256 * 1024
        assert pool.submit(DecodeJob(b"abc", 2, 4)).result(timeout=30).frames.shape == (2, 4, 4, 3)
        assert pool.shared_blocks() == [large]  # a smaller clip fits the block it has
    finally:
        pool.shutdown()
    assert blocks_on_disk() == set()


def test_a_pool_unlinks_the_blocks_of_dead_pools_at_start() -> None:
    """A pool killed with its resource tracker (SIGKILL to the process group) cannot unlink its blocks itself.
    Only blocks with this host's token are judged by their PID: another PID namespace sharing /dev/shm
    (``--ipc=host``, pods sharing IPC) has PIDs that are dead here while its server is alive."""
    dead = subprocess.Popen(["true"])
    assert dead.wait() == 0  # its pid has exited and been reaped
    orphan = SHM / f"{block_prefix(dead.pid)}0123456789ab"
    live = SHM / f"{block_prefix(os.getpid())}0123456789ab"  # this process is alive: its blocks stay
    other_token = "f" * 12 if host_token() != "f" * 12 else "e" * 12
    foreign = SHM / f"{block_prefix(dead.pid, other_token)}0123456789ab"  # another namespace's server: not ours
    tokenless = SHM / f"{SHM_PREFIX}{dead.pid}-0123456789ab"  # no token: its PID's namespace is unknown
    for block in (orphan, live, foreign, tokenless):
        block.write_bytes(b"x" * 16)
    pool = DecodePool(1, DecodeLimits(), job_fn=scripted_job)
    try:
        pool.start()
        assert [b.exists() for b in (orphan, live, foreign, tokenless)] == [False, True, True, True]
    finally:
        pool.shutdown()
        for block in (orphan, live, foreign, tokenless):
            block.unlink(missing_ok=True)


def test_the_host_token_names_this_boot_and_pid_namespace() -> None:
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    namespace = os.stat("/proc/self/ns/pid").st_ino
    assert host_token() == hashlib.blake2b(f"{boot}:{namespace}".encode(), digest_size=6).hexdigest()
    assert block_prefix(42) == f"{SHM_PREFIX}{host_token()}-42-"


def test_cancelled_requests_hold_no_block() -> None:
    """What a disconnecting client does (``asyncio.wrap_future(...).cancel()``), while its decode runs or waits."""
    pool = DecodePool(1, DecodeLimits(), job_fn=scripted_job)
    pool.start()

    async def cancel_all() -> None:
        waiting = [asyncio.wrap_future(pool.submit(DecodeJob(b"x" * n, 2, 4))) for n in range(1, 7)]
        await asyncio.sleep(0)
        for future in waiting:
            future.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)

    try:
        asyncio.run(cancel_all())
        wait_until(lambda: pool.pending == 0, what="the pool to settle")
        assert len(pool.shared_blocks()) <= 1 and blocks_on_disk() == set(pool.shared_blocks())
        assert pool.submit(DecodeJob(b"abcdefg", 2, 4)).result(timeout=30).frames[0, 0, 0, 0] == 7
    finally:
        pool.shutdown()
    assert blocks_on_disk() == set()


def test_real_uploads_through_shared_memory_decode_as_the_decoder_does(tmp_path: Path) -> None:
    paths = [encode_video(tmp_path / f"v{i}.mp4", ramp(12, 48, 64, seed=i), "libx264") for i in range(3)]
    pool = DecodePool(2, DecodeLimits())
    pool.start()
    try:
        futures = [pool.submit(DecodeJob(p.read_bytes(), 6, 32)) for p in paths * 2]  # uploads held in memory
        clips = [f.result(timeout=60).frames for f in futures]
        sizes = [(SHM / name).stat().st_size for name in pool.shared_blocks()]
        assert min(sizes) >= 6 * 32 * 32 * 3 + min(p.stat().st_size for p in paths)  # the upload went in the block
        spooled = pool.submit(DecodeJob(str(paths[0]), 6, 32)).result(timeout=60).frames  # a spooled file's path
    finally:
        pool.shutdown()
    np.testing.assert_array_equal(spooled, clips[0])
    for path, clip in zip(paths * 2, clips, strict=True):
        np.testing.assert_array_equal(clip, decode_clip(str(path), 6, 32))
    assert blocks_on_disk() == set()


def test_uploads_over_the_shared_cap_go_through_the_pipe(tmp_path: Path) -> None:
    path = encode_video(tmp_path / "v.mp4", ramp(12, 48, 64), "libx264")
    pool = DecodePool(1, DecodeLimits(), max_shared_upload=0)  # every upload held in memory is over the cap
    pool.start()
    try:
        clip = pool.submit(DecodeJob(path.read_bytes(), 6, 32)).result(timeout=60).frames
        (name,) = pool.shared_blocks()
        assert (SHM / name).stat().st_size == MIN_BLOCK_BYTES  # the clip's area only: the upload did not go in
    finally:
        pool.shutdown()
    np.testing.assert_array_equal(clip, decode_clip(str(path), 6, 32))
    assert blocks_on_disk() == set()


# ---------------------------------------------------------------------------------------------- no shared memory
def refuse_reservation(fd: int, offset: int, length: int) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def refuse_creation(name: str | None = None, create: bool = False, size: int = 0) -> SharedMemory:
    raise OSError(errno.EMFILE, "Too many open files")


def pipe_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records
        if r.name == "service.decode.shared_memory" and "through the pipe" in r.message
    ]


@pytest.mark.parametrize(
    ("target", "refusal", "cause"),
    [(os, "posix_fallocate", "No space left on device"), (shm, "SharedMemory", "Too many open files")],
    ids=["reservation_enospc", "creation_emfile"],
)
def test_a_block_that_cannot_be_made_sends_clips_through_the_pipe_and_warns_once_per_back_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
    target: object, refusal: str, cause: str,
) -> None:
    """The server's /dev/shm (full, or out of descriptors) is not the upload's fault: the clips decode, no worker
    is replaced or blamed, nothing is left in /dev/shm, and the slot warns once per try, not once per job."""
    path = encode_video(tmp_path / "v.mp4", ramp(12, 48, 64), "libx264")
    clock = ManualClock()
    pool = DecodePool(1, DecodeLimits(), clock=clock, shm_backoff_s=30.0)
    pool.start()
    monkeypatch.setattr(target, refusal, refuse_reservation if refusal == "posix_fallocate" else refuse_creation)
    caplog.set_level(logging.WARNING)
    try:
        pids = pool.worker_pids()
        clips = [pool.submit(DecodeJob(path.read_bytes(), 6, 32)).result(timeout=60).frames for _ in range(3)]
        clips.append(pool.submit(DecodeJob(str(path), 6, 32)).result(timeout=60).frames)  # a spooled file too
        assert len(pipe_warnings(caplog)) == 1 and cause in pipe_warnings(caplog)[0]
        assert pool.shared_blocks() == [] and blocks_on_disk() == set()
        clock.advance(30.0)  # the back-off is over: the slot tries once more, fails once more, warns once more
        clips.append(pool.submit(DecodeJob(path.read_bytes(), 6, 32)).result(timeout=60).frames)
        assert len(pipe_warnings(caplog)) == 2
        assert pool.worker_pids() == pids and pool.restarts == 0
        monkeypatch.undo()  # room again: after the next back-off the slot has its block back
        clock.advance(30.0)
        clips.append(pool.submit(DecodeJob(path.read_bytes(), 6, 32)).result(timeout=60).frames)
        assert len(pool.shared_blocks()) == 1 and blocks_on_disk() == set(pool.shared_blocks())
    finally:
        pool.shutdown()
    expected = decode_clip(str(path), 6, 32)
    for clip in clips:
        np.testing.assert_array_equal(clip, expected)
    assert blocks_on_disk() == set()


def test_a_worker_that_cannot_map_its_block_is_not_a_decode_error(caplog: pytest.LogCaptureFixture) -> None:
    """Its block unlinked by someone else (another server's sweep): the fresh worker that must map it cannot, and
    the job goes through the pipe instead of coming back as undecodable input."""
    clock = ManualClock()
    pool = DecodePool(1, DecodeLimits(), job_fn=scripted_job, clock=clock, shm_backoff_s=30.0)
    pool.start()
    caplog.set_level(logging.WARNING)
    try:
        assert pool.submit(DecodeJob(b"ab", 2, 4)).result(timeout=30).frames[0, 0, 0, 0] == 2
        (name,) = pool.shared_blocks()
        (SHM / name).unlink()
        (pid,) = pool.worker_pids()
        os.kill(pid, signal.SIGKILL)  # its replacement has to map the block by name
        wait_until_dead(pid)
        assert pool.submit(DecodeJob(b"abc", 2, 4)).result(timeout=30).frames[0, 0, 0, 0] == 3
        assert pool.restarts == 1  # the killed worker's replacement only: the failed mapping restarts nothing
        assert pool.shared_blocks() == [] and blocks_on_disk() == set()
        (warning,) = pipe_warnings(caplog)
        assert "could not map its shared block (FileNotFoundError" in warning
        clock.advance(30.0)
        assert pool.submit(DecodeJob(b"abcd", 2, 4)).result(timeout=30).frames[0, 0, 0, 0] == 4
        (fresh,) = pool.shared_blocks()  # a new block after the back-off, which the worker maps
        assert fresh != name and blocks_on_disk() == {fresh} and pool.restarts == 1
    finally:
        pool.shutdown()
    assert blocks_on_disk() == set()
