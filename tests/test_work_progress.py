"""Progress of a long push or reconcile: `progress` log events, and `status` (any process) while it runs.

The daemon runs in this process (so that PROGRESS_EVERY can be lowered) against a csv_file sink
slowed down here; `status --json` runs as a separate process, as an operator would run it.
"""

from __future__ import annotations

import io
import json
import threading
import time

import pytest

from adapters.csv_file import CsvFileAdapter
from connector import progress as progress_module
from connector.daemon import Daemon
from connector.logs import setup_logging
from connector.operator import import_file
from connector.progress import STORE_KEY, WorkProgress, describe_progress
from connector.server import render_status_page
from connector.settings import load_settings
from state.store import Store

from . import memory_adapter
from .conftest import write_settings
from .process import run_cli, wait_for

EVENTS = 3_000
BATCH = 100


def _status(settings_path) -> dict:
    result = run_cli("--config", str(settings_path), "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _sink_row(data: dict) -> dict:
    return next(row for row in data["adapters"] if row["adapter"] == "out")


@pytest.fixture
def slow_sink(monkeypatch):
    """Every csv_file batch takes 0.1 s more: 30 batches of 100 make a push of about 3 s."""
    calls = []
    original = CsvFileAdapter.apply

    def slow_apply(self, batch):
        calls.append(len(batch))
        time.sleep(0.1)
        return original(self, batch)

    monkeypatch.setattr(CsvFileAdapter, "apply", slow_apply)
    return calls


def test_a_long_push_logs_its_progress_and_status_shows_it_while_it_runs(tmp_path, monkeypatch, slow_sink):
    monkeypatch.setattr(progress_module, "PROGRESS_EVERY", 0.2)
    settings_path = write_settings(tmp_path, [{"name": "out", "type": "csv_file", "role": "write",
                                               "path": "out.csv", "batch_size": BATCH, "interval": "1h"}])
    settings = load_settings(settings_path)
    listing = tmp_path / "list.csv"
    listing.write_text("email\n" + "".join(f"user{i}@example.com\n" for i in range(EVENTS)), encoding="utf-8")
    import_file(settings, listing, confirm=EVENTS)  # the events the push will apply
    log = io.StringIO()
    setup_logging("json", "info", stream=log)
    daemon = Daemon(settings, grace=2.0)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: '"event": "progress"' in log.getvalue(), timeout=20)
        during = _sink_row(_status(settings_path))
        text = run_cli("--config", str(settings_path), "status").stdout
        wait_for(lambda: '"event": "cycle"' in log.getvalue(), timeout=30)  # the cycle's line: the push ended
        after = _status(settings_path)
        with Store(settings.store.path) as store:
            stored_after = store.adapter_memory("out")
    finally:
        daemon.request_stop()
        thread.join(10)

    events = [json.loads(line) for line in log.getvalue().splitlines() if line.strip()]
    lines = [e for e in events if e["event"] == "progress"]
    assert len(lines) >= 3
    assert all(e["adapter"] == "out" and e["phase"] == "push" and e["total"] == EVENTS for e in lines)
    done = [e["done"] for e in lines]
    assert done == sorted(set(done)) and 0 < done[0] and done[-1] <= EVENTS
    assert all(d % BATCH == 0 for d in done)
    assert all(e["rate_per_s"] > 0 and e["eta_s"] is not None for e in lines)
    assert all(e["eta_s"] > 0 for e in lines if e["done"] < EVENTS)
    assert sum(slow_sink) == EVENTS
    cycle = next(e for e in events if e["event"] == "cycle")
    assert cycle["pushed"] == EVENTS

    progress = during["progress"]
    assert progress is not None and progress["phase"] == "push" and progress["total"] == EVENTS
    assert 0 < progress["done"] < EVENTS
    assert f" of {EVENTS:,}, " in text and "    pushing " in text and " left" in text
    assert after["daemon_running"] is True  # still running, and the finished push is gone from status
    assert _sink_row(after)["progress"] is None and _sink_row(after)["pending"] == 0
    assert STORE_KEY not in stored_after


