"""Where the budget setting lives and how it reaches the engine: the start-up level, the watched budget file, and
the versions that stay valid across restarts and replicas.

A *setting* is a ``PUT /budget`` body (a level, a GMACs target, thresholds, or ``mode: auto``) with a version. Every
setting an operator makes gets ``next_version``: ``max(previous + 1, the wall clock in ms since the epoch)``. So a
version never goes back to 1 on a restart (the clock has moved on), and every replica that applies one setting
reports the same number. The engine's own changes (the automatic budget picking a level, a ``PUT`` on a server with
no budget file) count up by one from there; ``BudgetState.setting_version`` keeps the setting's. The engine's
``version`` never goes back: a setting whose version is not above it (a file edited by hand after the automatic
budget moved on) gets the engine's next, and keeps its own as ``setting_version``. A bare ``{"mode": "manual"}``
is recorded as the level it keeps (``pinned_update``), so every replica and every restart holds that level.

Two stores, chosen at start-up from the settings (the fleet brings a third, ``FleetBudget`` in fleet/replica.py):
- ``LocalBudget`` (no ``ADAFOCUS_BUDGET_FILE``): starts at ``ADAFOCUS_BUDGET`` (or the bundle's default, or the
  automatic budget of ``ADAFOCUS_BUDGET_MODE=auto``: ``Settings.startup_budget``) with the start time as its
  version; ``PUT /budget`` applies at once and is forgotten by a restart.
- ``FileBudget`` (``ADAFOCUS_BUDGET_FILE``): the file is the source of truth. It holds a ``PUT /budget`` body plus
  an optional ``version`` (without one, the file's modification time in ms). Read at start-up (an invalid file stops
  the start-up; a missing one means ``ADAFOCUS_BUDGET``), then polled every ``ADAFOCUS_BUDGET_POLL_S``: the path is
  resolved and stat-ed anew each time, because a Kubernetes ConfigMap volume replaces the file by swapping a
  symlink, which inotify on the old path never sees. A newer version is applied; an invalid one is logged and
  ignored. ``PUT /budget`` is validated, written to the file atomically (a temporary file renamed over it), then
  applied, one at a time (a failed write leaves the engine as it was); when the file's directory is read-only (a
  ConfigMap) it is refused with 409 ``budget_file_read_only``: edit the ConfigMap.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from model.budgets import validate_thresholds
from service.engine.autobudget import AutoBudgetConfig
from service.engine.engine import Engine
from service.engine.types import BudgetState
from service.schemas import BudgetUpdate

log = logging.getLogger(__name__)


class BudgetFileReadOnly(Exception):
    """PUT /budget on a server whose budget file cannot be written (a ConfigMap): change the file instead."""


class BadBudgetFile(ValueError):
    """The budget file is not a valid setting (bad JSON, unknown fields, or not exactly one choice)."""


@dataclass(frozen=True)
class BudgetSetting:
    update: BudgetUpdate  # what the operator chose
    version: int  # next_version() when made; every replica that applies it reports this number

    def to_json(self) -> str:
        return json.dumps({**self.update.model_dump(exclude_none=True), "version": self.version}, indent=2) + "\n"


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def next_version(previous: int, now_ms: int) -> int:
    """The version of a new setting: after ``previous``, and at least the wall clock (so restarts never reuse one)."""
    return max(previous + 1, now_ms)


def parse_setting(text: str, fallback_version: int) -> BudgetSetting:
    """A budget file's content; ``fallback_version`` when it carries no ``version``."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise BadBudgetFile("the budget file must hold a JSON object")
        unknown = sorted(set(data) - set(BudgetUpdate.model_fields) - {"version"})
        if unknown:  # a typo must not pass as "no change"
            raise BadBudgetFile(f"unknown fields {unknown}")
        version = data.pop("version", fallback_version)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise BadBudgetFile(f"version must be a positive integer, got {version!r}")
        return BudgetSetting(BudgetUpdate.model_validate(data, strict=False), version)
    except (json.JSONDecodeError, ValidationError) as exc:
        raise BadBudgetFile(f"not a budget setting: {exc}") from exc


