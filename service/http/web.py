"""The web page at ``/``: upload a video, see the answer and where the model looked (service/http/static/).

Plain HTML, CSS and JavaScript shipped inside the package (pyproject package-data): no build step, no CDN, so the
page works on a machine with no Internet access. It calls the same public routes as any client: ``/classify``
(with ``explain`` and ``frames``), ``/budget``, ``/v2/models/{name}`` and ``/metrics``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"
router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    """The web page."""
    return FileResponse(STATIC / "index.html", media_type="text/html")


def install_web(app: FastAPI) -> None:
    """The page at ``/`` and its files under ``/static``."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
