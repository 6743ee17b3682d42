"""The status page on a store of 5,000,000 suppressions: under 200 ms per page (slow: builds the store).

Run with `pytest -m slow tests/test_status_page_speed.py -s`; it prints the figures. The store is
built with direct SQL (about a minute): 5,000,000 opt-outs recorded over three years, so the last
30 days hold about 137,000 of them, every one applied to the sink, and 2,000 failures.
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime, timedelta, timezone

import pytest

from connector import server
from connector.history import LagHistory
from connector.settings import load_settings
from state.store import Store

from .conftest import write_settings

pytestmark = pytest.mark.slow

SUPPRESSIONS = 5_000_000
SPAN_DAYS = 3 * 365
REQUESTS = 20
BUDGET_S = 0.200


def build_store(path, now: datetime) -> None:
    """5,000,000 'suppressed' events and their suppressions, spread evenly over three years up to `now`."""
    start = (now - timedelta(days=SPAN_DAYS)).timestamp()
    step = SPAN_DAYS * 86_400 / SUPPRESSIONS
    with Store(path) as store:
        with store.transaction():
            store.conn.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
                " INSERT INTO events (recorded_at, kind, address, scope, reason, origin, source)"
                " SELECT strftime('%Y-%m-%dT%H:%M:%S', ? + i * ?, 'unixepoch') || '.000000+00:00', 'suppressed',"
                " 'u' || printf('%08d', i) || '@example.com', '*',"
                " CASE i % 4 WHEN 0 THEN 'unsubscribed' WHEN 1 THEN 'hard_bounce' WHEN 2 THEN 'spam_complaint'"
                " ELSE 'imported' END, 'recipient', CASE i % 3 WHEN 0 THEN 'crm' WHEN 1 THEN 'inbox'"
                " ELSE 'import:list.csv' END FROM n", (SUPPRESSIONS, start, step))
            store.conn.execute(
                "INSERT INTO suppressions (address, scope, reason, origin, source, occurred_at, recorded_at, seq)"
                " SELECT address, scope, reason, origin, source, NULL, recorded_at, seq FROM events ORDER BY seq")
            store.conn.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)"
                " INSERT INTO failures (adapter, kind, address, scope, message, first_at, last_at, resolved_at)"
                " SELECT 'sink', 'permanent', 'u' || printf('%08d', i) || '@example.com', '*', 'refused',"
                " ?, ?, CASE WHEN i % 2 THEN ? END FROM n", (now.isoformat(),) * 3)
        for adapter in ("crm", "sink"):
            store.set_checkpoint(adapter, applied_seq=SUPPRESSIONS, last_success_at=now.isoformat())


def add_recent(store: Store, count: int, first: int) -> None:
    """Opt-outs arriving between two page views, as a worker would add them."""
    now = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    with store.transaction():
        store.conn.executemany(
            "INSERT INTO events (recorded_at, kind, address, scope, reason, origin, source)"
            " VALUES (?, 'suppressed', ?, '*', 'unsubscribed', 'recipient', 'crm')",
            [(now, f"new{first + n}@example.com") for n in range(count)])


def test_the_status_page_takes_under_200_ms_on_5_000_000_suppressions(tmp_path):
    now = datetime.now(timezone.utc)
    settings = load_settings(write_settings(tmp_path, [
        {"name": "crm", "type": "csv_folder", "path": "inbox"},
        {"name": "sink", "type": "csv_file", "path": "out/suppressions.csv"},
    ], store={"path": str(tmp_path / "store.db")}))
    started = time.perf_counter()
    build_store(settings.store.path, now)
    built = time.perf_counter() - started
    history = LagHistory()
    history.record([{"adapter": "sink", "lag_s": 12.0, "pending": 3}, {"adapter": "crm", "lag_s": None,
                                                                      "pending": 0}])
    app = server.StatusServer(settings, None, lambda: [], lambda: False, history=history)

    started = time.perf_counter()
    code, _type, first_page = app.status_page()
    cold = time.perf_counter() - started
    assert code == 200 and b'id="chart-reason"' in first_page

    times = []
    with Store(settings.store.path) as writer:
        for n in range(REQUESTS):
            add_recent(writer, 100, n * 100)
            started = time.perf_counter()
            code, _type, page = app.status_page()
            times.append(time.perf_counter() - started)
            assert code == 200
    p50, worst = statistics.median(times), max(times)
    print(f"\nstore built in {built:.1f} s; {SUPPRESSIONS:,} suppressions; first page (counts the last 30 days "
          f"once) {cold * 1000:.0f} ms; then {REQUESTS} pages, 100 new opt-outs before each: "
          f"p50 {p50 * 1000:.1f} ms, max {worst * 1000:.1f} ms")
    # Every page after the first: the last 30 days' counts include the opt-outs just added.
    assert page.decode().count('data-series="crm"') >= 1
    today = now.date().isoformat()
    assert f'data-day="{today}"' in page.decode()
    assert worst < BUDGET_S, f"a status page took {worst * 1000:.0f} ms (budget {BUDGET_S * 1000:.0f} ms)"
    assert cold < 5 * BUDGET_S, f"the first page took {cold * 1000:.0f} ms"
