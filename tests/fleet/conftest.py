"""A local Ray cluster running the fleet (2 replicas of the tiny model on this CPU) for the module's tests: small
(4 logical CPUs, no dashboard, an 80 MB object store), shut down by the fixture's finaliser. Skipped, saying so,
when Ray is not installed (CI installs it: `make install` takes the `ray` extra)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]' (make install does)")
serve = pytest.importorskip("ray.serve")

from fleet.config import APP_NAME, FleetConfig  # noqa: E402  (after the skip: these import Ray)
from fleet.replica import fleet_app  # noqa: E402
from service.decode import self_test_video  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.service.conftest import OPERATOR_TOKEN, free_port, make_bundle  # noqa: E402


@dataclass(frozen=True)
class Fleet:
    url: str
    video: bytes


def fleet_settings(bundle: Path, **values: object) -> Settings:
    """The replicas' settings: small CPU batches, one decoder each; the environment's ADAFOCUS_* ignored."""
    with pytest.MonkeyPatch.context() as env:
        for key in os.environ:
            if key.startswith("ADAFOCUS_"):
                env.delenv(key)
        return Settings(
            bundle=bundle, device="cpu", decode_workers=1, torch_threads=1, max_batch=4, max_active=4, max_queue=32,
            operator_token=OPERATOR_TOKEN, **values,  # type: ignore[arg-type]
        )


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[int]:
    """A local Ray cluster with Serve's HTTP proxy on a free port (the port)."""
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=80 * 1024**2, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def fleet(ray_cluster: int, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    tmp = tmp_path_factory.mktemp("fleet")
    bundle = make_bundle(tmp / "tiny")
    video = self_test_video(tmp, 4, 32).read_bytes()
    serve.run(fleet_app(fleet_settings(bundle), FleetConfig(replicas=2, num_cpus=1)), name=APP_NAME, route_prefix="/")
    return Fleet(f"http://127.0.0.1:{ray_cluster}", video)
