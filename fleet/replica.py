"""One fleet replica: the server's own FastAPI app (``service.app.create_app``) behind ``@serve.ingress``, with one
engine and its own decoder worker processes (or, with a decode tier, a handle to it: fleet/decode_tier.py), and the
fleet's budget (``FleetBudget``) and peers (``RayPeers``).

The budget: the replica reads the keeper's setting (fleet/keeper.py) during its app's start-up, so it reports
ready only with the current one; a PUT /budget on any replica is validated there, recorded by the keeper (new
version), then pushed to every live replica with ``DeploymentHandle.broadcast`` (best effort: a replica the push
misses, or one that started during it, takes the setting at its next poll); every replica re-reads the keeper every
``FleetConfig.poll_s``, and offers the keeper its own setting when the keeper's is older (a restarted keeper).
A keeper setting this bundle refuses at start-up (a level the new bundle lacks, kept by the detached keeper across
a redeploy) is logged and replaced by the replica's start-up setting, which it offers to the keeper: the fleet
comes up rather than never getting ready. GET /budget and GET /metrics on any replica gather every replica's
(broadcast), each series labelled ``replica``; when the broadcast fails they answer with this replica's own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import ray
from fastapi import FastAPI
from prometheus_client.metrics_core import Metric
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.exceptions import RayServeException
from ray.serve.handle import DeploymentHandle

from fleet.config import KEEPER_NAME, KEEPER_NAMESPACE, FleetConfig, decode_options, deployment_options
from fleet.decode_tier import DecodeReplica, tier_decoder
from fleet.keeper import BudgetKeeper
from model.budgets import BudgetError
from service.app import create_app
from service.budget.control import BudgetControl, BudgetSetting
from service.budget.store import Poller
from service.engine.runners.simulated import SimulatedRunner, StepProfile
from service.engine.types import BudgetState
from service.lifecycle import ServiceState
from service.metrics import render_families
from service.schemas import BudgetUpdate, ReplicaBudget
from service.settings import Settings

log = logging.getLogger(__name__)
KEEPER_TIMEOUT_S = 30.0  # a keeper that does not answer within this fails the start-up (or the PUT)
BROADCAST_TIMEOUT_S = 10.0


def keeper_actor(settings: Settings) -> Any:
    """The fleet's keeper, created by the first replica that asks (detached: it outlives every replica)."""
    actor = ray.remote(num_cpus=0, max_restarts=-1)(BudgetKeeper)
    return actor.options(
        name=KEEPER_NAME, namespace=KEEPER_NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(settings.startup_budget(), settings.budget_file)


def _ray_get(ref: Any, timeout: float) -> Any:
    """``ray.get``, raising the actor's own exception (BudgetFileReadOnly ...) rather than Ray's wrapper."""
    try:
        return ray.get(ref, timeout=timeout)
    except RayTaskError as exc:
        raise exc.cause from None


class FleetBudget:
    """The BudgetStore of a fleet replica (see the module docstring)."""

    def __init__(
        self, keeper: Any, initial: BudgetUpdate, poll_s: float, push: Callable[[BudgetSetting], None]
    ) -> None:
        self.keeper, self.initial, self.poll_s, self.push = keeper, initial, poll_s, push
        self._control: BudgetControl | None = None
        self._poller: Poller | None = None
        self._setting: BudgetSetting | None = None  # the newest setting applied here (offered to a restarted keeper)
        self._lock = threading.Lock()

    def start(self, control: BudgetControl) -> BudgetState:
        self._control = control
        setting: BudgetSetting = _ray_get(self.keeper.get.remote(), KEEPER_TIMEOUT_S)
        try:
            state = self._applied(setting, control.apply_setting(setting, force=True))
        except BudgetError as exc:
            state = self._start_on_own_setting(setting, exc)
        self._poller = Poller(self.poll, self.poll_s, "adafocus-fleet-budget")
        return state

    def _start_on_own_setting(self, refused: BudgetSetting, exc: BudgetError) -> BudgetState:
        """The keeper's setting does not fit this bundle: start on this replica's and offer it to the keeper."""
        assert self._control is not None
        own = BudgetSetting.new(self._control.pinned(self.initial))
        log.error(
            "the fleet's budget %s (version %d) does not fit this bundle (%s): starting on the start-up budget %s "
            "instead and offering it to the keeper; PUT /budget to choose another", refused.update, refused.version,
            exc, own.update,
        )
        state = self._applied(own, self._control.apply_setting(own, force=True))
        _ray_get(self.keeper.offer.remote(own), KEEPER_TIMEOUT_S)
        return state

    def apply(self, setting: BudgetSetting) -> BudgetState:
        """A setting pushed by the replica that took a PUT (skipped unless newer)."""
        assert self._control is not None, "a budget push before start-up"
        return self._applied(setting, self._control.apply_setting(setting))

    def _applied(self, setting: BudgetSetting, state: BudgetState) -> BudgetState:
        with self._lock:
            if state.setting_version == setting.version and (
                self._setting is None or setting.version >= self._setting.version
            ):
                self._setting = setting
        return state

    def poll(self) -> None:
        try:
            setting: BudgetSetting = _ray_get(self.keeper.get.remote(), KEEPER_TIMEOUT_S)
            own = self._setting
            if own is not None and setting.version < own.version:  # a restarted keeper: give it ours
                setting = _ray_get(self.keeper.offer.remote(own), KEEPER_TIMEOUT_S)
            self.apply(setting)
        except Exception as exc:  # the keeper restarting, a setting this bundle rejects: keep serving, say why
            log.warning("fleet budget poll failed: %s", exc)

    def put(self, update: BudgetUpdate) -> BudgetState:
        assert self._control is not None, "PUT /budget before start-up"
        update = self._control.pinned(update)  # "manual": the level it keeps, on every replica
        self._control.validate(update)  # 422 before the fleet records it
        setting: BudgetSetting = _ray_get(self.keeper.put.remote(update), KEEPER_TIMEOUT_S)
        self.push(setting)
        return self.apply(setting)

    def stop(self) -> None:
        if self._poller is not None:
            self._poller.stop()


class RayPeers:
    """Every live replica, reached with ``broadcast`` (the Peers of service/lifecycle.py); with ``decoders`` (the
    decode tier's handle), GET /metrics gathers every decode replica's metrics too."""

    def __init__(self, handle: DeploymentHandle[Any], decoders: DeploymentHandle[Any] | None = None) -> None:
        self.handle, self.decoders = handle, decoders

    def call_all(self, method: str, *args: Any, handle: DeploymentHandle[Any] | None = None) -> list[Any]:
        """``method`` on every live replica (of ``handle``, default the model replicas'); replicas that fail or
        time out are left out (and logged), and a broadcast that fails as a whole (timed out, no replica
        available) gives [] (the caller's own answer)."""
        try:
            results = (handle or self.handle).broadcast(method, *args).results(
                timeout_s=BROADCAST_TIMEOUT_S, return_exceptions=True
            )
        except (TimeoutError, RayServeException) as exc:  # DeploymentUnavailableError is a RayServeException
            log.warning("broadcast %s failed: %s", method, exc)
            return []
        for failed in (r for r in results if isinstance(r, BaseException)):
            log.warning("broadcast %s: a replica failed: %s", method, failed)
        return [r for r in results if not isinstance(r, BaseException)]

    def push(self, setting: BudgetSetting) -> None:
        self.call_all("apply_budget", setting)

    def budgets(self) -> list[ReplicaBudget]:
        return sorted(self.call_all("replica_budget"), key=lambda b: b.replica)

    def metrics(self) -> bytes:
        """b"" when no model replica answered (GET /metrics then renders this replica's own, without the tier's)."""
        families = [family for families in self.call_all("metric_families") for family in families]
        if families and self.decoders is not None:
            tier = self.call_all("metric_families", handle=self.decoders)
            families += [family for replica in tier for family in replica]
        return render_families(families) if families else b""


class AdaFocusReplica:
    """The deployment's class; ``fleet_app`` wraps it with ``serve.ingress`` and ``serve.deployment``."""

    def __init__(self, settings: Settings, config: FleetConfig, decoder: DeploymentHandle[Any] | None = None) -> None:
        context = serve.get_replica_context()
        self.name = context.replica_id.unique_id
        peers = RayPeers(serve.get_deployment_handle(context.deployment, context.app_name), decoder)
        self.budget = FleetBudget(
            keeper_actor(settings), settings.startup_budget(), config.poll_s, peers.push
        )
        step_s = config.simulated_step_s
        wrap = None if step_s is None else partial(SimulatedRunner, profile=StepProfile.fixed(step_s))
        decoders = None if decoder is None else tier_decoder(decoder)  # the decode tier's, else its own processes
        self.fastapi = create_app(
            settings, budget=self.budget, peers=peers, replica=self.name, wrap_runner=wrap, decoders=decoders
        )
        self.state: ServiceState = self.fastapi.state.service

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self.fastapi

    async def apply_budget(self, setting: BudgetSetting) -> ReplicaBudget:
        self.budget.apply(setting)
        return self.state.own_budget()

    async def replica_budget(self) -> ReplicaBudget:
        return self.state.own_budget()

    async def metric_families(self) -> list[Metric]:
        return self.state.metric_families()

    def check_health(self) -> None:
        """Ray restarts a replica whose engine stopped (while it is not shutting down)."""
        engine = self.state.engine
        if self.state.draining or engine is None:
            return
        if not engine.started or engine.draining:
            raise RuntimeError("the engine is not running")


def fleet_app(settings: Settings, config: FleetConfig) -> Any:
    """The Serve application: ``serve.run(fleet_app(...), route_prefix="/")``; with ``config.decode_replicas``,
    the decode tier bound into the model replicas (each gets a handle to it)."""
    ingress = serve.ingress()(AdaFocusReplica)
    deployment: Any = serve.deployment(ingress, **deployment_options(config, settings))
    if not config.decode_replicas:
        return deployment.bind(settings, config)
    tier: Any = serve.deployment(DecodeReplica, **decode_options(config, settings))
    return deployment.bind(settings, config, tier.bind(settings))


def build(args: dict[str, Any]) -> Any:
    """The import path of ``serve run`` / KubeRay configs (``fleet.replica:build``): settings from the environment,
    the fleet from ``args`` (FleetConfig fields); the config's ``deployments`` options override the defaults."""
    return fleet_app(Settings(), FleetConfig(**args))
