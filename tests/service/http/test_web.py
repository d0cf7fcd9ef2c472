"""The web page in a real headless browser (Debian's Chromium through Playwright) against a real server: upload a
clip, wait for the answer, check what was drawn, save a screenshot; and /docs renders with no Internet access."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from model.video import encode_video
from tests.service.conftest import Server, in_process, ramp, serve
from tests.service.http.browser import (
    ANSWER_TIMEOUT_MS,
    browser,
    chromium_path,
    classify_on_page,
    drawn_edge_colours,
    offline_page,
)


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(tiny_bundle, tmp_path_factory.mktemp("web"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return encode_video(tmp_path_factory.mktemp("clip") / "clip.mp4", ramp(12, 48, 64, seed=3), "libx264")


def test_the_page_shows_the_answer_and_draws_the_cubes(server: Server, clip: Path, tmp_path: Path) -> None:
    executable = chromium_path()
    # the tiny bundle's `high` level never exits early: every one of its K cubes is drawn
    expected = httpx.post(
        f"{server.url}/classify",
        files={"video": clip.open("rb")},
        data={"budget": "high", "explain": "true"},
        timeout=60,
    ).json()
    errors: list[str] = []
    with browser(executable) as chromium:
        page = offline_page(chromium, server.url, errors)
        classify_on_page(page, server.url, clip, budget="high")
        shot = tmp_path / "web-ui.png"
        page.screenshot(path=str(shot), full_page=True)

        assert page.inner_text("#answer-label") == expected["label"]
        assert page.inner_text("#answer-budget") == f"high (v{expected['budget_version']})"
        assert re.fullmatch(r"[0-9a-f]{32}", page.inner_text("#answer-request"))
        assert page.locator("#topk li").count() == len(expected["top_k"])
        # one card per exit up to the one it stopped at, that one marked; the predictions are the API's
        K = len(expected["cubes"])
        assert page.locator("#steps .step").count() == K + 1
        assert page.locator("#steps .step.exited").get_attribute("data-exit") == str(K)
        assert [
            page.locator(f"#steps .step[data-exit='{k}'] .pred").inner_text().split(" · ")[0] for k in range(K + 1)
        ] == [step["label"] for step in expected["steps"]]
        # every frame the model saw is drawn, and every cube on the frames it covers, in its own colour
        assert page.locator("#frames canvas").count() == 4  # the tiny model's T
        edges = drawn_edge_colours(page)
        assert {e["frame"] for e in edges} == {c["t"] + i for c in expected["cubes"] for i in range(c["frames"])}
        for edge in edges:
            assert edge["drawn"] >= 1
            if not edge["skipped"]:
                assert edge["pixel"] == edge["expected"].lower(), edge
        assert page.inner_text("#ready") == "ready"
        assert page.inner_text("#active-budget") == f"high (v{expected['budget_version']})"
        page.wait_for_function("document.getElementById('throughput').textContent.endsWith('videos/s')")
    assert errors == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_page_shows_an_error_body(server: Server, tmp_path: Path) -> None:
    executable = chromium_path()
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 10)
    errors: list[str] = []
    with browser(executable) as chromium:
        page = offline_page(chromium, server.url, errors)
        page.goto(f"{server.url}/")
        page.wait_for_selector("body[data-state=loaded]")
        page.set_input_files("#file", str(text))
        page.click("#submit")
        page.wait_for_selector("#error:not(.hidden)")
        assert page.inner_text("#error").startswith("415 not_a_video: ")
    assert [e for e in errors if "415" not in e] == []  # the browser logs the failed request itself


def test_the_page_draws_a_long_videos_timeline(server: Server, tmp_path: Path) -> None:
    executable = chromium_path()
    video = encode_video(tmp_path / "long.mp4", ramp(80, 48, 64, seed=6), "libx264", fps=8)  # 10 s
    # the tiny bundle's `mid` level exits after one cube: every segment's exit step is 1
    expected = httpx.post(
        f"{server.url}/classify", files={"video": video.open("rb")}, data={"budget": "mid", "segment_s": "2"},
        timeout=60,
    ).json()
    errors: list[str] = []
    with browser(executable) as chromium:
        page = offline_page(chromium, server.url, errors)
        page.goto(f"{server.url}/")
        page.wait_for_selector("body[data-state=loaded]")
        page.set_input_files("#file", str(video))
        page.select_option("#budget", "mid")
        page.fill("#segment", "2")
        page.click("#submit")
        page.wait_for_selector("body[data-state=answered]", timeout=ANSWER_TIMEOUT_MS)
        page.screenshot(path=str(tmp_path / "web-timeline.png"), full_page=True)
        assert page.locator("#result.hidden").count() == 1 and page.locator("#timeline:not(.hidden)").count() == 1
        assert page.inner_text("#timeline-label") == expected["label"]
        drawn = page.evaluate(
            """() => [...document.querySelectorAll("#strip .seg")].map((node) => {
                 const box = node.getBoundingClientRect(), strip = node.parentNode.getBoundingClientRect();
                 return {index: Number(node.dataset.index), classId: Number(node.dataset.classId),
                         exit: Number(node.dataset.exit), colour: getComputedStyle(node).backgroundColor,
                         expected: window.CLASS_COLORS[Number(node.dataset.classId) % window.CLASS_COLORS.length],
                         left: (box.left - strip.left) / strip.width, width: box.width / strip.width};
               })"""
        )
        segments = expected["segments"]
        assert [(d["index"], d["classId"], d["exit"]) for d in drawn] == [
            (s["index"], s["class_id"], s["exit_step"]) for s in segments
        ]
        assert {d["exit"] for d in drawn} == {1}
        for d, s in zip(drawn, segments, strict=True):  # a strip over time, each in its class's colour
            red, green, blue = (int(d["expected"][i : i + 2], 16) for i in (1, 3, 5))
            assert d["colour"] == f"rgb({red}, {green}, {blue})"
            assert d["left"] == pytest.approx(s["start_s"] / 10.0, abs=0.01)
            assert d["width"] == pytest.approx((s["end_s"] - s["start_s"]) / 10.0, abs=0.01)
        labels = {s["label"] for s in segments}
        assert sorted(page.locator("#legend li").all_inner_texts()) == sorted(labels)
    assert errors == []


API_KEY = "web-page-key-0123456789abcdef"


@pytest.fixture(scope="module")
def keyed(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that asks for an API key (ADAFOCUS_API_KEYS_FILE)."""
    keys = tmp_path_factory.mktemp("keys") / "api-keys"
    keys.write_text(f"{API_KEY} web\n")
    yield from serve(tiny_bundle, tmp_path_factory.mktemp("web-keys"), api_keys_file=keys)