def apply_setting(engine: Engine, update: BudgetUpdate, version: int | None, default_p99_s: float) -> BudgetState:
    """Make ``update`` the engine's budget (``version`` None: the engine's next). Raises BudgetError."""
    if update.mode == "auto":
        objective = update.p99_s or default_p99_s
        return engine.set_budget_auto(AutoBudgetConfig(slo_p99_s=objective, min_level=update.min_level), version)
    if update.level is not None:
        return engine.set_budget_level(update.level, version)
    if update.gmacs is not None:
        return engine.set_budget_gmacs(update.gmacs, version)
    if update.thresholds is not None:
        return engine.set_budget_thresholds(update.thresholds, version)
    return engine.set_budget_level(engine.budget_state().name, version)  # mode manual: keep the level auto chose


def pinned_update(state: BudgetState, update: BudgetUpdate) -> BudgetUpdate:
    """``update`` as it is recorded: a bare ``mode: manual`` (keep the level the automatic budget chose) becomes that
    level (or its thresholds, when "custom"), so that every replica and every restart reads the same budget."""
    if update.mode != "manual" or (update.level, update.gmacs, update.thresholds) != (None, None, None):
        return update
    if state.name in {level.name for level in state.levels.levels}:
        return BudgetUpdate(level=state.name)
    return BudgetUpdate(thresholds=list(state.thresholds))


def validate_update(state: BudgetState, num_exits: int, update: BudgetUpdate) -> None:
    """BudgetError unless ``apply_setting`` would accept ``update`` (checked before a fleet records it)."""
    if update.level is not None:
        state.levels.get(update.level)
    if update.min_level is not None:
        state.levels.get(update.min_level)
    if update.gmacs is not None:
        state.levels.best_within(update.gmacs)
    if update.thresholds is not None:
        validate_thresholds(update.thresholds, num_exits)


class BudgetStore(Protocol):
    """Where the setting lives. ``start`` sets the engine's start-up budget (before the server is ready) and starts
    following changes; ``put`` makes a new setting (PUT /budget); ``stop`` stops following."""

    def start(self, engine: Engine, on_apply: Callable[[BudgetState], None]) -> BudgetState: ...

    def put(self, update: BudgetUpdate) -> BudgetState: ...

    def stop(self) -> None: ...


class Applier:
    """Applies settings to one engine, newest first: an older or equal version than the engine's setting is
    skipped (a push and a poll may bring the same setting twice, or out of order)."""

    def __init__(self, engine: Engine, default_p99_s: float, on_apply: Callable[[BudgetState], None]) -> None:
        self.engine, self.default_p99_s, self.on_apply = engine, default_p99_s, on_apply
        self._lock = threading.Lock()

    def apply(self, setting: BudgetSetting, force: bool = False) -> BudgetState:
        """``force``: apply even if not newer (the start-up setting)."""
        with self._lock:
            state = self.engine.budget_state()
            if not force and setting.version <= state.setting_version:
                return state
            state = apply_setting(self.engine, setting.update, setting.version, self.default_p99_s)
        self.on_apply(state)
        return state

    def apply_local(self, update: BudgetUpdate) -> BudgetState:
        with self._lock:
            state = apply_setting(self.engine, update, None, self.default_p99_s)
        self.on_apply(state)
        return state


class LocalBudget:
    def __init__(self, initial: BudgetUpdate, default_p99_s: float) -> None:
        self.initial, self.default_p99_s = initial, default_p99_s
        self._applier: Applier | None = None

    def start(self, engine: Engine, on_apply: Callable[[BudgetState], None]) -> BudgetState:
        self._applier = Applier(engine, self.default_p99_s, on_apply)
        return self._applier.apply(BudgetSetting(self.initial, wall_ms()), force=True)

    def put(self, update: BudgetUpdate) -> BudgetState:
        assert self._applier is not None, "PUT /budget before start-up"
        return self._applier.apply_local(pinned_update(self._applier.engine.budget_state(), update))

    def stop(self) -> None:
        pass


