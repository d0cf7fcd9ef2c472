"""Optional API keys for /classify (service/http/api_keys.py): the token bucket and the check with an injected clock,
the keys file and its reload, the start-up refusal of a bad file; then a real server: 401, 403, 429 with
Retry-After, a concurrency slot held by an upload, a reloaded file, the metrics by key name, and no key in its log;
the Python clients and `adafocus classify` sending a key (``--api-key`` or ``--api-key-file``)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from loadtest.http.server_process import ADAFOCUS
from model.video import encode_video
from service.client import AsyncClient, Client, ServerError, read_api_key
from service.http.api_keys import (
    ApiKeyInvalid,
    ApiKeyMissing,
    ApiKeys,
    ConcurrencyLimited,
    KeyFile,
    KeyLimits,
    RateLimited,
    TokenBucket,
    presented_key,
)
from service.schemas import ApiKeyEntry, api_key_digest, parse_api_keys
from service.settings import Settings
from tests.service.conftest import Server, ramp, serve, wait_until

ALPHA, BETA, GAMMA = "alpha-key-0123456789abcdef", "beta-key-0123456789abcdef", "gamma-key-0123456789abcdef"
DELTA = "delta-key-0123456789abcdef"  # the clients' key, with room in its bucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]  # the burst, then half a second to wait
    assert bucket.take(0.25) == pytest.approx(0.25)  # half a token back: a quarter of a second more
    assert bucket.take(0.5) == 0.0
    assert [bucket.take(60.0) for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]  # idle for long: never more than the burst


def test_a_keys_limits_are_its_own_or_the_settings() -> None:
    defaults = KeyLimits(rate=2.5, burst=None, concurrency=4)
    plain = ApiKeyEntry("a", b"")
    assert defaults.of(plain) == KeyLimits(2.5, 3, 4)  # the burst defaults to the rate, rounded up
    own = ApiKeyEntry("b", b"", rate=0.5, concurrency=1)
    assert defaults.of(own) == KeyLimits(0.5, 1, 1)
    assert KeyLimits().of(plain) == KeyLimits(None, None, None)


def test_the_key_a_request_presents() -> None:
    assert presented_key(None, None) is None
    assert presented_key(" ", "") is None
    assert presented_key("from-bearer", None) == "from-bearer"
    assert presented_key("from-bearer", " from-header ") == "from-header"  # X-API-Key wins


def keys_of(text: str, clock: FakeClock, limits: KeyLimits = KeyLimits()) -> ApiKeys:
    entries = parse_api_keys(text)
    return ApiKeys(lambda: entries, limits, clock)


def test_the_check_refuses_and_admits_by_key_name() -> None:
    clock = FakeClock()
    keys = keys_of(f"{ALPHA} alpha rate=1 burst=2\n{BETA} beta concurrency=2\n", clock, KeyLimits(concurrency=5))
    with pytest.raises(ApiKeyMissing):
        keys.admit(None)
    with pytest.raises(ApiKeyInvalid) as wrong:
        keys.admit(ALPHA[:-1])
    assert (wrong.value.name, wrong.value.reason) == ("-", "invalid")
    first, second = keys.admit(ALPHA), keys.admit(ALPHA)
    assert (first.name, keys.inflight("alpha")) == ("alpha", 2)
    with pytest.raises(RateLimited) as limited:
        keys.admit(ALPHA)
    assert limited.value.name == "alpha" and limited.value.retry_after_s == pytest.approx(1.0)
    clock.now += 1.0
    keys.admit(ALPHA).release()
    first.release()
    first.release()  # a second release is a no-op
    second.release()
    assert keys.inflight("alpha") == 0
    held = [keys.admit(BETA), keys.admit(BETA)]
    with pytest.raises(ConcurrencyLimited, match="its limit of 2 requests in flight"):
        keys.admit(BETA)
    held[0].release()
    assert keys.admit(BETA).name == "beta"  # the slot is free again; beta has no rate limit


def test_a_refused_request_takes_no_token() -> None:
    clock = FakeClock()
    keys = keys_of(f"{ALPHA} alpha rate=1 burst=1 concurrency=1\n", clock)
    held = keys.admit(ALPHA)
    clock.now += 5.0
    with pytest.raises(ConcurrencyLimited):
        keys.admit(ALPHA)
    held.release()
    keys.admit(ALPHA)  # the token refilled meanwhile is still there


def test_the_keys_file_format() -> None:
    entries = parse_api_keys(f"# team keys\n\n{ALPHA}\n{BETA}  team-b  rate=0.5 burst=2 concurrency=3  # note\n")
    assert entries == (
        ApiKeyEntry("key-3", api_key_digest(ALPHA)),
        ApiKeyEntry("team-b", api_key_digest(BETA), rate=0.5, burst=2, concurrency=3),
    )
    assert ALPHA not in repr(entries)  # only the digest is kept


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("short-key\n", "line 1: a key needs at least 16 characters"),
        (f"\n{ALPHA} a b\n", "line 2: expected `KEY [NAME]"),
        (f"{ALPHA} bad/name\n", "line 1: expected `KEY [NAME]"),
        (f"{ALPHA} rate=fast\n", "line 1: rate is a number"),
        (f"{ALPHA} rate=0\n", "line 1: rate must be positive"),
        (f"{ALPHA} burst=0\n", "line 1: rate must be positive, burst and concurrency at least 1"),
        (f"{ALPHA} limit=3\n", "line 1: unknown options ['limit']"),
        (f"{ALPHA} a\n{ALPHA} b\n", "the same key is on two lines"),
        (f"{ALPHA} a\n{BETA} a\n", "the same name is on two lines"),
    ],
)
def test_a_bad_keys_file_stops_the_start_up_without_showing_a_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(ValidationError) as refused:
        Settings(api_keys_file=path)
    assert f"ADAFOCUS_API_KEYS_FILE: {message}" in str(refused.value)
    assert ALPHA not in str(refused.value) and BETA not in str(refused.value)


def test_the_keys_file_is_read_again_when_it_changes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, clock = tmp_path / "keys", FakeClock()
    path.write_text(f"{ALPHA} alpha\n")
    source = KeyFile(path, poll_s=1.0, clock=clock)
    keys = ApiKeys(source.entries, KeyLimits(), clock)
    assert keys.admit(ALPHA).name == "alpha"
    path.write_text(f"{BETA} beta\n")
    assert keys.admit(ALPHA).name == "alpha"  # not checked again before poll_s
    clock.now += 1.0
    with pytest.raises(ApiKeyInvalid):
        keys.admit(ALPHA)  # removed: refused from the next check on
    assert keys.admit(BETA).name == "beta"
    with caplog.at_level(logging.ERROR, logger="service.http.api_keys"):
        path.write_text(f"{GAMMA} gamma\nshort\n")  # an invalid edit: logged, ignored
        clock.now += 1.0
        assert keys.admit(BETA).name == "beta"
        clock.now += 1.0
        assert keys.admit(BETA).name == "beta"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]  # INFO lines too when logging is configured
    assert [r.getMessage().split(": ", 1)[1] for r in errors] == [
        "line 2: a key needs at least 16 characters; the 1 keys read before still apply"
    ]  # once per change, and never a key
    path.unlink()
    clock.now += 1.0
    assert keys.admit(BETA).name == "beta"  # a missing file keeps the keys too: empty the file to refuse every key


# ------------------------------------------------------------------------------------------- a real server
@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "api-keys"
    path.write_text(f"{ALPHA} alpha\n{BETA} beta concurrency=1\n{DELTA} delta rate=100 burst=100\n")
    return path


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, keys_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(
        tiny_bundle, tmp_path_factory.mktemp("keys-server"), api_keys_file=keys_file, api_keys_poll_s=0.2,
        api_key_rate=0.01, api_key_burst=3,
    )


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("videos") / "clip.mp4"
    return encode_video(path, ramp(12, 48, 64, seed=4), "libx264").read_bytes()


def classify(server: Server, video: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}/classify", files={"video": video}, headers=headers, timeout=60)


def metrics(server: Server) -> str:
    return httpx.get(f"{server.url}/metrics").text


def test_keys_on_a_real_server(server: Server, video: bytes) -> None:
    missing = classify(server, video)
    assert (missing.status_code, missing.json()["code"], missing.headers["www-authenticate"]) == (
        401, "api_key_required", "Bearer")
    wrong = classify(server, video, authorization=f"Bearer {GAMMA}")
    assert (wrong.status_code, wrong.json()["code"]) == (403, "api_key_invalid")
    assert classify(server, video, authorization="Basic YWxhZGRpbjpvcGVuc2VzYW1l").status_code == 401
    answers = [
        classify(server, video, authorization=f"Bearer {ALPHA}"),
        classify(server, video, **{"x-api-key": ALPHA}),
        classify(server, video, **{"X-API-Key": ALPHA}),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200]  # the burst of 3
    limited = classify(server, video, **{"x-api-key": ALPHA})
    assert (limited.status_code, limited.json()["code"], limited.headers["retry-after"]) == (429, "rate_limited", "100")
    for path in ("/healthz", "/readyz", "/budget", "/v2", "/v2/models/tiny", "/metrics", "/"):
        assert httpx.get(f"{server.url}{path}").status_code == 200, path  # only inference needs a key
    text = metrics(server)
    for sample in ('adafocus_api_key_requests_total{key="alpha"} 3.0',
                   'adafocus_api_key_rejected_total{key="-",reason="missing"} 2.0',
                   'adafocus_api_key_rejected_total{key="-",reason="invalid"} 1.0',
                   'adafocus_api_key_rejected_total{key="alpha",reason="rate_limited"} 1.0'):
        assert sample in text, sample
    assert ALPHA not in text and GAMMA not in text


def test_an_upload_in_flight_holds_its_keys_slot(server: Server, video: bytes) -> None:
    head = (f"POST /classify HTTP/1.1\r\nHost: x\r\nX-API-Key: {BETA}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as slow:
        slow.sendall(head)  # admitted, then its body never comes: the slot stays taken
        wait_until(lambda: 'adafocus_api_key_requests_total{key="beta"} 1.0' in metrics(server), what="admitted")
        second = classify(server, video, **{"x-api-key": BETA})
        assert (second.status_code, second.json()["code"]) == (429, "concurrency_limited")
        assert second.headers["retry-after"] == "1"
    # the client's close ends its body short of its Content-Length: answered 400 incomplete_upload (nobody reads it)
    wait_until(lambda: 'adafocus_requests_total{status="400"} 1.0' in metrics(server), what="the slow one gone")
    assert classify(server, video, **{"x-api-key": BETA}).status_code == 200


def test_the_python_clients_send_their_api_key(server: Server, video: bytes) -> None:
    with Client(server.url, api_key=DELTA) as client:
        assert client.classify(("clip.mp4", video))["label"]
    with Client(server.url) as client, pytest.raises(ServerError) as refused:
        client.classify(("clip.mp4", video))
    assert (refused.value.status, refused.value.code) == (401, "api_key_required")

    async def run() -> dict[str, object]:
        async with AsyncClient(server.url, api_key=DELTA, token="not-this") as client:  # the two headers apart
            return await client.classify(("clip.mp4", video))

    assert asyncio.run(run())["label"]
    assert 'adafocus_api_key_requests_total{key="delta"} 2.0' in metrics(server)


def test_the_classify_command_takes_a_key_or_a_key_file(server: Server, video: bytes, tmp_path: Path) -> None:
    clip, key_file, empty = tmp_path / "clip.mp4", tmp_path / "key", tmp_path / "empty"
    clip.write_bytes(video)
    key_file.write_text(f"{DELTA}\n")
    empty.write_text("\n")

    def classify_command(*options: str) -> subprocess.CompletedProcess[str]:
        command = [str(ADAFOCUS), "classify", str(clip), "--url", server.url, "--json", *options]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    by_file = classify_command("--api-key-file", str(key_file))
    assert by_file.returncode == 0 and json.loads(by_file.stdout)["label"], by_file.stderr
    assert classify_command("--api-key", DELTA).returncode == 0
    wrong = classify_command("--api-key", GAMMA)
    assert (wrong.returncode, json.loads(wrong.stdout)["error"]["code"]) == (1, "api_key_invalid")
    unreadable = classify_command("--api-key-file", str(empty))
    assert unreadable.returncode == 2 and "must hold one key on one line" in unreadable.stderr
    both = classify_command("--api-key", DELTA, "--api-key-file", str(key_file))
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_an_api_key_file_holds_one_key(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(f"  {DELTA}\n")
    assert read_api_key(path) == DELTA
    for text in ("", "\n", f"{DELTA} delta\n", f"{DELTA}\n{ALPHA}\n"):
        path.write_text(text)
        with pytest.raises(ValueError, match="one key on one line"):
            read_api_key(path)
    with pytest.raises(ValueError, match="cannot be read"):
        read_api_key(tmp_path / "missing")


def test_the_keys_file_is_reloaded_and_no_key_is_logged(server: Server, keys_file: Path, video: bytes) -> None:
    keys_file.write_text(f"{BETA} beta\n{GAMMA} gamma rate=100\n")
    wait_until(lambda: classify(server, video, **{"x-api-key": GAMMA}).status_code == 200, what="gamma admitted")
    assert classify(server, video, **{"x-api-key": ALPHA}).status_code == 403  # removed
    time.sleep(0.5)
    log = server.log()
    assert "API keys file" in log and "2 keys (beta, gamma)" in log
    assert not any(key in log for key in (ALPHA, BETA, GAMMA))
