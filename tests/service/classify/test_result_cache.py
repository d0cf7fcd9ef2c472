"""The result cache (LRU order, what is never stored) and, in-process, the per-request ``sampling`` field and the
cache behind /classify: a repeated upload is answered from it, anything that changes the answer misses."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from model.video import encode_video
from service.classify.result_cache import ResultCache, ResultKey
from service.classify.upload import UploadSpool
from service.schemas import ClassifyResponse, Timings
from tests.service.conftest import OPERATOR_TOKEN, TestClient, classify_ok, in_process, ramp
from tests.service.test_metrics import samples_of

AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
SAME = ("label", "class_id", "confidence", "top_k", "cubes_used", "exit_step", "exit_reason", "gmacs", "budget",
        "budget_version", "decode")  # what a cached answer repeats


def key(content: str, version: int = 1, sampling: str = "exact") -> ResultKey:
    return ResultKey(content, "bundle", None, version, sampling, False, False)


def body(label: str, reason: str = "confident") -> ClassifyResponse:
    return ClassifyResponse(
        request_id="r", label=label, class_id=0, confidence=0.9, top_k=[], cubes_used=1, exit_step=1,
        exit_reason=reason, gmacs=0.1, budget="low", budget_version=1,  # type: ignore[arg-type]
        timings=Timings(queue=0.0, decode=0.1, compute=0.1, total=0.3),
    )


def test_the_least_recently_used_answer_is_evicted_first_and_lookups_are_counted() -> None:
    lookups: list[bool] = []
    cache = ResultCache(2, lookups.append)
    assert cache.put(key("a"), body("a")) and cache.put(key("b"), body("b"))
    assert cache.get(key("a")) is not None  # a is now the most recent
    assert cache.put(key("c"), body("c"))
    assert cache.keys() == [key("a"), key("c")]  # b went first
    assert cache.get(key("b")) is None
    cache.put(key("d"), body("d"))
    assert cache.keys() == [key("c"), key("d")]
    assert lookups == [True, False]


def test_deadline_answers_are_never_stored_and_an_off_cache_stores_and_counts_nothing() -> None:
    cache = ResultCache(4)
    assert not cache.put(key("a"), body("a", reason="deadline")) and len(cache) == 0
    lookups: list[bool] = []
    off = ResultCache(0, lookups.append)
    assert not off.put(key("a"), body("a")) and off.get(key("a")) is None and lookups == []
    with pytest.raises(ValueError, match="entries must be >= 0"):
        ResultCache(-1)


def test_the_spool_hashes_the_upload_as_it_streams_in(tmp_path: Path) -> None:
    spool = UploadSpool(max_bytes=100, spool_bytes=4, directory=str(tmp_path))
    for chunk in (b"abc", b"defg", b"hij"):  # past spool_bytes: the rest goes to disk, still hashed
        spool.write(chunk)
    assert spool.on_disk and spool.content_sha256 == hashlib.sha256(b"abcdefghij").hexdigest()
    spool.close()


@pytest.fixture(scope="module")
def gop4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keyframes every 4 frames at 8 fps: the tiny bundle's 4 targets (frames 3, 9, 15, 21) are 0.125 s from one."""
    path = tmp_path_factory.mktemp("videos") / "gop4.mp4"
    return encode_video(path, ramp(24, 48, 64, seed=4), "libx264", fps=8, gop=4, options={"bf": "0"})


@pytest.fixture(scope="module")
def app(tiny_bundle: Path) -> Iterator[TestClient]:
    yield from in_process(tiny_bundle, operator_token=OPERATOR_TOKEN, result_cache_entries=8,
                          decode_tolerance_s=0.25)


def cache_counts(app: TestClient) -> tuple[float, float]:
    got = samples_of(app.get("/metrics").text)
    return got[("adafocus_result_cache_hits_total", ())], got[("adafocus_result_cache_misses_total", ())]


def test_a_repeated_upload_is_answered_from_the_cache_and_what_changes_the_answer_misses(
    app: TestClient, gop4: Path
) -> None:
    hits, misses = cache_counts(app)
    first = classify_ok(app, gop4)
    again = classify_ok(app, gop4)
    assert (first["cached"], again["cached"]) == (False, True)
    assert {k: again[k] for k in SAME} == {k: first[k] for k in SAME}
    assert again["request_id"] != first["request_id"]
    assert again["timings"]["decode"] == 0.0 and again["timings"]["compute"] == 0.0  # type: ignore[index]
    assert cache_counts(app) == (hits + 1, misses + 1)
    fast = classify_ok(app, gop4, sampling="fast")  # another sampling: another answer
    assert fast["cached"] is False and fast["decode"] == {"sampling": "fast", "max_offset_s": 0.125, "backend": "cpu"}
    assert classify_ok(app, gop4, sampling="fast")["cached"] is True
    assert classify_ok(app, gop4, explain="true")["cached"] is False  # explain changes the body
    put = app.put("/budget", json={"level": "low"}, headers=AUTH)
    assert put.status_code == 200
    after = classify_ok(app, gop4)  # a new threshold set: a new version, a miss
    assert after["cached"] is False and after["budget_version"] == put.json()["version"]
    assert classify_ok(app, gop4)["cached"] is True
    assert cache_counts(app) == (hits + 3, misses + 4)
    decodes = samples_of(app.get("/metrics").text)
    assert decodes[("adafocus_decodes_total", (("backend", "cpu"), ("sampling", "fast")))] == 1.0  # its one miss


def test_the_sampling_field_is_exact_or_fast_and_says_what_ran(app: TestClient, gop4: Path) -> None:
    exact = classify_ok(app, gop4, sampling="exact")
    assert exact["decode"] == {"sampling": "exact", "max_offset_s": 0.0, "backend": "cpu"}
    for value in ("Fast", "legacy", "", "exact "):
        with gop4.open("rb") as fh:
            response = app.post("/classify", files={"video": ("clip.mp4", fh)}, data={"sampling": value})
        assert (response.status_code, response.json()["code"]) == (422, "invalid_request")
        assert response.json()["message"] == f"form field 'sampling' must be one of exact, fast, got {value!r}"


def test_a_server_without_the_cache_never_answers_from_it(tiny_bundle: Path, clip: Path) -> None:
    for client in in_process(tiny_bundle):  # ADAFOCUS_RESULT_CACHE_ENTRIES defaults to 0
        answers = [classify_ok(client, clip) for _ in range(3)]
        assert [a["cached"] for a in answers] == [False, False, False]
        assert cache_counts(client) == (0.0, 0.0)
