"""The daemon: one worker thread per adapter, each on its own interval, stopped by a flag.

A worker that fails or hangs delays nobody else: each has its own store
connection and adapter. When a worker adds opt-outs it wakes the others, so
they push at once instead of at their next interval. SIGTERM/SIGINT set the
stop flag; workers finish or abandon their current batch (each batch is one
transaction) and the process exits 0 within `grace` seconds.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from state.errors import OptOutSyncError
from state.models import utc_now

from .commands import build_adapters, log_report, open_store
from .engine import Engine
from .lock import StoreLock
from .logs import log_event
from .settings import Settings

ERROR_BACKOFF_MAX = 300.0


class Daemon:
    """Runs every adapter continuously until stopped."""

    def __init__(self, settings: Settings, grace: float = 5.0):
        self.settings = settings
        self.grace = grace
        self.stop = threading.Event()
        self.wakes = {a.name: threading.Event() for a in settings.adapters}
        self.threads: list[threading.Thread] = []

    def request_stop(self, *_signal_args) -> None:
        """Ask every worker to stop after its current batch."""
        self.stop.set()
        for wake in self.wakes.values():
            wake.set()

    def run(self) -> int:
        """Start the workers and wait for a stop signal; the exit code."""
        lock = StoreLock(self.settings.store.path).acquire()
        try:
            open_store(self.settings).close()  # fail early on an unusable store
            build_adapters(self.settings)  # and on adapter settings that cannot work
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self.request_stop)
            log_event("started", adapters=",".join(self.wakes), store=str(self.settings.store.path))
            for name in self.wakes:
                thread = threading.Thread(target=self._worker, args=(name,), name=f"worker-{name}", daemon=True)
                thread.start()
                self.threads.append(thread)
            while not self.stop.wait(0.5):
                pass
            deadline = time.monotonic() + self.grace
            for thread in self.threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            abandoned = [t.name for t in self.threads if t.is_alive()]
            log_event("stopped", abandoned=",".join(abandoned) or None)
            return 0
        finally:
            lock.release()

    def _notify(self, source: str) -> None:
        for name, wake in self.wakes.items():
            if name != source:
                wake.set()

    def _worker(self, name: str) -> None:
        interval = self.settings.adapter(name).interval
        store = adapter = None
        failures_in_row = 0
        next_full = time.monotonic()
        while not self.stop.is_set():
            full = time.monotonic() >= next_full
            try:
                if store is None:
                    store, adapter = open_store(self.settings), build_adapters(self.settings, [name])[name]
                ok = self._cycle(Engine(self.settings, store, {name: adapter}, self.stop, self._notify),
                                 name, push_only=not full)
            except Exception as exc:  # the edge: log, start over with fresh connections, back off
                ok = False
                log_event("worker_error", logging.ERROR, adapter=name, error_class=type(exc).__name__,
                          error=str(exc))
                if not isinstance(exc, OptOutSyncError):
                    logging.getLogger("optout_sync").debug("worker traceback", exc_info=True)
                store = adapter = self._discard(store, adapter)
            failures_in_row = 0 if ok else failures_in_row + 1
            if full or not ok:
                backoff = interval * 2 ** min(failures_in_row, 8) if failures_in_row else interval
                next_full = time.monotonic() + min(backoff, max(interval, ERROR_BACKOFF_MAX))
            # Woken early when another worker added opt-outs: push them now.
            self.wakes[name].wait(max(0.0, next_full - time.monotonic()))
            self.wakes[name].clear()
        self._discard(store, adapter)

    def _cycle(self, engine: Engine, name: str, push_only: bool) -> bool:
        report = engine.cycle(name, push_only=push_only)
        if report.error is not None or not push_only or report.pushed or report.failed:
            log_report(report)
        if report.error is None and not push_only:
            if engine.store.checkpoint(name).last_reconcile_at is None:
                engine.store.set_checkpoint(name, last_reconcile_at=utc_now())  # the schedule starts now
            if engine.reconcile_due(name):
                reconciled = engine.reconcile(name)
                log_report(reconciled)
                return reconciled.error is None
        return report.error is None

    @staticmethod
    def _discard(store, adapter) -> None:
        for thing in (adapter, store):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # closing a broken connection may fail too; nothing to keep
                    pass
        return None