def test_status_text_and_page_say_how_far_the_work_is(tmp_path):
    row = {"phase": "push", "done": 120_000, "total": 1_000_000, "rate_per_s": 4_100.0, "eta_s": 214.6}
    assert describe_progress(row) == "pushing 120,000 of 1,000,000, 4,100/s, about 4 min left"
    reading = {"phase": "reconcile_read", "done": 300_000, "total": None, "rate_per_s": 20_000.0, "eta_s": None}
    assert describe_progress(reading) == "reconcile: read 300,000, 20,000/s"

    settings_path = write_settings(tmp_path, [{"name": "out", "type": "csv_file", "role": "write",
                                               "path": "out.csv"}])
    settings = load_settings(settings_path)
    data = {"store": "s.db", "suppressions": 1, "daemon_running": True, "adapters": [{
        "adapter": "out", "type": "csv_file", "role": "write", "paused": False, "staged": 0,
        "last_run_error": None, "lag_s": None, "lag_alarm": False, "cursor_age_s": None, "last_run_at": None,
        "pending": 880_000, "failures": 0, "progress": row}]}
    assert "pushing 120,000 of 1,000,000, 4,100/s, about 4 min left" in render_status_page(data, settings)


def test_a_stale_row_of_a_killed_process_is_not_shown_and_the_daemon_clears_it(tmp_path):
    settings_path = write_settings(tmp_path, [{"name": "out", "type": "csv_file", "role": "write",
                                               "path": "out.csv", "interval": "1h"}])
    settings = load_settings(settings_path)
    with Store(settings.store.path) as store:
        progress = WorkProgress(store, "out", "push", total=10, every=0.0)
        progress.step(4)  # reported and stored; never closed, as when the process is killed
        assert json.loads(store.adapter_memory("out")[STORE_KEY])["done"] == 4

    assert _sink_row(_status(settings_path))["progress"] is None  # nobody holds the store

    daemon = Daemon(settings, grace=1.0)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        with Store(settings.store.path) as store:
            wait_for(lambda: STORE_KEY not in store.adapter_memory("out"), timeout=10)
    finally:
        daemon.request_stop()
        thread.join(10)


def test_short_work_reports_nothing_and_a_reconcile_reports_its_read_and_re_apply(memory_world, monkeypatch):
    settings, store, engine, vendors = memory_world([{"name": "a", "role": "read", "page_size": 5},
                                                     {"name": "b", "role": "write", "batch_size": 5}])
    log = io.StringIO()
    setup_logging("json", "info", stream=log)
    vendors["a"].opt_out(memory_adapter.OptOut("x@example.com"))
    engine.report_progress = True
    engine.sync_once()
    assert '"progress"' not in log.getvalue()  # within PROGRESS_EVERY: no line, no row

    for i in range(40):
        vendors["a"].opt_out(memory_adapter.OptOut(f"r{i}@example.com"))
    engine.sync_once(["a"])  # stored, not yet at b
    vendors["b"].held.clear()
    monkeypatch.setattr(progress_module, "PROGRESS_EVERY", 0.0)  # a report at every step
    report = engine.reconcile("b")
    assert report.error is None and report.pushed == 41
    lines = [json.loads(line) for line in log.getvalue().splitlines() if '"progress"' in line]
    applying = [e for e in lines if e["phase"] == "reconcile_apply"]
    assert [e["done"] for e in applying] == list(range(5, 41, 5)) + [41]
    assert all(e["total"] is None and e["eta_s"] is None for e in applying)
    assert STORE_KEY not in store.adapter_memory("b")


def test_an_adapters_memory_never_holds_the_progress_row(tmp_path):
    from adapters.base import AdapterMemory
    from connector.engine import memory_kept

    class Remembering:
        def __init__(self):
            self.memory = AdapterMemory()

    with Store(tmp_path / "store.db") as store:
        store.save_adapter_memory("crm", {"batch_forbidden": "2026-01-01", STORE_KEY: '{"done": 1}'})
        adapter = Remembering()
        with memory_kept(adapter, store, "crm"):
            assert adapter.memory.get("batch_forbidden") == "2026-01-01"
            assert STORE_KEY not in adapter.memory
        assert store.adapter_memory("crm")[STORE_KEY] == '{"done": 1}'  # and saving it left the row alone


def test_a_reconciles_full_read_reports_its_progress_under_its_adapter(memory_world, monkeypatch):
    settings, store, engine, vendors = memory_world([{"name": "a", "page_size": 5}])
    log = io.StringIO()
    setup_logging("json", "info", stream=log)
    for i in range(12):
        vendors["a"].held[(f"r{i}@example.com", "*")] = memory_adapter.OptOut(f"r{i}@example.com")
    engine.report_progress = True
    monkeypatch.setattr(progress_module, "PROGRESS_EVERY", 0.0)
    assert engine.reconcile("a").error is None
    reading = [json.loads(line) for line in log.getvalue().splitlines() if '"reconcile_read"' in line]
    assert [(e["adapter"], e["phase"], e["done"]) for e in reading] == [
        ("a", "reconcile_read", 5), ("a", "reconcile_read", 10), ("a", "reconcile_read", 12)]