class BudgetFile:
    """The budget file: read it, tell whether it changed since (stat of the path resolved anew: a ConfigMap swaps a
    symlink), write it atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[str, int, int, int] | None = None  # (resolved path, inode, mtime ns, size) last read

    def read(self) -> BudgetSetting | None:
        """The file's setting (None: no file; BadBudgetFile: not a setting); what it read counts as seen."""
        try:
            resolved = os.path.realpath(self.path)
            st = os.stat(resolved)
            text = Path(resolved).read_text()
        except FileNotFoundError:
            self._seen = None
            return None
        self._seen = (resolved, st.st_ino, st.st_mtime_ns, st.st_size)
        return parse_setting(text, max(st.st_mtime_ns // 1_000_000, 1))

    def changed(self) -> bool:
        try:
            resolved = os.path.realpath(self.path)
            st = os.stat(resolved)
        except FileNotFoundError:
            return False
        return (resolved, st.st_ino, st.st_mtime_ns, st.st_size) != self._seen

    def check_writable(self) -> None:
        """BudgetFileReadOnly unless a file can be created next to it (a ConfigMap volume is read-only)."""
        try:
            fd, probe = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.resolve().parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise BudgetFileReadOnly(
                f"the budget is set by the file {self.path}, which cannot be written ({exc.strerror}; a ConfigMap?): "
                "change that file instead"
            ) from exc

    def write(self, setting: BudgetSetting) -> None:
        write_atomically(self.path, setting.to_json())
        self.read()  # our own write is not a change to apply again


class Poller:
    """Calls ``fn`` every ``period_s`` seconds on a daemon thread until ``stop``."""

    def __init__(self, fn: Callable[[], object], period_s: float, name: str) -> None:
        self.fn, self.period_s = fn, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.fn()


class FileBudget:
    def __init__(self, path: Path, initial: BudgetUpdate, poll_s: float, default_p99_s: float) -> None:
        self.file, self.initial, self.poll_s, self.default_p99_s = BudgetFile(path), initial, poll_s, default_p99_s
        self._applier: Applier | None = None
        self._poller: Poller | None = None
        self._lock = threading.Lock()  # one PUT or poll at a time: version, write and apply in one order

    def start(self, engine: Engine, on_apply: Callable[[BudgetState], None]) -> BudgetState:
        self._applier = Applier(engine, self.default_p99_s, on_apply)
        setting = self.file.read() or BudgetSetting(self.initial, wall_ms())  # a bad file raises: start-up stops
        state = self._applier.apply(setting, force=True)
        self._poller = Poller(self.check, self.poll_s, "adafocus-budget-file")
        return state

    def check(self) -> BudgetState | None:
        """One poll: apply the file's setting if it changed and is newer; the new state, else None."""
        if self._applier is None:
            return None
        with self._lock:
            return self._check_locked(self._applier)

    def _check_locked(self, applier: Applier) -> BudgetState | None:
        if not self.file.changed():
            return None
        try:
            setting = self.file.read()
            if setting is None:
                return None
            before = applier.engine.budget_state().version
            state = applier.apply(setting)
        except Exception as exc:  # a bad edit must not stop the server: keep the current budget, say why
            log.error("budget file %s ignored: %s", self.file.path, exc)
            return None
        if state.version == before:
            return None
        log.info("budget file %s: %s (version %d)", self.file.path, state.name, state.version)
        return state

    def put(self, update: BudgetUpdate) -> BudgetState:
        """Validate, write the file, then apply: a refused setting (BudgetError) or a failed write (OSError) leaves
        the file and the engine as they were, so a restart never reverts what was applied."""
        assert self._applier is not None, "PUT /budget before start-up"
        engine = self._applier.engine
        self.file.check_writable()
        with self._lock:
            state = engine.budget_state()
            setting = BudgetSetting(pinned_update(state, update), next_version(state.setting_version, wall_ms()))
            validate_update(state, engine.num_exits, setting.update)
            self.file.write(setting)
            return self._applier.apply(setting, force=True)

    def stop(self) -> None:
        if self._poller is not None:
            self._poller.stop()


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old content or the new, never a part: a temporary file in the same directory, renamed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.resolve().parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path.resolve())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
