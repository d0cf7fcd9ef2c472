"""Upload spooling and the supervised decoder pool, with real worker processes (crashes are real signals)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from model.video import DecodeError, DecodeLimits, encode_video
from service.decode import DecodeBusy, DecodeJob, DecodePool, DecoderCrashed
from service.errors import to_api_error
from service.upload import BadUpload, NotMultipart, UploadSpool, UploadTooLarge, read_upload
from tests.service.conftest import ramp, wait_until_dead
from tests.service.jobs import scripted_job


@pytest.fixture(scope="module")
def pool() -> DecodePool:
    pool = DecodePool(2, DecodeLimits(max_decode_s=0.5), max_pending=8, job_fn=scripted_job, kill_grace_s=0.2)
    pool.start()
    yield pool  # type: ignore[misc]
    pool.shutdown()


def test_a_crashing_worker_fails_only_its_own_job_and_is_replaced(pool: DecodePool) -> None:
    before = pool.restarts
    crash = pool.submit(DecodeJob(b"segfault", 2, 4))
    others = [pool.submit(DecodeJob(b"x" * n, 2, 4)) for n in range(1, 6)]
    with pytest.raises(DecoderCrashed, match="crashed"):
        crash.result(timeout=30)
    assert [f.result(timeout=30).frames[0, 0, 0, 0] for f in others] == [1, 2, 3, 4, 5]
    assert pool.restarts == before + 1
    assert pool.submit(DecodeJob(b"ok", 2, 4)).result(timeout=30).frames.shape == (2, 4, 4, 3)


def test_a_hung_decode_is_killed_at_its_time_limit(pool: DecodePool) -> None:
    before = pool.restarts
    started = time.monotonic()
    with pytest.raises(DecodeError) as info:
        pool.submit(DecodeJob(b"hang", 2, 4)).result(timeout=30)
    assert info.value.code == "decode_timeout"
    assert time.monotonic() - started < 5
    assert pool.restarts == before + 1


def test_decode_errors_and_bugs_come_back_as_decode_errors(pool: DecodePool) -> None:
    codes = []
    for source in (b"bad", b"bug"):
        with pytest.raises(DecodeError) as info:
            pool.submit(DecodeJob(source, 2, 4)).result(timeout=30)
        codes.append(info.value.code)
    assert codes == ["zero_frames", "undecodable"]


def test_a_worker_killed_while_idle_is_replaced_before_the_next_job(pool: DecodePool) -> None:
    pids = pool.worker_pids()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for pid in pids:  # dead (a zombie until the pool reaps it): the event the pool must notice
        wait_until_dead(pid)
    results = [pool.submit(DecodeJob(b"abc", 2, 4)) for _ in range(4)]
    assert [f.result(timeout=30).frames[0, 0, 0, 0] for f in results] == [3, 3, 3, 3]


def test_pending_jobs_are_bounded() -> None:
    pool = DecodePool(1, DecodeLimits(), max_pending=1, job_fn=scripted_job)  # not started: jobs stay queued
    pool.submit(DecodeJob(b"a", 1, 1))
    with pytest.raises(DecodeBusy):
        pool.submit(DecodeJob(b"b", 1, 1))


def test_real_decode_in_a_worker(tmp_path: Path) -> None:
    path = encode_video(tmp_path / "v.webm", ramp(8, 32, 48), "libvpx-vp9")
    pool = DecodePool(1, DecodeLimits())
    pool.start()
    try:
        decoded = pool.submit(DecodeJob(str(path), 4, 16)).result(timeout=60)
    finally:
        pool.shutdown()
    assert decoded.frames.shape == (4, 16, 16, 3)
    assert decoded.seconds > 0


def test_spool_moves_to_disk_past_its_memory_size_and_caps_the_total() -> None:
    spool = UploadSpool(max_bytes=10, spool_bytes=4)
    spool.write(b"abc")
    assert (spool.on_disk, spool.source()) == (False, b"abc")
    spool.write(b"defg")
    source = spool.source()
    assert spool.on_disk and isinstance(source, str) and Path(source).read_bytes() == b"abcdefg"
    with pytest.raises(UploadTooLarge):
        spool.write(b"hijk")
    spool.close()
    assert not Path(source).exists()


def multipart(fields: dict[str, bytes], boundary: str = "XyZ") -> bytes:
    parts = []
    for name, value in fields.items():
        filename = '; filename="v.mp4"' if name == "video" else ""
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{filename}\r\n\r\n'.encode())
        parts.append(value + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts)


async def chunked(body: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


def upload(body: bytes, max_bytes: int = 1000, content_type: str = "multipart/form-data; boundary=XyZ") -> object:
    return asyncio.run(read_upload(content_type, None, chunked(body), max_bytes, 16))


def test_read_upload_streams_the_video_part_and_small_fields() -> None:
    result = upload(multipart({"budget": b"low", "video": b"V" * 40, "explain": b"true"}))
    assert result.fields == {"budget": "low", "explain": "true"}  # type: ignore[attr-defined]
    assert result.spool.size == 40 and result.spool.on_disk  # type: ignore[attr-defined]
    result.spool.close()  # type: ignore[attr-defined]


def test_read_upload_rejects() -> None:
    with pytest.raises(UploadTooLarge):
        upload(multipart({"video": b"V" * 2000}))
    with pytest.raises(UploadTooLarge):  # Content-Length alone is enough
        asyncio.run(read_upload("multipart/form-data; boundary=XyZ", str(10**9), chunked(b""), 1000, 16))
    with pytest.raises(BadUpload, match="no `video` part"):
        upload(multipart({"budget": b"low"}))
    with pytest.raises(NotMultipart) as info:
        upload(b"{}", content_type="application/json")
    error = to_api_error(info.value)
    assert (error.status, error.code) == (415, "unsupported_media_type")

