"""Progress of long work (a push, a reconcile's read and re-apply): logged and kept in the store.

Work that runs longer than PROGRESS_EVERY logs a `progress` event every PROGRESS_EVERY seconds
(done, total when known, rate, time left) and writes the same figures as one small row in the
store's `adapter_memory` table (key `progress`), so that `status` and the status page, run
from any process, show it while it runs. The row is deleted when the work ends; the daemon
deletes rows a killed process left behind when it starts, and `status` shows progress only
while a process holds the store's lock. Short work writes and logs nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from state.errors import StoreError
from state.models import utc_now
from state.store import Store

from .logs import log_event

# Seconds between two reports of the same work. A module constant, not a setting: tests lower it.
PROGRESS_EVERY = 10.0
STORE_KEY = "progress"  # the adapter_memory key; never handed to an adapter (engine.memory_kept)

PHASE_WORDS = {"push": "pushing", "reconcile_read": "reconcile: read", "reconcile_apply": "reconcile: re-applied"}


class WorkProgress:
    """Counts one adapter's long work and reports it every `every` seconds (PROGRESS_EVERY by default).

    `total` may be given, or found at the first report by `remaining` (a callable passed to
    `step`: what is left after what is done), so that work that ends within `every` never pays
    for counting it. Without either, reports have no total and no time left. Use as a context
    manager, or call `close()`: it deletes the stored row.
    """

    def __init__(self, store: Store, adapter: str, phase: str, *, total: int | None = None,
                 every: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.store, self.adapter, self.phase = store, adapter, phase
        self.total = total
        self.every = PROGRESS_EVERY if every is None else every
        self.done = 0
        self._clock = clock
        self._started = self._last = clock()
        self._started_at = utc_now()
        self._stored = False

    def __enter__(self) -> WorkProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def step(self, count: int, remaining: Callable[[], int] | None = None) -> None:
        """`count` more items are done; report if `every` seconds passed since the last report."""
        self.done += count
        now = self._clock()
        if now - self._last < self.every:
            return
        self._last = now
        if self.total is None and remaining is not None:
            self.total = self.done + remaining()
        if self.total is not None and self.done > self.total:
            self.total = self.done  # work that arrived after the total was counted
        self._report(now)

    def figures(self, now: float | None = None) -> dict:
        """done, total, rate_per_s, eta_s (None where unknown), phase, started_at, updated_at."""
        elapsed = max((self._clock() if now is None else now) - self._started, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if self.total is not None and rate > 0 else None
        return {"phase": self.phase, "done": self.done, "total": self.total, "rate_per_s": round(rate, 1),
                "eta_s": round(eta, 1) if eta is not None else None, "started_at": self._started_at,
                "updated_at": utc_now()}

    def _report(self, now: float) -> None:
        figures = self.figures(now)
        log_event("progress", adapter=self.adapter, phase=self.phase, done=figures["done"], total=figures["total"],
                  rate_per_s=figures["rate_per_s"], eta_s=figures["eta_s"])
        self._save(json.dumps(figures))

    def close(self) -> None:
        """The work ended (done, failed or stopped): delete the stored row, if one was written."""
        if self._stored:
            self._save(None)

    def _save(self, value: str | None) -> None:
        # A busy or failing store must not fail the work it reports on; the work's own writes
        # say so soon enough.
        try:
            self.store.save_adapter_memory(self.adapter, {STORE_KEY: value})
            self._stored = value is not None
        except StoreError as exc:
            log_event("progress_not_saved", logging.WARNING, adapter=self.adapter, error=str(exc))


def stored_progress(store: Store, adapter: str) -> dict | None:
    """The progress row of `adapter`'s running work, or None."""
    text = store.adapter_memory(adapter).get(STORE_KEY)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def clear_stored_progress(store: Store, adapters: list[str]) -> None:
    """Delete progress rows that a killed process left behind (the daemon, at start)."""
    for adapter in adapters:
        if STORE_KEY in store.adapter_memory(adapter):
            store.save_adapter_memory(adapter, {STORE_KEY: None})


def describe_progress(progress: dict) -> str:
    """'pushing 120,000 of 1,000,000, 4,100/s, about 3 min left', or without total and time left."""
    words = PHASE_WORDS.get(progress.get("phase"), str(progress.get("phase")))
    text = f"{words} {progress['done']:,}"
    if progress.get("total") is not None:
        text += f" of {progress['total']:,}"
    text += f", {progress['rate_per_s']:,.0f}/s"
    if progress.get("eta_s") is not None:
        text += f", about {_time_left(progress['eta_s'])} left"
    return text


def _time_left(seconds: float) -> str:
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
