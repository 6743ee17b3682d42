"""The status page's pictures and lists: per-day counts, the lag history, failures, events, the SVG."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser

import pytest

from connector import server, status_pictures
from connector.history import LagHistory
from connector.settings import load_settings
from state import dashboard
from state.store import Store

from .conftest import write_settings

NOW = datetime(2024, 6, 30, 12, 0, tzinfo=timezone.utc)
# Markup and an address in names and messages: the page must show them as text, the address masked.
SOURCE = "import:<b>jane@example.com"


def add_suppressed(store: Store, rows: list[tuple[datetime, str, str]], first: int = 0) -> None:
    """'suppressed' events (and their suppressions) recorded at the given moments: (when, reason, source)."""
    with store.transaction():
        for n, (moment, reason, source) in enumerate(rows, start=first):
            store.conn.execute(
                "INSERT INTO events (recorded_at, kind, address, scope, reason, origin, source)"
                " VALUES (?, 'suppressed', ?, '*', ?, 'recipient', ?)",
                (moment.isoformat(timespec="microseconds"), f"person{n}@example.com", reason, source))


def test_the_first_seq_of_a_moment_is_found_by_binary_search_across_gaps(tmp_path):
    with Store(tmp_path / "store.db") as store:
        assert dashboard.first_seq_at_or_after(store.conn, "2024-01-01") == 1  # an empty log: past its end
        add_suppressed(store, [(NOW - timedelta(hours=h), "unsubscribed", "a") for h in range(100, 0, -1)])
        # Gaps in seq (a rolled-back batch may leave them): the search must step over them.
        store.conn.execute("DELETE FROM events WHERE seq BETWEEN 40 AND 60")
        for hours_before, expected in [(1000, 1), (100, 1), (99.5, 2), (61, 61), (60, 61), (1, 100), (0.5, None)]:
            moment = (NOW - timedelta(hours=hours_before)).isoformat(timespec="microseconds")
            found = dashboard.first_seq_at_or_after(store.conn, moment)
            # The boundary (maybe a seq in a gap): the first event from it is the first at the moment,
            # and nothing before it is recorded at or after the moment.
            first = store.conn.execute("SELECT min(seq) FROM events WHERE seq >= ?", (found,)).fetchone()[0]
            assert first == expected, (hours_before, found)
            assert store.conn.execute("SELECT count(*) FROM events WHERE seq < ? AND recorded_at >= ?",
                                      (found, moment)).fetchone()[0] == 0


def test_new_opt_outs_per_day_count_the_window_once_then_only_what_was_appended(tmp_path):
    counter = dashboard.DailyOptOutCounter(days=30)
    with Store(tmp_path / "store.db") as store:
        add_suppressed(store, [
            (NOW - timedelta(days=40), "unsubscribed", "old"),          # before the window
            (NOW - timedelta(days=29, hours=11), "spam_complaint", "hubspot"),  # its first day, 00:00+
            (NOW - timedelta(days=2), "unsubscribed", "hubspot"),
            (NOW - timedelta(days=2), "unsubscribed", SOURCE),
            (NOW, "hard_bounce", SOURCE),
        ])
        # Not new opt-outs: other kinds are left out.
        store.conn.execute("INSERT INTO events (recorded_at, kind, address, scope, target, ref_seq)"
                           " VALUES (?, 'applied', 'person2@example.com', '*', 'sink', 3)", (NOW.isoformat(),))
        daily = counter.refresh(store.conn, NOW)
        assert daily.days[0] == "2024-06-01" and daily.days[-1] == "2024-06-30" and len(daily.days) == 30
        assert daily.by_reason == {"spam_complaint": [1] + [0] * 29,
                                   "unsubscribed": [0] * 27 + [2, 0, 0],
                                   "hard_bounce": [0] * 29 + [1]}
        assert daily.by_source == {"hubspot": [1] + [0] * 26 + [1, 0, 0], SOURCE: [0] * 27 + [1, 0, 1]}
        assert daily.total == 4

        # Only the appended events are read next time: an event slipped in below the last seq read
        # (which an append-only log never does) is not counted, the appended ones are.
        store.conn.execute("UPDATE events SET reason = 'unsubscribed' WHERE seq = 2")
        add_suppressed(store, [(NOW, "unsubscribed", "hubspot")] * 3, first=10)
        later = counter.refresh(store.conn, NOW)
        assert later.by_reason["spam_complaint"][0] == 1
        assert later.by_reason["unsubscribed"][-1] == 3 and later.by_source["hubspot"][-1] == 3

        # A day later the window moves: the first day leaves it.
        moved = counter.refresh(store.conn, NOW + timedelta(days=1))
        assert moved.days[0] == "2024-06-02" and "spam_complaint" not in moved.by_reason
        assert moved.by_reason["unsubscribed"][-2] == 3 and moved.total == 6
        assert all(day >= "2024-06-02" for day, _reason, _source in counter._counts), "memory holds 30 days"


def test_counts_of_one_day_add_up_across_reasons_and_across_refreshes(tmp_path):
    counter = dashboard.DailyOptOutCounter(days=3)
    with Store(tmp_path / "store.db") as store:
        add_suppressed(store, [(NOW, "hard_bounce", "crm"), (NOW, "unsubscribed", "crm")])
        first = counter.refresh(store.conn, NOW)
        assert first.by_source == {"crm": [0, 0, 2]}            # two reasons, one source, one day
        add_suppressed(store, [(NOW, "hard_bounce", "crm")], first=5)
        second = counter.refresh(store.conn, NOW)
        assert second.by_reason == {"hard_bounce": [0, 0, 2], "unsubscribed": [0, 0, 1]}
        assert second.by_source == {"crm": [0, 0, 3]} and second.total == 3


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "Pacific/Pago_Pago"])
def test_the_days_are_utc_days_whatever_the_local_time_zone(tmp_path, monkeypatch, zone):
    """At any hour one of these zones (UTC+14, UTC-11) is on another date than UTC."""
    import time

    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        before = datetime.now(timezone.utc).date().isoformat()
        with Store(tmp_path / "store.db") as store:
            daily = dashboard.DailyOptOutCounter(days=2).refresh(store.conn)
        after = datetime.now(timezone.utc).date().isoformat()
        assert daily.days[-1] in (before, after)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_the_lag_history_keeps_one_sample_a_minute_for_24_hours_and_the_newest_reading():
    clock = [1_000_000.0]
    history = LagHistory(clock=lambda: clock[0])
    start = clock[0]
    for n in range(25 * 360):  # a reading every 10 s for 25 hours
        clock[0] = start + n * 10
        history.record([{"adapter": "sink", "lag_s": float(n), "pending": n}])
    samples = history.series()["sink"]
    assert history.covers_window()
    assert len(history._samples["sink"]) == 1441, "the ring buffer is bounded"
    assert all(s.at >= clock[0] - 86_400 for s in samples)
    assert all(b.at - a.at == 60 for a, b in zip(samples[:-2], samples[1:-1]))
    assert samples[-1].pending == 25 * 360 - 1, "the newest reading is shown even between samples"
    fresh = LagHistory(clock=lambda: start)
    assert not fresh.covers_window()


def test_open_failures_are_listed_newest_first_at_most_50_with_their_count(tmp_path):
    with Store(tmp_path / "store.db") as store:
        with store.transaction():
            for n in range(140):
                store.conn.execute(
                    "INSERT INTO failures (adapter, kind, address, scope, message, first_at, last_at, resolved_at)"
                    " VALUES (?, 'permanent', ?, '*', 'refused', ?, ?, ?)",
                    ("sink" if n % 2 else "crm", f"p{n}@example.com", NOW.isoformat(), NOW.isoformat(),
                     NOW.isoformat() if n % 7 == 0 else None))
        rows, total = dashboard.open_failures(store.conn, ["crm", "sink", "absent"])
        open_ids = [n + 1 for n in range(140) if n % 7]
        assert total == len(open_ids) == 120
        assert [row["id"] for row in rows] == sorted(open_ids, reverse=True)[:50]
        events = dashboard.last_events(store.conn)
        assert events == []


class _Dom(HTMLParser):
    """Every element as (tag, attributes), and each <title> text in document order."""

    def __init__(self):
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.titles: list[str] = []
        self.text = ""
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        self._in_title = tag == "title"
        if self._in_title:
            self.titles.append("")

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False

    def handle_data(self, data):
        self.text += data
        if self._in_title:
            self.titles[-1] += data

    def find(self, tag: str, **attrs) -> list[dict]:
        return [a for t, a in self.elements if t == tag and all(a.get(k.rstrip("_").replace("_", "-")) == v
                                                                 for k, v in attrs.items())]


def page_settings(tmp_path):
    return load_settings(write_settings(tmp_path, [
        {"name": "crm", "type": "csv_folder", "path": "inbox"},
        {"name": "sink", "type": "csv_file", "path": "out/suppressions.csv"},
    ], store={"path": str(tmp_path / "store.db")}))


def test_the_pictures_are_svg_with_masked_escaped_labels_and_the_history_note(tmp_path):
    settings = page_settings(tmp_path)
    now = NOW.timestamp()
    history = LagHistory(clock=lambda: now - 3600)  # started an hour ago
    history.record([{"adapter": "sink", "lag_s": 30.0, "pending": 4}, {"adapter": "crm", "lag_s": None,
                                                                      "pending": 0}], at=now - 1800)
    history.record([{"adapter": "sink", "lag_s": 90.0, "pending": 7}], at=now - 60)
    with Store(settings.store.path) as store:
        add_suppressed(store, [(NOW - timedelta(days=1), "unsubscribed", SOURCE)] * 2
                       + [(NOW, "spam_complaint", "crm")])
        with store.transaction():
            store.conn.execute(
                "INSERT INTO failures (adapter, kind, location, value, message, first_at, last_at)"
                " VALUES ('crm', 'rejected', 'inbox/a.csv:3', 'bad jane@@example.com',"
                " 'not an address: ''bad jane@@example.com'' <script>', ?, ?)", (NOW.isoformat(),) * 2)
        html = status_pictures.render(settings, store, history, dashboard.DailyOptOutCounter(), now)
    dom = _Dom()
    dom.feed(html)
    assert not dom.find("script") and not dom.find("b"), "markup from data was rendered"
    assert not re.search(r"(jane|person\d+)@", html), "an address is shown unmasked"

    bars = {(b["data-day"], b["data-series"]): int(b["data-value"]) for b in dom.find("rect", class_="bar")}
    assert bars == {("2024-06-29", "unsubscribed"): 2, ("2024-06-30", "spam_complaint"): 1,
                    ("2024-06-29", "import:<b>j***@example.com"): 2, ("2024-06-30", "crm"): 1}
    assert "2024-06-29: unsubscribed 2" in dom.titles and "2024-06-30: crm 1" in dom.titles
    assert "2024-06-29: import:<b>j***@example.com 2" in dom.titles  # masked, shown as text
    assert len(dom.find("svg", id="chart-reason")) == len(dom.find("svg", id="chart-source")) == 1
    # The lag charts draw the sink (it writes), not the read-only crm; three points: two samples
    # a minute or more apart and the newest reading is the second.
    lag = dom.find("g", class_="series", data_series="sink")
    assert [(g["data-points"], g["data-last"]) for g in lag] == [("2", "90"), ("2", "7")]
    assert not dom.find("g", class_="series", data_series="crm")
    assert "sink: 1m now" in dom.titles and "sink: 7 now" in dom.titles
    assert "The daemon started 1h ago" in " ".join(dom.text.split())
    # The failure: its rejected value and message masked, the markup shown as text.
    failure = " ".join(dom.text.split())
    assert "inbox/a.csv:3: b***@example.com" in failure or "inbox/a.csv:3: ***@example.com" in failure
    assert "<script>" in failure and "1 open, newest first." in failure
    assert len([a for t, a in dom.elements if t == "tr" and a.get("id", "").startswith("event-")]) == 3


def test_the_page_lists_only_the_last_50_events_newest_first_and_says_how_many_failures_are_left_out(tmp_path):
    settings = page_settings(tmp_path)
    with Store(settings.store.path) as store:
        add_suppressed(store, [(NOW, "unsubscribed", "crm")] * 80)
        with store.transaction():
            for n in range(55):
                store.conn.execute("INSERT INTO failures (adapter, kind, message, first_at, last_at)"
                                   " VALUES ('sink', 'permanent', 'refused', ?, ?)", (NOW.isoformat(),) * 2)
        html = status_pictures.render(settings, store, None, dashboard.DailyOptOutCounter(), NOW.timestamp())
    ids = re.findall(r'<tr id="event-(\d+)"', html)
    assert ids == [str(n) for n in range(80, 30, -1)]
    assert len(re.findall(r'<tr id="failure-', html)) == 50
    assert "the newest 50 of 55 open, newest first. 5 more are not shown" in " ".join(html.split())
    assert 'class="empty"' not in html.split('id="chart-reason"')[1].split("</svg>")[0]


def test_the_status_page_includes_the_pictures_after_the_adapter_table(tmp_path):
    settings = page_settings(tmp_path)
    Store(settings.store.path).close()
    app = server.StatusServer(settings, None, lambda: [], lambda: False, history=LagHistory())
    code, content_type, body = app.status_page()
    page = body.decode()
    assert code == 200 and content_type.startswith("text/html")
    assert page.index('id="adapters"') < page.index('id="chart-reason"') < page.index('id="chart-lag"') \
        < page.index('id="open-failures"') < page.index('id="last-events"')
    assert "no new opt-outs in these days" in page and "no samples yet" in page


def test_a_counter_recounts_for_another_store_even_when_its_log_is_longer(tmp_path):
    counter = dashboard.DailyOptOutCounter(days=3)
    with Store(tmp_path / "first.db") as first:
        add_suppressed(first, [(NOW, "hard_bounce", "crm")])
        assert counter.refresh(first.conn, NOW).total == 1
    with Store(tmp_path / "second.db") as second:
        add_suppressed(second, [(NOW, "unsubscribed", "esp")] * 3)
        daily = counter.refresh(second.conn, NOW)
        assert daily.by_reason == {"unsubscribed": [0, 0, 3]} and daily.by_source == {"esp": [0, 0, 3]}
