"""Bulk work runs with fewer cyclic collections, gives the setting back, and still collects cycles."""

from __future__ import annotations

import gc
import io
import threading
import weakref

import pytest

from connector import operator
from connector.collector import BULK_THRESHOLD, fewer_collections
from connector.settings import load_settings
from state.models import OptOut
from state.store import Store

from .conftest import write_settings


@pytest.fixture
def default_threshold():
    """The interpreter's usual first threshold during the test, whatever ran before; put back after."""
    saved = gc.get_threshold()
    gc.set_threshold(700, *saved[1:])
    yield 700
    gc.set_threshold(*saved)


def test_the_block_runs_at_the_bulk_threshold_and_the_old_one_comes_back(default_threshold):
    with fewer_collections():
        assert gc.get_threshold()[0] == BULK_THRESHOLD
    assert gc.get_threshold()[0] == default_threshold


def test_the_old_threshold_comes_back_when_the_block_raises(default_threshold):
    with pytest.raises(KeyError):
        with fewer_collections():
            raise KeyError("boom")
    assert gc.get_threshold()[0] == default_threshold


def test_work_on_two_threads_keeps_the_bulk_threshold_until_the_last_one_ends(default_threshold):
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def second():
        with fewer_collections():
            second_in.set()
            first_out.wait(5)
            seen["after the first ended"] = gc.get_threshold()[0]

    thread = threading.Thread(target=second)
    with fewer_collections():
        first_in.set()
        thread.start()
        assert second_in.wait(5)
    first_out.set()
    thread.join(5)
    assert seen["after the first ended"] == BULK_THRESHOLD
    assert gc.get_threshold()[0] == default_threshold


def test_a_collector_turned_off_stays_off_and_a_higher_threshold_is_not_lowered():
    saved = gc.get_threshold()
    try:
        gc.set_threshold(0, *saved[1:])
        with fewer_collections():
            assert gc.get_threshold()[0] == 0
        assert gc.get_threshold()[0] == 0
        gc.set_threshold(BULK_THRESHOLD * 3, *saved[1:])
        with fewer_collections():
            assert gc.get_threshold()[0] == BULK_THRESHOLD * 3
        assert gc.get_threshold()[0] == BULK_THRESHOLD * 3
    finally:
        gc.set_threshold(*saved)


class _Cycle:
    def __init__(self):
        self.me = self


def test_cyclic_garbage_made_during_bulk_work_is_still_collected_without_being_asked(default_threshold):
    assert gc.isenabled()
    with fewer_collections():
        first = _Cycle()
        gone = weakref.ref(first)
        del first
        # Garbage that only the collector can free, more than the threshold lets wait.
        for _ in range(BULK_THRESHOLD * 2):
            _Cycle()
        assert gone() is None


# -- where the engine and the commands use it ------------------------------------------------


