"""The tiny engine world, built once per test module."""

from __future__ import annotations

import pytest

from tests.service.engine.tiny import World, build_world


@pytest.fixture(scope="module")
def world() -> World:
    return build_world()
