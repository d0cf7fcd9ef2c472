"""Drive the web page in a real headless Chromium (Debian's ``chromium`` through Playwright; never a downloaded one).

Used by tests/service/http/test_web.py, and by ``make screenshot`` for the README's picture of the page:

    python -m tests.service.http.browser --bundle model/bundles/default --video clip.mp4 --out docs/web-ui.png

(``--bundle`` starts a server of its own on a free port; ``--url`` uses a running one instead.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Route, sync_playwright

from tests.service.conftest import Server

INSTALL_HINT = "run `make tools` as root (apt-get install chromium)"
ANSWER_TIMEOUT_MS = 90_000


def chromium_path() -> str:
    """Debian's Chromium, or skip (fail in CI, which installs it with `make tools`) saying how to install it."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"chromium is not installed in CI; {INSTALL_HINT}")
        pytest.skip(f"chromium is not installed; {INSTALL_HINT}")
    return path


@contextmanager
def browser(executable: str) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def offline_page(chromium: Browser, url: str, console_errors: list[str]) -> Page:
    """A page that may reach only the server at ``url``: any other request (a CDN) is aborted and recorded."""
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    origin = urlsplit(url).netloc

    def only_the_server(route: Route) -> None:
        target = urlsplit(route.request.url)
        if target.scheme in ("data", "blob") or target.netloc == origin:
            route.continue_()
        else:
            console_errors.append(f"blocked request to {route.request.url}")
            route.abort()

    page.route("**/*", only_the_server)
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: console_errors.append(str(exc)))
    return page


def classify_on_page(page: Page, url: str, video: Path, budget: str | None = None) -> None:
    """Open the page, choose the file and the budget level, press Classify, wait for the drawn answer."""
    page.goto(f"{url}/")
    page.wait_for_selector("body[data-state=loaded]")
    page.set_input_files("#file", str(video))
    if budget is not None:
        page.select_option("#budget", budget)
    page.click("#submit")
    page.wait_for_selector("body[data-state=answered]", timeout=ANSWER_TIMEOUT_MS)


def drawn_edge_colours(page: Page) -> list[dict[str, Any]]:
    """For each film-strip frame: the last cube drawn on it, its colour, and the pixel read back from the canvas
    in the middle of that cube's left edge (the last cube drawn is on top there)."""
    result: list[dict[str, Any]] = page.evaluate(
        """() => {
          const out = [];
          for (const canvas of document.querySelectorAll("#frames canvas")) {
            const t = Number(canvas.dataset.frame), scale = Number(canvas.dataset.scale);
            const cubes = JSON.parse(document.querySelector("#result").dataset.cubes);
            const on = cubes.map((c, i) => [c, i]).filter(([c]) => c.t <= t && t < c.t + c.frames);
            if (!on.length) continue;
            const [cube, index] = on[on.length - 1];
            const x = Math.round(cube.x * scale), y = Math.round((cube.y + cube.size / 2) * scale);
            const px = canvas.getContext("2d").getImageData(x, y, 1, 1).data;
            const hex = "#" + [px[0], px[1], px[2]].map((v) => v.toString(16).padStart(2, "0")).join("");
            out.push({frame: t, cube: index, skipped: cube.skipped, drawn: Number(canvas.dataset.cubes),
                      expected: window.CUBE_COLORS[index % window.CUBE_COLORS.length], pixel: hex});
          }
          return out;
        }"""
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="screenshot of the web page answering one video")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="a running server")
    parser.add_argument("--bundle", type=Path, default=None, help="start a server of this bundle instead")
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--budget", default=None)
    parser.add_argument("--out", type=Path, default=Path("docs/web-ui.png"))
    args = parser.parse_args()
    executable = shutil.which("chromium")
    if executable is None:
        raise SystemExit(f"chromium is not installed; {INSTALL_HINT}")
    errors: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(args.bundle, Path(tmp) / "server.log") if args.bundle else None
        try:
            url = args.url
            if server is not None:
                server.wait_ready()
                url = server.url
            with browser(executable) as chromium:
                page = offline_page(chromium, url, errors)
                classify_on_page(page, url, args.video, args.budget)
                page.screenshot(path=str(args.out), full_page=True)
        finally:
            if server is not None:
                server.stop()
    if errors:
        raise SystemExit(f"the page logged errors: {errors}")
    print(f"wrote {args.out}")  # noqa: T201


if __name__ == "__main__":
    main()