def threshold_during(monkeypatch, target, name: str) -> list[int]:
    """Wrap target.name for the test; each call adds the collector's first threshold at that moment."""
    original, seen = getattr(target, name), []

    def recording(*args, **kwargs):
        seen.append(gc.get_threshold()[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, recording)
    return seen


def test_push_pull_and_reconcile_run_at_the_bulk_threshold(memory_world, monkeypatch, default_threshold):
    settings, store, engine, built = memory_world([{"name": "src", "role": "read"},
                                                   {"name": "sink", "role": "write", "batch_size": 2}])
    built["src"].opt_out(OptOut("a@x.io"))
    built["sink"].opt_out(OptOut("held@x.io"))
    pulls = threshold_during(monkeypatch, built["src"], "read_changes")
    pushes = threshold_during(monkeypatch, built["sink"], "apply")
    reads = threshold_during(monkeypatch, built["sink"], "read_all")
    assert engine.cycle("src").error is None
    assert engine.cycle("sink", push_only=True).error is None
    assert engine.reconcile("sink").error is None
    assert pulls == [BULK_THRESHOLD] and reads == [BULK_THRESHOLD]
    assert pushes and set(pushes) == {BULK_THRESHOLD}
    assert sorted(built["sink"].held) == [("a@x.io", "*"), ("held@x.io", "*")]      # the work was done
    assert gc.get_threshold()[0] == default_threshold
    reports = engine.sync_once()
    assert [r.error for r in reports] == [None, None] and gc.get_threshold()[0] == default_threshold


def test_import_and_export_run_at_the_bulk_threshold(tmp_path, monkeypatch, default_threshold):
    path = write_settings(tmp_path, [{"name": "crm", "type": "memory"}])
    settings = load_settings(path, environ={})
    listing = tmp_path / "list.csv"
    listing.write_text("email\na@x.io\nb@x.io\n", encoding="utf-8")
    staged = threshold_during(monkeypatch, operator, "run_import_batches")
    _, preview = operator.import_file(settings, listing, confirm=2)
    assert preview.applied and staged == [BULK_THRESHOLD]
    read = threshold_during(monkeypatch, Store, "iter_suppressions")
    out = io.StringIO()
    assert operator.export(settings, out) == 2 and read == [BULK_THRESHOLD]
    assert out.getvalue().splitlines()[1].startswith("a@x.io,*,imported,user,import,")
    assert gc.get_threshold()[0] == default_threshold


def test_a_command_freezes_what_it_loaded_and_gives_it_back_when_it_ends(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from connector.cli import main

    path = write_settings(tmp_path, [{"name": "crm", "type": "memory"}])
    Store(load_settings(path, environ={}).store.path).close()
    counts = []
    original = operator.export

    def export(*args, **kwargs):
        counts.append(gc.get_freeze_count())
        return original(*args, **kwargs)

    monkeypatch.setattr(operator, "export", export)
    for arguments in (["export"], ["export", "--source", "nosuch"]):   # ends well, and with an error
        result = CliRunner().invoke(main, ["--config", str(path), *arguments])
        assert result.exit_code == (0 if arguments == ["export"] else 2), result.output
        assert gc.get_freeze_count() == 0
    assert len(counts) == 2 and min(counts) > 1000    # the modules and settings loaded by then


def test_the_daemon_keeps_the_usual_collections_while_it_pushes(tmp_path, monkeypatch, default_threshold):
    """Its webhook receiver's garbage must not wait for the bulk threshold (its ingest RSS rose by 21 MB)."""
    import threading

    from connector.daemon import Daemon
    from connector.settings import validate_settings

    from . import memory_adapter
    from .process import wait_for

    raw = {"store": {"path": str(tmp_path / "store.db")},
           "adapters": [{"name": "a", "type": "memory", "interval": 1}, {"name": "b", "type": "memory", "interval": 1}]}
    settings = validate_settings(raw, tmp_path / "settings.toml")
    for adapter in settings.adapters:
        adapter.interval = 0.2  # in-process, below the settings' floor, to keep the test quick
    memory_adapter.VENDORS.clear()
    seen: list[int] = []
    original = memory_adapter.MemoryAdapter.apply

    def apply(self, batch):
        seen.append(gc.get_threshold()[0])
        return original(self, batch)

    monkeypatch.setattr(memory_adapter.MemoryAdapter, "apply", apply)
    daemon = Daemon(settings, grace=1.0)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(daemon.run()), daemon=True)
    thread.start()
    try:
        wait_for(lambda: "a" in memory_adapter.VENDORS)
        memory_adapter.VENDORS["a"].opt_out(OptOut("x@example.com"))
        wait_for(lambda: "b" in memory_adapter.VENDORS and ("x@example.com", "*") in memory_adapter.VENDORS["b"].held,
                 timeout=5)
    finally:
        daemon.request_stop()
        thread.join(10)
    assert codes == [0] and seen and set(seen) == {default_threshold}


def test_the_daemon_command_freezes_nothing(tmp_path, monkeypatch):
    """`run` lives on: what its start-up left for the collector must be collected as usual, not frozen."""
    from click.testing import CliRunner

    import connector.daemon
    from connector.cli import main

    path = write_settings(tmp_path, [{"name": "crm", "type": "memory"}])
    counts = []

    class Daemon:
        def __init__(self, settings, grace):
            self.settings = settings

        def run(self):
            counts.append(gc.get_freeze_count())
            return 0

    monkeypatch.setattr(connector.daemon, "Daemon", Daemon)
    result = CliRunner().invoke(main, ["--config", str(path), "run"])
    assert result.exit_code == 0, result.output
    assert counts == [0]
