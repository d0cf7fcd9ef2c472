"""Where the budget setting lives: the start-up level, the watched budget file, and the setting's version that stays
valid across restarts (``BudgetSetting``; every version follows ``service.engine.active_budget.next_version``).
Validation and the swap itself are ``service.budget.control.BudgetControl``'s, which every store calls.

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
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from service.budget.control import BudgetControl, BudgetSetting
from service.engine.types import BudgetState
from service.schemas import BudgetUpdate

log = logging.getLogger(__name__)


class BudgetFileReadOnly(Exception):
    """PUT /budget on a server whose budget file cannot be written (a ConfigMap): change the file instead."""


class BadBudgetFile(ValueError):
    """The budget file is not a valid setting (bad JSON, unknown fields, or not exactly one choice)."""


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


class BudgetStore(Protocol):
    """Where the setting lives. ``start`` sets the engine's start-up budget through ``control`` (before the server
    is ready) and starts following changes; ``put`` makes a new setting (PUT /budget); ``stop`` stops following."""

    def start(self, control: BudgetControl) -> BudgetState: ...

    def put(self, update: BudgetUpdate) -> BudgetState: ...

    def stop(self) -> None: ...


class LocalBudget:
    def __init__(self, initial: BudgetUpdate) -> None:
        self.initial = initial
        self._control: BudgetControl | None = None

    def start(self, control: BudgetControl) -> BudgetState:
        self._control = control
        return control.apply_setting(BudgetSetting.new(self.initial), force=True)

    def put(self, update: BudgetUpdate) -> BudgetState:
        assert self._control is not None, "PUT /budget before start-up"
        return self._control.apply(update)  # the engine's next version

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
    def __init__(self, path: Path, initial: BudgetUpdate, poll_s: float) -> None:
        self.file, self.initial, self.poll_s = BudgetFile(path), initial, poll_s
        self._control: BudgetControl | None = None
        self._poller: Poller | None = None
        self._lock = threading.Lock()  # one PUT or poll at a time: version, write and apply in one order

    def start(self, control: BudgetControl) -> BudgetState:
        self._control = control
        setting = self.file.read() or BudgetSetting.new(self.initial)  # a bad file raises: start-up stops
        state = control.apply_setting(setting, force=True)
        self._poller = Poller(self.check, self.poll_s, "adafocus-budget-file")
        return state

    def check(self) -> BudgetState | None:
        """One poll: apply the file's setting if it changed and is newer; the new state, else None."""
        if self._control is None:
            return None
        with self._lock:
            return self._check_locked(self._control)

    def _check_locked(self, control: BudgetControl) -> BudgetState | None:
        if not self.file.changed():
            return None
        try:
            setting = self.file.read()
            if setting is None:
                return None
            before = control.current().version
            state = control.apply_setting(setting)
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
        control = self._control
        assert control is not None, "PUT /budget before start-up"
        self.file.check_writable()
        with self._lock:
            setting = BudgetSetting.new(control.pinned(update), after=control.current().setting_version)
            control.validate(setting.update)
            self.file.write(setting)
            return control.apply_setting(setting, force=True)

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
