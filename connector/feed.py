"""The event log as a feed (`optout-sync events`): every event after a sequence number, oldest first.

For shipping the audit trail to a warehouse or SIEM. Events are read in chunks by seq, so
memory stays flat at any log size, and a consumer resumes after the last seq it saved.
Resuming by seq loses nothing: SQLite has one writer at a time and `seq` is AUTOINCREMENT,
so events commit in seq order, and once a reader sees seq N every smaller seq it will ever
see is already there.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .commands import open_store
from .logs import mask_addresses, mask_value
from .operator import describe_event
from .settings import Settings

# Rows per query: large enough that the per-query cost vanishes, small enough to stay flat in memory.
CHUNK = 1_000
# How often --follow looks for new events: one indexed range query, cheap next to a running daemon.
POLL_SECONDS = 0.5

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def event_chunks(settings: Settings, since: int = 0, *, follow: bool = False,
                 should_stop: Callable[[], bool] = lambda: False, stop: threading.Event | None = None,
                 poll: float = POLL_SECONDS, chunk: int = CHUNK) -> Iterator[list[dict]]:
    """Yield the events with seq > `since`, oldest first, in lists of at most `chunk` rows.

    Without `follow` it ends at the last event there was when it got there. With `follow` it
    then waits for new events, looking every `poll` seconds, until `stop` is set or
    `should_stop()` is true (both checked before every query, so at most one chunk after). Opens the store without creating one
    (a missing store is a ConfigError naming the path) and takes no lock, so it runs beside
    the daemon. Each event is a dict of every column; `details` is still JSON text.
    """
    stop = stop or threading.Event()
    after = since
    with open_store(settings) as store:
        while not (stop.is_set() or should_stop()):
            rows = store.events_after(after, chunk)
            if rows:
                after = rows[-1]["seq"]
                yield rows
                if len(rows) == chunk:
                    continue  # more are waiting: no pause
            if not follow or stop.wait(poll):
                return


def last_seq(settings: Settings) -> int:
    """The highest seq in the event log (0 when empty); the store must exist."""
    with open_store(settings) as store:
        return store.last_event_seq()


def event_data(event: dict, show_addresses: bool = False) -> dict:
    """One event as JSON-ready data: every column, `details` as an object (or null).

    Unless `show_addresses`, the address is masked as a whole (as a rejected value would be:
    a failure's event may hold one) and every address inside a text, details included, too.
    """
    data = dict(event)
    if data.get("details") is not None:
        try:
            data["details"] = json.loads(data["details"])
        except ValueError:  # not written by this program; shipped as the text it is
            pass
    if show_addresses:
        return data
    if data.get("address"):
        data["address"] = mask_value(data["address"])
    return {key: _masked(value) for key, value in data.items()}


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask_addresses(value) if "@" in value else value
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_masked(item) for item in value]
    return value


def event_json(event: dict, show_addresses: bool = False) -> str:
    """One event as one line of JSON (event_data), without a line end."""
    return json.dumps(event_data(event, show_addresses), ensure_ascii=False, separators=(",", ":"))


def event_line(event: dict, show_addresses: bool = False) -> str:
    """One event as one line for people: seq, recorded_at, kind, address, then what happened.

    Line breaks and other control characters in stored texts become spaces, so that one
    event is always one line.
    """
    address, what = event.get("address") or "", describe_event(event)
    if not show_addresses:
        address, what = mask_value(address) if address else address, mask_addresses(what)
    return _CONTROL.sub(" ", f"{event['seq']} {event['recorded_at']} {event['kind']} {address or '-'} {what}")
