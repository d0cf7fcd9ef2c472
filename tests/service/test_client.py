"""The Python client (sync in-process through the TestClient, async and `adafocus classify` against a real server),
and what `adafocus serve` says before it loads anything: bad settings in one line naming the flag or variable,
a busy port; plus the clear messages for the usual mistakes (a file in the wrong form field, a non-JSON budget)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from model.video import encode_video
from service.client import AsyncClient, Client, ServerError
from tests.service.conftest import OPERATOR_TOKEN, Server, TestClient, in_process, ramp, serve

ADAFOCUS = str(Path(sys.executable).parent / "adafocus")


@pytest.fixture(scope="module")
def app(tiny_bundle: Path) -> Iterator[TestClient]:
    yield from in_process(tiny_bundle, operator_token=OPERATOR_TOKEN)


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(tiny_bundle, tmp_path_factory.mktemp("client"), operator_token=OPERATOR_TOKEN)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("clips")
    return [encode_video(root / f"clip_{i}.mp4", ramp(12, 48, 64, seed=i), "libx264") for i in range(3)]


def test_sync_client(app: TestClient, clips: list[Path]) -> None:
    client = Client(http=app, token=OPERATOR_TOKEN)
    answer = client.classify(clips[0], budget="mid", explain=True, request_id="sync-1")
    assert (answer["request_id"], answer["budget"], answer["exit_step"]) == ("sync-1", "mid", 1)
    assert len(answer["cubes"]) == 1 and len(answer["steps"]) == 2
    same = client.classify(("again.mp4", clips[0].read_bytes()), budget="mid")
    assert same["class_id"] == answer["class_id"]
    fast = client.classify(clips[0], sampling="fast")["decode"]
    assert (answer["decode"]["sampling"], fast["sampling"], fast["backend"]) == ("exact", "fast", "cpu")
    assert client.model()["name"] == "tiny" and client.ready() is True
    assert client.set_budget("low")["name"] == "low"
    assert client.budget()["name"] == "low"
    assert client.set_budget(thresholds=[0.0, 0.0, 0.0, 0.0])["name"] == "custom"
    assert client.set_budget("high")["name"] == "high"
    with pytest.raises(ServerError) as refused:
        client.classify(("notes.mp4", b"not a video at all"), request_id="bad-1")
    assert (refused.value.status, refused.value.code, refused.value.request_id) == (415, "not_a_video", "bad-1")
    with pytest.raises(ServerError) as unknown:
        client.classify(clips[0], budget="nope")
    assert (unknown.value.status, unknown.value.code) == (422, "invalid_budget")
    with pytest.raises(ServerError) as no_token:
        Client(http=app).set_budget("low")
    assert (no_token.value.status, no_token.value.code) == (401, "unauthorized")
    with pytest.raises(ValueError, match="exactly one"):
        client.set_budget("low", gmacs=1.0)


def test_async_client_against_a_real_server(server: Server, clips: list[Path]) -> None:
    async def run() -> list[dict[str, object]]:
        async with AsyncClient(server.url, token=OPERATOR_TOKEN) as client:
            assert await client.ready() is True
            assert (await client.model())["num_cubes"] == 3
            assert (await client.budget())["name"] == "high"
            answers = await asyncio.gather(*(client.classify(c, budget="low") for c in clips))
            with pytest.raises(ServerError) as refused:
                await client.set_budget("nope")
            assert (refused.value.status, refused.value.code) == (422, "invalid_budget")
            return answers

    answers = asyncio.run(run())
    assert [(a["budget"], a["exit_step"], a["exit_reason"]) for a in answers] == [("low", 0, "confident")] * 3


def test_classify_command_prints_json_lines_and_fails_on_a_bad_file(
    server: Server, clips: list[Path], tmp_path: Path
) -> None:
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video\n")
    files = [str(clips[0]), str(bad), str(clips[1])]
    run = subprocess.run(
        [ADAFOCUS, "classify", *files, "--url", server.url, "--budget", "mid", "--json", "--concurrency", "2",
         "--sampling", "fast"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["file"] for r in records] == files
    assert [(r["budget"], r["exit_step"]) for r in (records[0], records[2])] == [("mid", 1), ("mid", 1)]
    assert records[0]["decode"]["sampling"] == records[2]["decode"]["sampling"] == "fast"
    assert records[1]["error"]["status"] == 415 and records[1]["error"]["code"] == "not_a_video"
    assert "3/3" in run.stderr  # the progress bar


def test_classify_command_human_output_with_cubes(server: Server, clips: list[Path]) -> None:
    run = subprocess.run(
        [ADAFOCUS, "classify", str(clips[2]), "--url", server.url, "--explain"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    first, *cubes = run.stdout.splitlines()
    assert first.startswith(f"{clips[2]}: class_") and "exit 3 (max_cubes)" in first and "budget high" in first
    assert len(cubes) == 3 and all(line.startswith("    cube t=") for line in cubes)


def test_a_file_in_the_wrong_field_is_told_where_the_video_goes(app: TestClient, clips: list[Path]) -> None:
    response = app.post("/classify", files={"file": ("clip.mp4", clips[0].read_bytes())})
    assert response.status_code == 422
    assert response.json()["message"] == (
        "send the video in the form field `video` (got a file in 'file'), e.g. curl -F video=@clip.mp4 ..."
    )


def test_budget_change_needs_a_json_body(app: TestClient) -> None:
    auth = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    form = app.put(
        "/budget", content=b'{"level": "low"}', headers={**auth, "Content-Type": "application/x-www-form-urlencoded"}
    )
    assert form.status_code == 415
    assert form.json()["code"] == "unsupported_media_type"
    assert form.json()["message"].startswith(
        "PUT /budget takes a JSON body, got Content-Type 'application/x-www-form-urlencoded': send "
        "`Content-Type: application/json`"
    )
    no_token = app.put("/budget", content=b"level=low", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert no_token.status_code == 401  # the token is checked first
    bare = app.put("/budget", content=b'{"level": "high"}', headers=auth)
    assert bare.status_code == 415
    assert bare.json()["message"].startswith("PUT /budget takes a JSON body, got no Content-Type: ")
    ok = app.put("/budget", content=b'{"level": "high"}', headers={**auth, "Content-Type": "application/json"})
    assert (ok.status_code, ok.json()["name"]) == (200, "high")
