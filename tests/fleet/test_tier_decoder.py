"""A model replica's handle on the decode tier (``TierDecoder``) against a hand-written fake of the deployment
handle, no Ray cluster: a lost decode replica's upload is retried once, the replica's own errors pass through
unwrapped, a spooled upload travels as bytes, the queue is bounded."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from fleet.decode_tier import LOST_REASON, TierDecoder
from model.video import DecodeError
from model.video_segments import SegmentError
from service.decode.pool import DecodeBusy, Decoded, DecodeJob
from tests.fleet.conftest import ray
from tests.service.conftest import wait_until

FRAMES = np.zeros((4, 32, 32, 3), np.uint8)  # (T, S, S, 3)


class FakeResponse:
    def __init__(self, outcome: Decoded | BaseException, gate: threading.Event | None) -> None:
        self.outcome, self.gate = outcome, gate

    def result(self, timeout_s: float) -> Decoded:
        if self.gate is not None:
            assert self.gate.wait(timeout_s)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


class FakeHandle:
    """``handle.decode.remote(job)``: each call takes the next outcome; the jobs it was sent are kept."""

    def __init__(self, *outcomes: Decoded | BaseException, gate: threading.Event | None = None) -> None:
        self.outcomes, self.gate = list(outcomes), gate
        self.jobs: list[DecodeJob] = []
        self.decode = self

    def remote(self, job: DecodeJob) -> FakeResponse:
        self.jobs.append(job)
        return FakeResponse(self.outcomes.pop(0), self.gate)


def decoder(handle: FakeHandle, lost: list[str], max_pending: int = 4) -> TierDecoder:
    return TierDecoder(handle, max_pending, timeout_s=10.0, on_lost=lost.append)  # type: ignore[arg-type]


def test_a_lost_decode_replica_is_retried_once_on_another() -> None:
    lost: list[str] = []
    answer = Decoded(FRAMES, 0.01)
    handle = FakeHandle(ray.exceptions.ActorDiedError(), answer)
    job = DecodeJob(b"video", 4, 32, "fast")
    assert decoder(handle, lost).submit(job).result(timeout=10) is answer
    assert handle.jobs == [job, job] and lost == [LOST_REASON]


def test_lost_twice_answers_503() -> None:
    lost: list[str] = []
    handle = FakeHandle(ray.exceptions.ActorDiedError(), ray.exceptions.ActorUnavailableError("gone", None))
    with pytest.raises(DecodeBusy, match="lost twice"):
        decoder(handle, lost).submit(DecodeJob(b"video", 4, 32)).result(timeout=10)
    assert len(handle.jobs) == 2 and lost == [LOST_REASON, LOST_REASON]


def test_the_decode_replicas_own_error_is_not_retried() -> None:
    lost: list[str] = []
    wrapped = ray.exceptions.RayTaskError("decode", "traceback", DecodeError("not_a_video", "not a video"))
    handle = FakeHandle(wrapped)
    with pytest.raises(DecodeError) as raised:
        decoder(handle, lost).submit(DecodeJob(b"text", 4, 32)).result(timeout=10)
    assert raised.value.code == "not_a_video" and len(handle.jobs) == 1 and lost == []


def test_a_spooled_upload_travels_as_bytes(tmp_path: Path) -> None:
    spooled = tmp_path / "upload"
    spooled.write_bytes(b"the whole upload")
    handle = FakeHandle(Decoded(FRAMES, 0.01))
    decoder(handle, []).submit(DecodeJob(str(spooled), 4, 32, "exact")).result(timeout=10)
    assert handle.jobs == [DecodeJob(b"the whole upload", 4, 32, "exact")]


def test_the_queue_is_bounded_and_counted() -> None:
    gate = threading.Event()
    handle = FakeHandle(*[Decoded(FRAMES, 0.01)] * 2, gate=gate)
    tier = decoder(handle, [], max_pending=2)
    futures = [tier.submit(DecodeJob(b"video", 4, 32)) for _ in range(2)]
    assert tier.pending == 2
    with pytest.raises(DecodeBusy, match="2 uploads"):
        tier.submit(DecodeJob(b"video", 4, 32))
    gate.set()
    assert [f.result(timeout=10).frames.shape for f in futures] == [FRAMES.shape] * 2
    wait_until(lambda: tier.pending == 0, 10, "the answered jobs to leave the count")  # done callbacks run last
    tier.shutdown()


def test_a_timeline_is_refused() -> None:
    with pytest.raises(SegmentError) as raised:
        decoder(FakeHandle(), []).submit_timeline(DecodeJob(b"video", 4, 32), sink=None)  # type: ignore[arg-type]
    assert raised.value.code == "timeline_unavailable"
