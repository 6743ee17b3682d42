"""What the SIGKILL tests check after every kill, read from the store the killed process left.

Every check reads a store opened the way the CLI opens it (`read_store`: the settings' `[store]`,
through open_store), so the same checks run on a SQLite file and on a PostgreSQL database.

- `store_rows`: the suppressions, and whether the store is consistent (no suppression without its
  event, no watermark past the last event, and on SQLite the file's quick_check).
- `watermark_gaps`: events at or below a sink's push watermark that the sink still needs and that
  have no final outcome there (applied, skipped, or refused for good). Push never rereads below the
  watermark, so such an event would reach the sink only through a reconcile, if one is configured.
- `cursor_gaps`: rows of a csv_folder source before its saved read cursor that the store holds
  neither as a suppression nor staged. Pull never rereads before the cursor, so such a row is lost.

Also the pieces both kill tests share: which phase of a cycle a vendor request belongs to, and a
vendor wrapper that answers a push naming a "park" address with a 503 the first time (the item is
parked: retried next cycle), so every cycle's push meets parked items next to applied ones.
"""

from __future__ import annotations

import csv
import io
import json
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

from tests.backend_fixtures import Backend

PARK_PREFIX = "park"
_PARKED_ADDRESS = re.compile(rb"park[a-z]*\d+@example\.com")


def phase_of(request: httpx.Request) -> str | None:
    """Which part of a cycle a request belongs to, where that is unambiguous."""
    path, params = request.url.path, request.url.params
    if request.method == "POST" and path.endswith(("/statuses/batch/unsubscribe-all/read", "/statuses/batch/read")):
        return "reconcile"  # HubSpot's full read confirms what the timeline says
    if request.method == "GET" and path.startswith("/v3/suppression/"):
        return "pull" if "start_time" in params else "reconcile"  # SendGrid: a full read has no window
    if request.method == "GET" and path.endswith("/subscriptions/timeline"):
        return "pull" if params.get("startTimestamp", "0") != "0" else None
    if request.method == "POST" and (path.endswith("/unsubscribe-all") or path.endswith("/statuses/batch/write")
                                     or path.startswith("/v3/asm/")):
        return "push"
    return None


class ParkOnce:
    """Wraps a fake: a push naming a park address not refused before gets a 503, the work undone.

    With `max_attempts = 1` the adapter does not retry within the cycle, so those items are parked
    and the push stops there; the next cycle sends them again and the vendor takes them.
    """

    def __init__(self, handle):
        self.handle_inner = handle
        self.lock = threading.Lock()
        self.refused: set[bytes] = set()
        self.answers = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        if phase_of(request) == "push" and not request.url.path.endswith("/search"):  # a write, not a lookup
            named = set(_PARKED_ADDRESS.findall(request.content))
            with self.lock:
                fresh = named - self.refused
                self.refused |= fresh
                if fresh:
                    self.answers += 1
            if fresh:
                return httpx.Response(503, text="<html><body><h1>503 Service Unavailable</h1></body></html>",
                                      headers={"content-type": "text/html"})
        return self.handle_inner(request)


@contextmanager
def read_store(backend: Backend, settings: Path) -> Iterator:
    """The store `settings` name, opened as the CLI opens it; None while a SQLite file is not made yet."""
    if not backend.postgresql:
        from connector.settings import load_settings

        if not load_settings(settings, environ={}).store.path.exists():
            yield None
            return
    store = backend.open(settings)
    try:
        yield store
    finally:
        store.close()


def store_rows(store) -> tuple[set, bool, int]:
    """(suppressed pairs, consistent, events) read from the store."""
    pairs = {(address, scope) for address, scope in store.conn.execute("SELECT address, scope FROM suppressions")}
    orphans = store.conn.execute("SELECT count(*) FROM suppressions s WHERE NOT EXISTS (SELECT 1 FROM events e"
                                 " WHERE e.seq = s.seq AND e.kind = 'suppressed')").fetchone()[0]
    ahead = store.conn.execute("SELECT count(*) FROM checkpoints WHERE applied_seq >"
                               " (SELECT COALESCE(max(seq), 0) FROM events)").fetchone()[0]
    # The file's own check; PostgreSQL's storage is the server's (its checksums, its replication).
    check = store.conn.execute("PRAGMA quick_check").fetchone()[0] if store.dialect.name == "sqlite" else "ok"
    events = store.conn.execute("SELECT count(*) FROM events").fetchone()[0]
    return pairs, orphans == 0 and ahead == 0 and check == "ok", events


def watermark_gaps(store, sink: str) -> list[int]:
    """Seqs at or below `sink`'s watermark that it still needs and that have no final outcome there."""
    watermark = store.checkpoint(sink).applied_seq
    pending, _ = store.pending_events(sink, 0, 10_000_000)  # what the sink needs, by the push's own rule
    final = {seq for (seq,) in store.conn.execute(
        "SELECT ref_seq FROM events WHERE target = ? AND (kind IN ('applied', 'skipped')"
        " OR (kind = 'failed' AND message NOT LIKE 'transient:%'))", (sink,))}
    return [event.seq for event in pending if event.seq <= watermark and event.seq not in final]


def cursor_gaps(store, folder: Path, source: str) -> list[tuple[str, str]]:
    """(address, scope) rows of `folder` before `source`'s saved cursor that the store does not hold."""
    row = store.conn.execute("SELECT read_cursor FROM checkpoints WHERE adapter = ?", (source,)).fetchone()
    held = {(address, scope) for address, scope in store.conn.execute("SELECT address, scope FROM suppressions")}
    held |= {(address, scope) for address, scope in
             store.conn.execute("SELECT address, scope FROM staged WHERE adapter = ?", (source,))}
    files = json.loads(row[0])["files"] if row and row[0] else {}
    missing = []
    for name, state in files.items():
        text = (folder / name).read_bytes()[:state["offset"]].decode()
        for record in csv.DictReader(io.StringIO(text)):
            pair = (record["email"], record["scope"] or "*")
            if pair not in held:
                missing.append(pair)
    return missing
