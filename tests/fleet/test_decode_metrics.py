"""A decode replica's own metrics (decoder restarts by cause, uploads held) and the fleet's GET /metrics that
gathers them next to the model replicas' (``RayPeers`` with the tier's handle), no Ray cluster: real decoder
processes running the scripted job, hand-written fakes of the deployment handles."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from fleet.decode_tier import TIER_LABEL, DecodeReplica
from fleet.replica import RayPeers
from model.video import DecodeLimits
from service.decode.pool import DecodeJob, DecodePool, DecoderCrashed
from service.metrics import DecoderMetrics, Metrics, labelled
from tests.fleet.conftest import fleet_settings
from tests.service.conftest import make_bundle, wait_until
from tests.service.jobs import scripted_job


def scripted_pool(settings: Any, on_restart: Callable[[str], None]) -> DecodePool:
    """One decoder process running the scripted job (``b"segfault"`` crashes it, ``b"hang"`` holds it 2 s)."""
    return DecodePool(1, DecodeLimits(max_decode_s=2.0), max_pending=4, job_fn=scripted_job, on_restart=on_restart)


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DecodeReplica]:
    settings = fleet_settings(make_bundle(tmp_path_factory.mktemp("tiny")))
    replica = DecodeReplica(settings, name="decode-a", make_pool=scripted_pool)  # its self-test ran on the pool
    yield replica
    replica.pool.shutdown()


def samples(families: list[Metric], name: str) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for f in families for s in f.samples if s.name == name]


class Broadcast:
    """A ``DeploymentHandle`` whose ``broadcast(method)`` answers ``answers[method]`` (one entry per replica)."""

    def __init__(self, answers: dict[str, list[Any]]) -> None:
        self.answers = answers
        self.calls: list[str] = []
        self.method = ""

    def broadcast(self, method: str, *args: Any) -> Broadcast:
        self.calls.append(method)
        self.method = method
        return self

    def results(self, timeout_s: float, return_exceptions: bool) -> list[Any]:
        return self.answers[self.method]


def test_a_decode_replica_counts_its_decoder_restarts_and_the_uploads_it_holds(replica: DecodeReplica) -> None:
    with pytest.raises(DecoderCrashed):
        asyncio.run(replica.decode(DecodeJob(b"segfault", 2, 4)))
    wait_until(lambda: replica.pool.restarts == 1, what="the crashed decoder process to be replaced")
    held = replica.pool.submit(DecodeJob(b"hang", 2, 4))  # in the decoder process until its 2 s limit
    families = asyncio.run(replica.metric_families())
    labels = {"replica": "decode-a", "tier": TIER_LABEL}
    assert samples(families, "adafocus_decoder_restarts_total") == [({"reason": "crashed", **labels}, 1.0)]
    assert samples(families, "adafocus_decode_pending") == [(labels, 1.0)]
    held.cancel()


def test_the_fleets_metrics_hold_the_decode_tiers_next_to_the_model_replicas() -> None:
    model, tier = Metrics(3), DecoderMetrics()
    model.on_decoder_restart("decode_replica_lost")
    tier.on_decoder_restart("crashed")
    models = Broadcast({"metric_families": [labelled(model.registry, "model-a")]})
    decoders = Broadcast({"metric_families": [labelled(tier.registry, "decode-a", tier=TIER_LABEL)]})
    text = RayPeers(models, decoders).metrics().decode()  # type: ignore[arg-type]
    assert (models.calls, decoders.calls) == (["metric_families"], ["metric_families"])
    restarts = [f for f in text_string_to_metric_families(text) if f.name == "adafocus_decoder_restarts"]
    assert len(restarts) == 1  # one family, its samples from both tiers
    got = sorted((s.labels["replica"], s.labels["reason"], s.labels.get("tier"), s.value) for s in restarts[0].samples)
    assert got == [("decode-a", "crashed", "decode", 1.0), ("model-a", "decode_replica_lost", None, 1.0)]


def test_without_an_answer_from_the_model_replicas_the_tier_is_not_asked() -> None:
    decoders = Broadcast({"metric_families": [labelled(DecoderMetrics().registry, "decode-a", tier=TIER_LABEL)]})
    assert RayPeers(Broadcast({"metric_families": []}), decoders).metrics() == b""  # type: ignore[arg-type]
    assert decoders.calls == []
