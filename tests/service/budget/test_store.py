"""The budget setting that survives restarts: ADAFOCUS_BUDGET, the watched budget file (a ConfigMap's symlink swap
included), versions that never go back to 1, and PUT /budget on a server with a file (written, or 409)."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from model.budgets import BudgetError
from service.budget import store as budgetstore
from service.budget.control import BudgetControl, BudgetSetting, wall_ms
from service.budget.store import BadBudgetFile, BudgetFileReadOnly, FileBudget, LocalBudget, parse_setting
from service.engine.active_budget import next_version
from service.engine.engine import Engine
from service.engine.types import BudgetState
from service.schemas import BudgetUpdate
from tests.service.conftest import OPERATOR_TOKEN, in_process
from tests.service.engine.tiny import World, build_world, make_engine

AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@pytest.fixture(scope="module")
def world() -> World:
    return build_world()


@pytest.fixture
def engine(world: World) -> Iterator[Engine]:
    engine, _ = make_engine(world)
    yield engine
    engine.shutdown(drain=False)


def configmap(root: Path, content: dict[str, object], generation: int) -> Path:
    """A Kubernetes ConfigMap volume: ``budget.json -> ..data/budget.json``, ``..data -> ..<generation>``; a new
    generation swaps the ``..data`` symlink (what the kubelet does on an update)."""
    data = root / f"..{generation}"
    data.mkdir()
    (data / "budget.json").write_text(json.dumps(content))
    tmp = root / "..data_tmp"
    tmp.symlink_to(data.name)
    os.replace(tmp, root / "..data")
    if not (root / "budget.json").is_symlink():
        (root / "budget.json").symlink_to("..data/budget.json")
    return root / "budget.json"


def start_after_a_restart(world: World, path: Path, initial: BudgetUpdate) -> BudgetState:
    """The budget a new server (a new engine and store on ``path``) starts with."""
    engine, _ = make_engine(world)
    store = FileBudget(path, initial, 3600)
    try:
        return store.start(BudgetControl(engine.budget, 0.5))
    finally:
        store.stop()
        engine.shutdown(drain=False)


def test_versions_follow_the_wall_clock_and_never_go_back() -> None:
    assert next_version(5, 1_000) == 1_000
    assert next_version(2_000, 1_000) == 2_001  # a clock behind the last version: still after it
    assert parse_setting('{"level": "mid", "version": 7}', 99) == BudgetSetting(BudgetUpdate(level="mid"), 7)
    assert parse_setting('{"mode": "auto", "p99_s": 0.2}', 99).version == 99  # no version: the fallback (mtime)


@pytest.mark.parametrize(
    "text",
    ['{"level": "mid", "gmacs": 1}', "[1]", "{", '{"level": "mid", "version": 0}', '{"level": "mid", "x": 1}'],
)
def test_a_bad_file_is_refused(text: str) -> None:
    with pytest.raises(BadBudgetFile):
        parse_setting(text, 1)


def test_local_budget_starts_at_its_level_with_a_wall_clock_version(engine: Engine) -> None:
    applied: list[BudgetState] = []
    before = wall_ms()
    state = LocalBudget(BudgetUpdate(level="mid")).start(BudgetControl(engine.budget, 0.5, applied.append))
    assert (state.name, state.setting_version == state.version) == ("mid", True)
    assert before <= state.version <= wall_ms()  # a restart starts later, so higher: never 1 again
    assert applied == [state]


def test_local_budget_refuses_an_unknown_start_level(engine: Engine) -> None:
    with pytest.raises(BudgetError):
        LocalBudget(BudgetUpdate(level="nope")).start(BudgetControl(engine.budget, 0.5))


def test_the_file_is_read_at_start_up_then_followed_through_symlink_swaps(engine: Engine, tmp_path: Path) -> None:
    path = configmap(tmp_path, {"level": "mid", "version": 10}, 1)
    store = FileBudget(path, BudgetUpdate(level="full"), poll_s=3600)  # polled by hand here
    try:
        state = store.start(BudgetControl(engine.budget, 0.5))
        assert (state.name, state.version) == ("mid", 10)  # the file wins over the start-up level
        assert store.check() is None  # nothing changed
        configmap(tmp_path, {"level": "full", "version": 11}, 2)
        state = store.check()  # type: ignore[assignment]
        assert (state.name, state.version, engine.budget.current().name) == ("full", 11, "full")
        configmap(tmp_path, {"level": "fast", "version": 9}, 3)  # older than what runs: ignored
        assert store.check() is None and engine.budget.current().version == 11
        configmap(tmp_path, {"level": "nope", "version": 12}, 4)  # invalid: logged, the budget stays
        assert store.check() is None and engine.budget.current().name == "full"
        configmap(tmp_path, {"mode": "auto", "p99_s": 0.25, "version": 13}, 5)
        state = store.check()  # type: ignore[assignment]
        assert (state.version, state.setting_version, state.auto is not None) == (13, 13, True)
    finally:
        store.stop()


def test_a_bad_file_stops_the_start_up(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "budget.json").write_text('{"level": "nope"}')
    with pytest.raises(BudgetError):
        FileBudget(tmp_path / "budget.json", BudgetUpdate(mode="manual"), 3600).start(BudgetControl(engine.budget, 0.5))


def test_put_writes_the_file_atomically_and_a_restart_keeps_it(world: World, tmp_path: Path) -> None:
    path = tmp_path / "budget.json"  # no file yet: the start-up level, until a PUT writes one
    first, _ = make_engine(world)
    store = FileBudget(path, BudgetUpdate(level="mid"), 3600)
    try:
        start = store.start(BudgetControl(first.budget, 0.5))
        put = store.put(BudgetUpdate(level="full"))
        assert put.version > start.version and put.name == "full"
        assert json.loads(path.read_text()) == {"level": "full", "version": put.version}
        assert [p.name for p in tmp_path.iterdir()] == ["budget.json"]  # no temporary file left behind
        assert store.check() is None  # its own write is not a change
    finally:
        store.stop()
        first.shutdown(drain=False)
    state = start_after_a_restart(world, path, BudgetUpdate(level="mid"))
    assert (state.name, state.version) == ("full", put.version)


def test_put_where_the_file_cannot_be_written_is_refused_and_changes_nothing(engine: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "config"
    folder.mkdir()
    path = configmap(folder, {"level": "mid", "version": 10}, 1)
    store = FileBudget(path, BudgetUpdate(mode="manual"), 3600)
    try:
        store.start(BudgetControl(engine.budget, 0.5))
        shutil.rmtree(folder)  # as good as read-only, for root too (a ConfigMap volume refuses writes: EROFS)
        with pytest.raises(BudgetFileReadOnly):
            store.put(BudgetUpdate(level="full"))
        assert (engine.budget.current().name, engine.budget.current().version) == ("mid", 10)
    finally:
        store.stop()


def test_a_bare_manual_put_is_written_as_the_level_it_keeps(world: World, tmp_path: Path) -> None:
    path = tmp_path / "budget.json"
    first, _ = make_engine(world)
    store = FileBudget(path, BudgetUpdate(level="mid"), 3600)
    try:
        store.start(BudgetControl(first.budget, 0.5))
        store.put(BudgetUpdate(mode="auto", p99_s=5.0))  # starts from the active level, "mid"
        put = store.put(BudgetUpdate(mode="manual"))
        assert (put.name, put.auto) == ("mid", None)
        assert json.loads(path.read_text()) == {"level": "mid", "version": put.setting_version}
    finally:
        store.stop()
        first.shutdown(drain=False)
    state = start_after_a_restart(world, path, BudgetUpdate(mode="manual"))
    assert (state.name, state.setting_version) == ("mid", put.setting_version)  # the level, not the default


def test_a_put_whose_write_fails_leaves_the_engine_and_the_file_as_they_were(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "budget.json"
    path.write_text('{"level": "mid", "version": 10}')
    store = FileBudget(path, BudgetUpdate(mode="manual"), 3600)
    try:
        before = store.start(BudgetControl(engine.budget, 0.5))

        def disk_full(path: Path, text: str) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(budgetstore, "write_atomically", disk_full)
        with pytest.raises(OSError, match="No space left"):
            store.put(BudgetUpdate(level="full"))
        assert engine.budget.current() is before  # not applied: a restart would have reverted it
        assert path.read_text() == '{"level": "mid", "version": 10}'
    finally:
        store.stop()


def test_concurrent_puts_leave_the_file_and_the_engine_agreeing(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "budget.json"
    store = FileBudget(path, BudgetUpdate(level="mid"), 3600)
    write = budgetstore.write_atomically
    second_wrote = threading.Event()
    writers: list[str] = []

    def slow_first_write(target: Path, text: str) -> None:
        """The first PUT writes last if the second can get past it (apply, write) while it writes."""
        writers.append(threading.current_thread().name)
        if len(writers) == 1:
            second_wrote.wait(timeout=0.5)  # bounded: with the lock the second PUT cannot get here first
        else:
            second_wrote.set()
        write(target, text)

    monkeypatch.setattr(budgetstore, "write_atomically", slow_first_write)
    try:
        store.start(BudgetControl(engine.budget, 0.5))
        threads = [threading.Thread(target=store.put, args=(BudgetUpdate(level=level),), name=level)
                   for level in ("fast", "full")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        state = engine.budget.current()
        assert sorted(writers) == ["fast", "full"]
        assert json.loads(path.read_text()) == {"level": state.name, "version": state.setting_version}
        assert state.name == writers[-1]  # the last write is what the engine runs
    finally:
        store.stop()


def test_http_budget_file_start_put_and_409(tiny_bundle: Path, tmp_path: Path) -> None:
    path = tmp_path / "budget.json"
    path.write_text('{"level": "mid", "version": 42}\n')
    clients = in_process(tiny_bundle, budget_file=path, operator_token=OPERATOR_TOKEN, replica_name="r-1")
    app = next(clients)
    try:
        got = app.get("/budget")
        assert got.status_code == 200
        body = got.json()
        assert (body["name"], body["version"], body["setting_version"], body["replica"]) == ("mid", 42, 42, "r-1")
        assert body["replicas"] == [{"replica": "r-1", "name": "mid", "version": 42, "setting_version": 42}]
        assert got.headers["X-Replica"] == "r-1"
        put = app.put("/budget", json={"level": "low"}, headers=AUTH)
        assert put.status_code == 200
        assert json.loads(path.read_text()) == {"level": "low", "version": put.json()["version"]}
        metrics = {s.name: s.value for f in text_string_to_metric_families(app.get("/metrics").text) for s in f.samples}
        assert metrics["adafocus_budget_setting_version"] == put.json()["version"]
        shutil.rmtree(tmp_path)
        refused = app.put("/budget", json={"level": "high"}, headers=AUTH)
        assert refused.status_code == 409
        assert refused.json()["code"] == "budget_file_read_only"
        assert app.get("/budget").json()["name"] == "low"
    finally:
        clients.close()


def test_http_start_up_level_from_the_settings(tiny_bundle: Path) -> None:
    before = wall_ms()
    clients = in_process(tiny_bundle, budget="low")
    app = next(clients)
    try:
        body = app.get("/budget").json()
        assert body["name"] == "low" and body["version"] >= before
    finally:
        clients.close()
