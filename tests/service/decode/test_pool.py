"""Upload spooling and the supervised decoder pool, with real worker processes (crashes are real signals)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from model.video import DecodeError, DecodeLimits, decode_clip, encode_video
from service.classify.upload import (
    MULTIPART_OVERHEAD,
    BadUpload,
    NotMultipart,
    TooManyFields,
    UploadSpool,
    UploadTooLarge,
    read_upload,
)
from service.decode.pool import DecodeBusy, DecodeJob, DecodePool, DecoderCrashed
from service.http.errors import to_api_error
from service.settings import Settings
from tests.service.conftest import ramp, wait_until, wait_until_dead
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
    wait_until(lambda: pool.restarts == before + 1, what="the crashed worker to be replaced")
    assert pool.submit(DecodeJob(b"ok", 2, 4)).result(timeout=30).frames.shape == (2, 4, 4, 3)


def test_a_hung_decode_is_killed_at_its_time_limit(pool: DecodePool) -> None:
    before = pool.restarts
    started = time.monotonic()
    with pytest.raises(DecodeError) as info:
        pool.submit(DecodeJob(b"hang", 2, 4)).result(timeout=30)
    assert info.value.code == "decode_timeout"
    assert time.monotonic() - started < 5
    wait_until(lambda: pool.restarts == before + 1, what="the overrunning worker to be replaced")


def test_a_crash_is_answered_before_its_worker_is_replaced_and_names_the_signal() -> None:
    """The replacement is held (its restart hook waits on an event): the crashed job fails all the same."""
    replacing, release = threading.Event(), threading.Event()

    def hold_restart(reason: str) -> None:
        replacing.set()
        release.wait(30)

    pool = DecodePool(1, DecodeLimits(), job_fn=scripted_job, on_restart=hold_restart)
    pool.start()
    try:
        crashed = pool.submit(DecodeJob(b"segfault", 2, 4))
        with pytest.raises(DecoderCrashed) as info:
            crashed.result(timeout=30)  # while the replacement has not even started
        assert str(info.value) == "the video decoder crashed on this file (killed by signal SIGSEGV)"
        assert replacing.wait(30) and pool.restarts == 0
        release.set()
        assert pool.submit(DecodeJob(b"ok", 2, 4)).result(timeout=60).frames.shape == (2, 4, 4, 3)
        assert pool.restarts == 1
    finally:
        release.set()
        pool.shutdown()


def test_workers_ignore_sigint_so_that_ctrl_c_drains(pool: DecodePool) -> None:
    pids = pool.worker_pids()
    for pid in pids:
        os.kill(pid, signal.SIGINT)  # what Ctrl-C sends to every process of the terminal's process group
    restarts = pool.restarts
    results = [pool.submit(DecodeJob(b"abcd", 2, 4)) for _ in range(4)]
    assert [f.result(timeout=30).frames[0, 0, 0, 0] for f in results] == [4, 4, 4, 4]
    assert (pool.worker_pids(), pool.restarts) == (pids, restarts)  # nobody died


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


def test_the_pools_sampling_and_a_jobs_own_come_back_with_the_largest_offset(tmp_path: Path) -> None:
    path = encode_video(tmp_path / "gop4.mp4", ramp(32, 32, 32), "libx264", fps=8, gop=4, options={"bf": "0"})
    pool = DecodePool(1, DecodeLimits(sampling="fast", tolerance_s=0.25))
    pool.start()
    try:
        fast = pool.submit(DecodeJob(path.read_bytes(), 8, 16)).result(timeout=60)  # the upload through the block
        exact = pool.submit(DecodeJob(str(path), 8, 16, sampling="exact")).result(timeout=60)
    finally:
        pool.shutdown()
    # 8 targets halfway between the keyframes every 4 frames (0.5 s): fast takes a keyframe 2 frames away from each
    assert (fast.sampling, fast.max_offset_s, exact.sampling, exact.max_offset_s) == ("fast", 0.25, "exact", 0.0)
    np.testing.assert_array_equal(exact.frames, decode_clip(path, 8, 16))
    fast_limits = DecodeLimits(sampling="fast", tolerance_s=0.25)
    np.testing.assert_array_equal(fast.frames, decode_clip(path, 8, 16, fast_limits))
    assert not np.array_equal(fast.frames, exact.frames)


def test_the_sampling_settings_reach_the_decoders_and_refuse_what_they_do_not_know(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ADAFOCUS_DECODE_SAMPLING", "fast")
    monkeypatch.setenv("ADAFOCUS_DECODE_TOLERANCE_S", "0.25")
    limits = Settings().decode_limits()
    assert (limits.sampling, limits.tolerance_s) == ("fast", 0.25)
    for name, value in (("ADAFOCUS_DECODE_SAMPLING", "slow"), ("ADAFOCUS_DECODE_TOLERANCE_S", "-1")):
        monkeypatch.setenv(name, value)
        with pytest.raises(ValidationError, match=name.removeprefix("ADAFOCUS_").lower()):
            Settings()
        monkeypatch.delenv(name)
    assert Settings().decode_limits() == DecodeLimits(max_bytes=Settings().max_upload_bytes, max_duration_s=600.0,
                                                      max_pixels_per_frame=3840 * 2160, max_decode_s=20.0)


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
    return asyncio.run(read_upload(content_type, None, chunked(body), max_bytes, 16, max_fields=8))


def test_read_upload_streams_the_video_part_and_small_fields() -> None:
    result = upload(multipart({"budget": b"low", "video": b"V" * 40, "explain": b"true"}))
    assert result.fields == {"budget": "low", "explain": "true"}  # type: ignore[attr-defined]
    assert result.spool.size == 40 and result.spool.on_disk  # type: ignore[attr-defined]
    result.spool.close()  # type: ignore[attr-defined]


def test_read_upload_rejects() -> None:
    with pytest.raises(UploadTooLarge):
        upload(multipart({"video": b"V" * 2000}))
    with pytest.raises(UploadTooLarge):  # Content-Length alone is enough
        asyncio.run(read_upload("multipart/form-data; boundary=XyZ", str(10**9), chunked(b""), 1000, 16, 8))
    with pytest.raises(BadUpload, match="no `video` part"):
        upload(multipart({"budget": b"low"}))
    with pytest.raises(NotMultipart) as info:
        upload(b"{}", content_type="application/json")
    error = to_api_error(info.value, retry_after_s=1)
    assert (error.status, error.code) == (415, "unsupported_media_type")


def test_form_fields_are_bounded_in_number_and_count_towards_the_upload_limit() -> None:
    fields = {f"f{i}": b"x" for i in range(8)}
    result = upload(multipart({**fields, "video": b"V" * 40}), max_bytes=1000)
    assert len(result.fields) == 8  # type: ignore[attr-defined]
    result.spool.close()  # type: ignore[attr-defined]
    with pytest.raises(TooManyFields) as too_many:  # one field more than the default of 8
        upload(multipart({**fields, "f8": b"x", "video": b"V"}))
    refused = to_api_error(too_many.value, retry_after_s=1)
    assert (refused.status, refused.code) == (413, "too_many_fields")
    # 3 fields of 400 bytes (1200) over a limit of 1000 that the video alone (40) is far below
    with pytest.raises(UploadTooLarge):
        upload(multipart({"a": b"x" * 400, "b": b"x" * 400, "c": b"x" * 400, "video": b"V" * 40}))
    with pytest.raises(UploadTooLarge):  # field bytes and video bytes share the one limit
        upload(multipart({"a": b"x" * 600, "video": b"V" * 600}))
    with pytest.raises(BadUpload, match="Maximum header size exceeded"):  # a part's headers are bounded too
        upload(multipart({"video": b"V"}).replace(b'name="video"', b'name="video"; x="' + b"h" * 9000 + b'"'))


def test_the_whole_body_is_counted_while_streaming_without_content_length() -> None:
    """Bytes that no field holds (part headers: up to 8 of 4 KiB per part) still count, chunked or not."""
    pad = "".join(f"X-Pad-{i}: {'p' * 4000}\r\n" for i in range(6))
    parts = [f'--XyZ\r\nContent-Disposition: form-data; name="f{i}"\r\n{pad}\r\nx\r\n' for i in range(8)]
    head = "".join(parts).encode()  # 8 fields of 1 byte, 190 KB of part headers
    assert len(head) > 1000 + MULTIPART_OVERHEAD
    with pytest.raises(UploadTooLarge):
        upload(head + multipart({"video": b"V"}))
    small = "".join(parts[:2]).encode() + multipart({"video": b"V"})  # the same under the overhead allowance
    result = upload(small)
    assert result.fields == {"f0": "x", "f1": "x"}  # type: ignore[attr-defined]
