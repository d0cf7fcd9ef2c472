"""Client-side decoding: the Python client and `adafocus classify --decode local` decode with the project's decoder
on the client and send frames through /v2/models/{name}/infer; the answers equal the server-decoded ones and say
where decoding ran; a file the local decoder refuses never reaches the server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from model.video import encode_video
from service.client import Client
from tests.service.conftest import Server, TestClient, in_process, ramp, serve

ADAFOCUS = str(Path(sys.executable).parent / "adafocus")
SAME = ("label", "class_id", "exit_step", "budget")


@pytest.fixture(scope="module")
def app(tiny_bundle: Path) -> Iterator[TestClient]:
    yield from in_process(tiny_bundle)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("clips")
    return [encode_video(root / f"clip_{i}.webm", ramp(10, 40, 56, seed=i), "libvpx") for i in range(2)]


@pytest.mark.parametrize("budget", ["low", "mid", "high"])
def test_local_decoding_answers_as_the_server(app: TestClient, clips: list[Path], budget: str) -> None:
    client = Client(http=app)
    for clip in clips:
        server = client.classify(clip, budget=budget, explain=True)
        local = client.classify(clip, budget=budget, explain=True, decode="local")
        assert (server["decoded_on"], local["decoded_on"]) == ("server", "client")
        assert {k: local[k] for k in SAME} == {k: server[k] for k in SAME}
        assert local["gmacs"] == pytest.approx(server["gmacs"], rel=1e-6)
        assert local["confidence"] == pytest.approx(server["confidence"], abs=1e-6)
        assert local["cubes"] == [{k: c[k] for k in ("t", "y", "x", "frames", "size", "skipped")}
                                  for c in server["cubes"]]


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(tiny_bundle, tmp_path_factory.mktemp("local-decode"))


def test_classify_command_decodes_locally(server: Server, clips: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "notes.webm"
    bad.write_text("not a video\n")
    files = [str(clips[0]), str(bad), str(clips[1])]

    def run(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ADAFOCUS, "classify", *files, "--url", server.url, "--budget", "mid", *flags],
                              capture_output=True, text=True, timeout=120)

    local, remote = run("--decode", "local", "--json"), run("--json")
    assert (local.returncode, remote.returncode) == (1, 1), local.stderr
    mine, theirs = ([json.loads(line) for line in r.stdout.splitlines()] for r in (local, remote))
    assert [r.get("decoded_on") for r in mine] == ["client", None, "client"]
    for a, b in ((mine[0], theirs[0]), (mine[2], theirs[2])):
        assert {k: a[k] for k in SAME} == {k: b[k] for k in SAME}
    assert mine[1]["error"] | {"message": ""} == {"status": None, "code": "not_a_video", "message": "",
                                                  "decoded_on": "client"}
    human = run("--decode", "local", "--no-progress")
    assert "decoded on the client" in human.stdout.splitlines()[0]


def test_a_timeline_is_not_decoded_locally(app: TestClient, clips: list[Path]) -> None:
    with pytest.raises(ValueError, match="segment_s"):  # rather than a single clip's answer for a timeline
        Client(http=app).classify(clips[0], decode="local", fields={"segment_s": "1"})
    run = subprocess.run([ADAFOCUS, "classify", str(clips[0]), "--url", "http://127.0.0.1:9", "--decode", "local",
                          "--segment-s", "1"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "--segment-s / --stride-s need --decode server" in run.stderr
