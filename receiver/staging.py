"""Staging a verified request's events: one transaction, the same rules as a polled page.

The opt-outs go through `Store.ingest_page` (lifts, echoes, more binding reasons, rejected
items listed as failures) without moving the adapter's read cursor, then through the
mass-change guard, then `Store.promote`, all inside one transaction together with the
request's receipts (its events' ids and its signature's nonce). So a request answered 2xx is
in the store, a retried event adds nothing, and a replayed signature is refused whole.

The guard counts what pushed events promote per window of the adapter's `interval`, plus
what is staged, against `max_new_per_cycle`: a webhook stream has no cycles, so a window as
long as the adapter's polling cycle stands for one. Over it, the adapter is paused exactly as
a poll pauses it, and what arrives while it is paused stays staged for `approve`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from state import receipts
from state.models import Page, utc_now
from state.store import Store

from .common import Event, unauthorized


@dataclass
class Outcome:
    """What one request changed: counts for the answer, the metrics and the log."""

    events: int = 0
    duplicates: int = 0
    read: int = 0
    added: int = 0
    changed: int = 0
    held: int = 0
    ignored: int = 0
    rejected: int = 0
    waiting_approval: int = 0
    paused: bool = False


class WindowGuard:
    """The mass-change guard's count for pushed events: new opt-outs promoted in the current window."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int]] = {}

    def promoted(self, adapter: str, window: float) -> int:
        """How many opt-outs this adapter's pushed events promoted in its current window."""
        with self._lock:
            started, count = self._windows.get(adapter, (self._clock(), 0))
            if self._clock() - started >= window:
                self._windows[adapter] = (self._clock(), 0)
                return 0
            self._windows.setdefault(adapter, (started, count))
            return count

    def add(self, adapter: str, window: float, count: int) -> None:
        """Count `count` more promoted opt-outs in the adapter's window."""
        with self._lock:
            started, previous = self._windows.get(adapter, (self._clock(), 0))
            if self._clock() - started >= window:
                started, previous = self._clock(), 0
            self._windows[adapter] = (started, previous + count)


def stage(store: Store, adapter: str, events: list[Event], nonce: str | None, *, max_new: int,
          window: float, guard: WindowGuard) -> Outcome:
    """Stage and promote (within the guard) the events of one verified request, in one transaction.

    Raises Refused(401) for a nonce accepted before (a replay), with nothing written; StoreError
    when the store cannot be written (the receiver answers 503, so the vendor retries).
    """
    outcome = Outcome(events=len(events))
    now = utc_now()
    with store.transaction():
        if nonce is not None and receipts.known(store, adapter, [nonce]):
            raise unauthorized("this signature was used before (replayed request)")
        seen = receipts.known(store, adapter, [e.key for e in events if e.key is not None])
        fresh: list[Event] = []
        for event in events:
            if event.key is not None and event.key in seen:
                outcome.duplicates += 1
                continue
            if event.key is not None:
                seen.add(event.key)  # the same event twice in one request counts once
            fresh.append(event)
        page = Page(optouts=[o for e in fresh for o in e.optouts], rejected=[r for e in fresh for r in e.rejected])
        if page.optouts or page.rejected:
            counts = store.ingest_page(adapter, page, save_cursor=False)
            outcome.read, outcome.changed, outcome.held = counts.read, counts.changed, counts.held
            outcome.ignored = counts.ignored_lifted + counts.ignored_echoes
            outcome.rejected = counts.rejected
        keys = [e.key for e in fresh if e.key is not None] + ([nonce] if nonce is not None else [])
        if keys:
            receipts.remember(store, adapter, keys, now)
        staged = store.staged_count(adapter)
        if staged:
            if store.checkpoint(adapter).paused:
                outcome.paused, outcome.waiting_approval = True, staged
            elif guard.promoted(adapter, window) + staged > max_new:
                store.pause(adapter)
                outcome.paused, outcome.waiting_approval = True, staged
            else:
                outcome.added = store.promote(adapter)
    if outcome.added:
        guard.add(adapter, window, outcome.added)
    return outcome
