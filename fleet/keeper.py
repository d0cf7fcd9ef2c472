"""The fleet's one budget: a named, detached Ray actor that holds the current setting (``BudgetSetting``: a PUT
/budget body and its version) for every replica.

``put`` gives a new setting the next fleet-wide version (``BudgetSetting.new``: after the last, at least the wall clock)
and records it; with ``ADAFOCUS_BUDGET_FILE`` it is written there first (refused with ``BudgetFileReadOnly`` on a
ConfigMap, whose edits ``get`` picks up instead). Replicas read ``get`` before they report ready and every
``FleetConfig.poll_s`` after; a PUT also pushes the new setting to every live replica at once (fleet/replica.py).
Without a budget file the setting lives in this actor's memory: it outlives replicas and redeploys, not the Ray
cluster. Ray restarts a dead keeper (``max_restarts=-1``) by running ``__init__`` again: a restarted keeper without
a budget file (or whose file is gone) starts at version 0, which no replica takes as newer, and the replicas
``offer`` it the setting they run (the highest version wins), so a restart never undoes an operator's PUT. A
setting that is offered lives in memory only: the budget file is written by ``put`` alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import ray

from service.budget.control import BudgetSetting
from service.budget.store import BudgetFile
from service.schemas import BudgetUpdate

log = logging.getLogger(__name__)
RESTARTED_VERSION = 0  # a restarted keeper's in-memory setting: older than any replica's, until one offers its own


def restarted() -> bool:
    """Whether this is a Ray actor that Ray restarted (False for a plain object, as in the tests)."""
    if not ray.is_initialized():  # get_runtime_context() would start a local cluster
        return False
    context = ray.get_runtime_context()
    return context.get_actor_id() is not None and bool(context.was_current_actor_reconstructed)


class BudgetKeeper:
    def __init__(self, initial: BudgetUpdate, path: Path | None) -> None:
        self.file = None if path is None else BudgetFile(path)
        found = None if self.file is None else self.file.read()  # a bad file raises: the fleet does not start
        if found is None:
            found = BudgetSetting(initial, RESTARTED_VERSION) if restarted() else BudgetSetting.new(initial)
        self.setting = found

    def get(self) -> BudgetSetting:
        """The current setting (a newer budget file's, if it changed)."""
        if self.file is not None and self.file.changed():
            try:
                found = self.file.read()
            except ValueError as exc:  # a bad edit: keep the setting, say why
                log.error("budget file %s ignored: %s", self.file.path, exc)
            else:
                if found is not None and found.version > self.setting.version:
                    self.setting = found
        return self.setting

    def put(self, update: BudgetUpdate) -> BudgetSetting:
        """Record a new setting (already validated by the replica that took the PUT) with the next version."""
        setting = BudgetSetting.new(update, after=self.get().version)
        if self.file is not None:
            self.file.check_writable()
            self.file.write(setting)
        self.setting = setting
        return setting

    def offer(self, setting: BudgetSetting) -> BudgetSetting:
        """A replica's setting, kept if newer than this keeper's (after a restart); the keeper's setting after."""
        current = self.get()
        if setting.version > current.version:
            log.warning("budget keeper: taking a replica's setting %s (version %d)", setting.update, setting.version)
            self.setting = setting
        return self.setting