def test_the_page_sends_the_api_key_it_was_given(keyed: Server, clip: Path) -> None:
    executable = chromium_path()
    errors: list[str] = []
    with browser(executable) as chromium:
        page = offline_page(chromium, keyed.url, errors)
        page.goto(f"{keyed.url}/")
        page.wait_for_selector("body[data-state=loaded]")  # the page's other calls need no key
        page.set_input_files("#file", str(clip))
        page.click("#submit")
        page.wait_for_selector("#error:not(.hidden)")
        assert page.inner_text("#error").startswith("401 api_key_required: ")
        assert page.evaluate("document.activeElement.id") == "api-key"
        page.fill("#api-key", API_KEY)
        page.click("#submit")
        page.wait_for_selector("body[data-state=answered]", timeout=ANSWER_TIMEOUT_MS)
        assert page.locator("#error.hidden").count() == 1
        page.reload()  # the key stays for this tab (sessionStorage), and is not in the page's address
        page.wait_for_selector("body[data-state=loaded]")
        assert page.input_value("#api-key") == API_KEY and API_KEY not in page.url
    assert [e for e in errors if "401" not in e] == []  # the browser logs the refused request itself
    text = httpx.get(f"{keyed.url}/metrics").text
    assert 'adafocus_api_key_requests_total{key="web"} 1.0' in text
    assert 'adafocus_api_key_rejected_total{key="-",reason="missing"} 1.0' in text


def test_docs_render_with_no_internet_access(server: Server) -> None:
    executable = chromium_path()
    errors: list[str] = []
    with browser(executable) as chromium:
        page = offline_page(chromium, server.url, errors)
        page.goto(f"{server.url}/docs")
        page.wait_for_selector(".swagger-ui .info .title")
        assert "AdaFocusV3 video classification" in page.inner_text(".swagger-ui .info .title")
        assert page.locator(".opblock-summary-path[data-path='/classify']").count() == 1
    assert errors == []


@pytest.fixture(scope="module")
def app(tiny_bundle: Path) -> Iterator[TestClient]:
    yield from in_process(tiny_bundle)


def test_docs_and_the_page_use_only_local_assets(app: TestClient) -> None:
    docs = app.get("/docs").text
    assert "cdn" not in docs.lower()
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs)
    assert assets and all(a.startswith("/") for a in assets), assets
    for asset in assets:
        assert app.get(asset).status_code == 200, asset
    page = app.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    local = re.findall(r'(?:src|href)="(/[^"]+)"', page.text)
    assert {"/static/app.js", "/static/style.css"} <= set(local)
    for asset in ("/static/app.js", "/static/style.css"):
        assert app.get(asset).status_code == 200
    assert "http://" not in page.text and "https://" not in page.text
    assert app.get("/redoc").status_code == 404
