"""The fleet with a decode tier (``FleetConfig.decode_replicas``), on its own local Ray cluster: one model replica,
two CPU-only decode replicas. Its answers equal a single server's for the same clips; a decode replica killed while
it holds uploads costs no request (each is retried once, on the other decode replica), and the decode replicas' own
queue (`tier="decode"`) is in the fleet's GET /metrics."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from fleet.config import APP_NAME, DECODE_DEPLOYMENT, FleetConfig
from fleet.decode_tier import LOST_REASON, TIER_LABEL
from fleet.replica import fleet_app
from model.video import encode_video
from service.app import create_app
from tests.fleet.conftest import fleet_settings, ray, serve
from tests.service.conftest import make_bundle, ramp, wait_until

COMPARED = ("label", "class_id", "exit_step", "exit_reason", "cubes_used", "gmacs", "budget")


@dataclass(frozen=True)
class Tiered:
    url: str
    bundle: Path
    clips: list[Path]  # small clips of different content
    heavy: bytes  # a clip that takes the decoder a while (the kill test's)


@pytest.fixture(scope="module")
def tiered(ray_cluster: int, tmp_path_factory: pytest.TempPathFactory) -> Tiered:
    tmp = tmp_path_factory.mktemp("tier")
    bundle = make_bundle(tmp / "tiny")
    clips = [encode_video(tmp / f"clip{i}.mp4", ramp(12, 48, 64, seed=i), "libx264") for i in range(3)]
    heavy = encode_video(tmp / "heavy.mp4", ramp(240, 240, 320, seed=9), "libx264", fps=24).read_bytes()
    config = FleetConfig(replicas=1, num_cpus=1, poll_s=60.0, decode_replicas=2, decode_num_cpus=0.5)
    serve.run(fleet_app(fleet_settings(bundle), config), name=APP_NAME, route_prefix="/")
    return Tiered(f"http://127.0.0.1:{ray_cluster}", bundle, clips, heavy)


@pytest.fixture(scope="module")
def single(tiered: Tiered) -> Iterator[TestClient]:
    """A plain server (its own decoder processes) with the fleet's settings and bundle."""
    with TestClient(create_app(fleet_settings(tiered.bundle))) as client:
        yield client


def classify(post: Any, video: bytes, **fields: str) -> dict[str, Any]:
    answer = post("/classify", files={"video": ("clip.mp4", video, "video/mp4")}, data=fields)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def fleet_post(tiered: Tiered) -> Any:
    return lambda path, **kw: httpx.post(f"{tiered.url}{path}", timeout=60, **kw)


def metric_sum(tiered: Tiered, name: str, **labels: str) -> float:
    """``name``'s samples summed over every replica (GET /metrics on the fleet), those with ``labels`` only."""
    text = httpx.get(f"{tiered.url}/metrics", timeout=30).text
    return sum(
        s.value for f in text_string_to_metric_families(text) for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


@pytest.mark.parametrize("sampling", ["exact", "fast"])
def test_answers_equal_a_single_servers(tiered: Tiered, single: TestClient, sampling: str) -> None:
    for clip in tiered.clips:
        video = clip.read_bytes()
        got = classify(fleet_post(tiered), video, sampling=sampling)
        expected = classify(single.post, video, sampling=sampling)
        assert {k: got[k] for k in COMPARED} == {k: expected[k] for k in COMPARED}
        assert got["confidence"] == pytest.approx(expected["confidence"], abs=1e-6)
        assert got["decode"] == expected["decode"]  # the same sampling ran, on the same CPU decoder


def test_a_timeline_is_refused_by_the_tier(tiered: Tiered) -> None:
    video = tiered.clips[0].read_bytes()
    answer = fleet_post(tiered)("/classify", files={"video": ("clip.mp4", video)}, data={"segment_s": "1"})
    assert (answer.status_code, answer.json()["code"]) == (422, "timeline_unavailable")


def test_a_killed_decode_replica_costs_no_request(tiered: Tiered) -> None:
    lost_before = metric_sum(tiered, "adafocus_decoder_restarts_total", reason=LOST_REASON)
    post = fleet_post(tiered)
    with ThreadPoolExecutor(12) as pool:
        answers = [pool.submit(post, "/classify", files={"video": ("heavy.mp4", tiered.heavy)}) for _ in range(12)]
        held = partial(metric_sum, tiered, "adafocus_decode_pending", tier=TIER_LABEL)  # the decode replicas' own
        wait_until(lambda: held() >= 4, 60, "uploads held by the decode tier")
        actors = [a for a in ray.util.list_named_actors(all_namespaces=True) if DECODE_DEPLOYMENT in a["name"]]
        assert len(actors) == 2
        ray.kill(ray.get_actor(actors[0]["name"], namespace=actors[0]["namespace"]), no_restart=True)
        statuses = [a.result().status_code for a in answers]
    assert statuses == [200] * 12  # every upload the dead replica held was decoded by the other
    retried = metric_sum(tiered, "adafocus_decoder_restarts_total", reason=LOST_REASON) - lost_before
    assert 1 <= retried < 12  # it did hold uploads (and the other replica some): none of them failed
    assert held() == 0  # the surviving decode replica reports its queue: empty once every upload was answered
