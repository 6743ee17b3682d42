"""The daemon: one worker thread per adapter, each on its own interval, stopped by a flag.

A worker that fails or hangs delays nobody else: each has its own store
connection and adapter. When a worker adds opt-outs it wakes the others, so
they push at once instead of at their next interval. A monitor thread keeps
the metrics' gauges current and raises the lag alarm; the optional HTTP server
serves them. SIGTERM/SIGINT set the stop flag; workers finish or abandon their
current batch (each batch is one transaction) and the process exits 0 within
`grace` seconds.

On SQLite one daemon syncs a store (its lock file). The store's identity (device, inode, store id)
is checked at every cycle and twice a second: a store deleted or replaced under the daemon stops it
with one error line, a failing /readyz and exit code 1. After a cycle that did nothing, a WAL grown
beyond 4 MiB is checkpointed and truncated (at most every 10 s), so it does not keep its high-water mark.

On PostgreSQL several daemons share a store. Each adapter's worker drives it only while this daemon
holds the adapter's lease (connector/leases.py); a lease thread tries to take the adapters nobody
holds once per (shortest) interval, so a dead holder's adapters are taken over within two intervals.
Every write a worker makes checks its lease inside the transaction (`PgStore.fence`): a worker that
lost its lease commits nothing more, and stops driving the adapter. Every daemon serves the status
endpoints and the webhook receiver, whichever adapters it drives.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from datetime import datetime, timezone

from adapters import http
from state.errors import OptOutSyncError
from state.models import utc_now
from state.store import Store

from .commands import build_adapters, log_report, open_store, status
from .engine import Engine
from .history import LagHistory
from .leases import LeaseLost
from .lock import StoreLock, real_store_path
from .logs import log_event
from .progress import clear_stored_progress
from .store_guard import mark_store_lost, prepare_store_folder
from .store_identity import StoreIdentity, companion_inodes, set_aside_own_wal
from .metrics import Metrics
from .server import StatusServer
from .settings import Settings

ERROR_BACKOFF_MAX = 300.0
# How often the monitor refreshes gauges and checks the lag alarm (more often for a small max_lag).
MONITOR_EVERY = 5.0
MONITOR_EVERY_MIN = 0.2
# A paused adapter is warned about when it pauses, then at most this often (seconds) while it stays paused.
PAUSED_WARN_EVERY = 3600.0
# How often the main thread checks that the store file is still the one opened.
IDENTITY_EVERY = 0.5
# Idle WAL truncation: only a WAL larger than this is worth it, at most once per IDLE_CHECKPOINT_EVERY,
# waiting at most CHECKPOINT_BUSY_MS for other connections (it blocks new writers while it waits).
WAL_TRUNCATE_ABOVE = 4 * 1024 * 1024
IDLE_CHECKPOINT_EVERY = 10.0
CHECKPOINT_BUSY_MS = 100
EXIT_STORE_LOST = 1


class Daemon:
    """Runs every adapter continuously until stopped."""

    def __init__(self, settings: Settings, grace: float = 5.0):
        self.settings = settings
        self.grace = grace
        self.stop = threading.Event()
        self.wakes = {a.name: threading.Event() for a in settings.adapters}
        self.threads: list[threading.Thread] = []
        self.metrics = Metrics(self.wakes)
        # Each adapter's lag and pending count over the last 24 h, for the status page (sampled by the monitor).
        self.history = LagHistory()
        self._observer = lambda kind, adapter: (self.metrics.count_http_retry(adapter) if kind == "retry"
                                                else self.metrics.count_rate_limited(adapter))
        self.server: StatusServer | None = None
        self.receiver = None  # receiver.app.WebhookReceiver, with [webhooks] listen
        self.monitor: threading.Thread | None = None
        self.monitor_wake = threading.Event()
        self.monitor_every = max(MONITOR_EVERY_MIN, min(MONITOR_EVERY, settings.server.max_lag / 4))
        # Monotonic time of each adapter's last lag_alarm event: one per adapter per max_lag.
        self._lag_alarm_at: dict[str, float] = {}
        # Monotonic time of each paused adapter's last guard_paused warning.
        self._paused_warned_at: dict[str, float] = {}
        # When this daemon first drove each adapter: the reconcile schedule of one never reconciled.
        self._schedule_start: dict[str, str] = {}
        self.identity: StoreIdentity | None = None
        self.store_problem: str | None = None
        self._identity_lock = threading.Lock()
        self._companions: set[tuple[int, int]] = set()  # (device, inode) of the store's -wal and -shm
        self._checkpoint_lock = threading.Lock()
        self._checkpoint_at = float("-inf")
        # PostgreSQL: this daemon's adapter leases (PgLeases) and the thread that takes free ones.
        self.postgresql = settings.store.postgresql
        self.leases = None
        self.lease_thread: threading.Thread | None = None
        self.lease_every = min((a.interval for a in settings.adapters), default=60.0)
        self._driving: set[str] = set()  # the adapters whose leases the lease thread saw held

    def request_stop(self, *_signal_args) -> None:
        """Ask every worker to stop after its current batch."""
        self.stop.set()
        for wake in [*self.wakes.values(), self.monitor_wake]:
            wake.set()

    def run(self) -> int:
        """Start the workers, the monitor and the server, and wait for a stop signal; the exit code."""
        path = self.settings.store.path
        lock = None
        if not self.postgresql:
            prepare_store_folder(path)
            lock = StoreLock(path, command="run").acquire()
        http.OBSERVERS.append(self._observer)
        try:
            existed = self.postgresql or path.exists()
            with open_store(self.settings, create=True) as store:  # fail early on an unusable store
                if not existed:
                    log_event("store_created", path=str(path),
                              message=f"created a new, empty store at {path}")
                if self.postgresql:
                    from .leases import PgLeases

                    # Lost leases are noticed within about one interval (docs/architecture.md, Leases).
                    self.leases = PgLeases(self.settings.store.url_text(), dead_after=self.lease_every)
                    store_name = store.path
                else:
                    self.identity = StoreIdentity.of(path, store)
                    clear_stored_progress(store, list(self.wakes))  # left by a process that was killed
                    store_name = str(path)
                self.metrics.observe_applies(store)  # apply latency counts from here on
            for adapter in build_adapters(self.settings).values():  # and on adapter settings that cannot work
                adapter.close()
            if self.settings.server.listen:
                self.server = StatusServer(self.settings, self.metrics, self.problems, self.stop.is_set,
                                           store_problem=lambda: self.store_problem,
                                           history=self.history).start()
                log_event("server_listening", url=self.server.url)
            if self.settings.webhooks.listen:  # imported only here: Starlette and uvicorn cost start-up
                from receiver.app import start_receiver

                self.receiver = start_receiver(self.settings, registry=self.metrics.registry, wake=self._notify,
                                               store_problem=lambda: self.store_problem)
                log_event("webhooks_listening", url=self.receiver.url,
                          adapters=",".join(self.receiver.hooks) or None)
            if threading.current_thread() is threading.main_thread():  # tests run it in a thread
                for signum in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(signum, self.request_stop)
            log_event("started", adapters=",".join(self.wakes), store=store_name,
                      daemon=self.leases.daemon_id if self.leases is not None else None)
            if self.leases is not None:
                self._take_leases()  # before the workers start: the adapters free now are driven at once
                self.lease_thread = threading.Thread(target=self._lease_loop, name="leases", daemon=True)
                self.lease_thread.start()
            for name in self.wakes:
                thread = threading.Thread(target=self._worker, args=(name,), name=f"worker-{name}", daemon=True)
                thread.start()
                self.threads.append(thread)
            self.monitor = threading.Thread(target=self._monitor, name="monitor", daemon=True)
            self.monitor.start()
            while not self.stop.wait(IDENTITY_EVERY):
                self.store_intact()
            deadline = time.monotonic() + self.grace
            for thread in [*self.threads, self.monitor, *filter(None, [self.lease_thread])]:
                thread.join(max(0.0, deadline - time.monotonic()))
            abandoned = [t.name for t in self.threads if t.is_alive()]
            log_event("stopped", abandoned=",".join(abandoned) or None)
            return EXIT_STORE_LOST if self.store_problem else 0
        finally:
            http.OBSERVERS.remove(self._observer)
            if self.server is not None:
                self.server.stop()
            if self.receiver is not None:
                self.receiver.stop()
            if self.leases is not None:
                self.leases.close()  # every lease ends with its connection: other daemons take over at once
            if lock is not None:
                lock.release()

    def problems(self) -> list[str]:
        """What makes the process unhealthy: a lost store, threads that ended while it should be running."""
        if self.store_problem:
            return [self.store_problem]
        if self.stop.is_set():
            return []
        dead = [t.name for t in [*self.threads, self.monitor, self.lease_thread] if t is not None and not t.is_alive()]
        if self.receiver is not None and not self.receiver.alive():
            dead.append("webhooks")
        return [f"threads ended unexpectedly: {', '.join(dead)}"] if dead else []

    def store_intact(self) -> bool:
        """True while the file at the store's path is the store opened at start; else stop, once.

        The first thread to see a mismatch logs the one error and stops the daemon; syncing
        on would write into a deleted file or re-read every source into a new, empty store.
        """
        if self.store_problem:
            return False
        if self.identity is None:
            return True
        problem = self.identity.problem()
        if problem is None:
            # The -wal and -shm at the path are this store's now: remember them, so that they are
            # moved aside once the store is replaced even if no connection has them open then.
            self._companions = companion_inodes(self.identity.path)
            return True
        with self._identity_lock:
            if self.store_problem is None:
                self.store_problem = problem
                self.request_stop()
                moved = set_aside_own_wal(self.identity.path, also=self._companions)
                aside = f"; the old store's WAL was moved aside to {moved[0]}" if moved else ""
                message = (f"{problem}; syncing stopped{aside}. Restore the store (optout-sync restore FILE), "
                           "then start the daemon again")
                # The marker keeps a restarted daemon from filling a new or foreign store.
                mark_store_lost(self.settings.store.path, f"{utc_now()} {message}")
                log_event("store_lost", logging.ERROR, path=str(self.identity.path), message=message)
        return False

    def _notify(self, source: str) -> None:
        for name, wake in self.wakes.items():
            if name != source:
                wake.set()

    # -- leases (PostgreSQL) ----------------------------------------------------------------

    def _take_leases(self) -> None:
        """Take every adapter nobody holds; say which were taken and which were lost since the last time."""
        try:
            before = self._driving
            held = self.leases.held()
            for name in self.wakes:
                if name not in held and self.leases.try_acquire(name):
                    held.add(name)
        except OptOutSyncError as exc:  # PostgreSQL unreachable: nothing is held; try again next time
            log_event("lease_error", logging.WARNING, error_class=type(exc).__name__, error=str(exc))
            held = set()
        self._driving = held
        for name in sorted(held - before):
            log_event("lease_taken", adapter=name, daemon=self.leases.daemon_id)
            self.wakes[name].set()  # its worker starts at once
        for name in sorted(before - held):
            log_event("lease_lost", logging.WARNING, adapter=name, daemon=self.leases.daemon_id,
                      message=f"this daemon no longer drives {name}; another daemon takes it over")
            self.wakes[name].set()  # its worker lets go of its connection at once

    def _lease_loop(self) -> None:
        """Every (shortest) interval: take the free adapters, so a dead holder's are taken within two."""
        while not self.stop.wait(self.lease_every):
            self._take_leases()

    def _drives(self, name: str) -> bool:
        """Whether this daemon drives `name` now: always on SQLite; on PostgreSQL while it holds the lease."""
        return self.leases is None or name in self._driving

    def _worker(self, name: str) -> None:
        interval = self.settings.adapter(name).interval
        store = adapter = None
        failures_in_row = 0
        next_full = time.monotonic()
        while not self.stop.is_set():
            if not self.store_intact():
                break
            if not self._drives(name):
                # Another daemon drives it (or nobody yet): hold no connection; the lease thread wakes us.
                store = adapter = self._discard(store, adapter)
                self.wakes[name].wait(interval)
                self.wakes[name].clear()
                next_full = time.monotonic()  # a newly taken adapter starts with a full cycle
                continue
            full = time.monotonic() >= next_full
            try:
                if store is None:
                    store, adapter = open_store(self.settings), build_adapters(self.settings, [name])[name]
                    # A new connection opens whatever file is at the path now: it must be our store.
                    if self.identity is not None and store.store_id() != self.identity.store_id:
                        self.store_intact()
                        if self.store_problem:
                            break
                    if self.leases is not None:
                        # Every write of this worker checks, in its transaction, that the lease is still ours.
                        store.fence = self.leases.fence([name])
                        clear_stored_progress(store, [name])  # left by a holder that died
                # With CPython's usual collections: the webhook receiver's garbage (asyncio, Starlette)
                # would wait for 100,000 objects while any adapter pushes (ingest peak RSS 115 -> 136 MB).
                ok = self._cycle(Engine(self.settings, store, {name: adapter}, self.stop, self._notify,
                                        report_progress=True, collect_less=False), name, push_only=not full)
            except LeaseLost as exc:  # its write was refused: another daemon drives it now
                log_event("lease_lost", logging.WARNING, adapter=name, error=str(exc))
                self._driving = self._driving - {name}
                store = adapter = self._discard(store, adapter)
                continue
            except Exception as exc:  # the edge: log, start over with fresh connections, back off
                ok = False
                self.metrics.observe_worker_error(name)
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
        if isinstance(report.error, LeaseLost):
            raise report.error  # nothing of the cycle after the refused write was committed
        self.metrics.observe_report(report)
        if report.error is None and not (report.pulled or report.rejected or report.staged or report.added
                                         or report.changed or report.pushed or report.failed or report.parked
                                         or report.skipped or report.paused):
            self.idle_checkpoint(engine.store)
        if report.error is not None or report.added or report.pushed or report.failed or report.parked:
            self.monitor_wake.set()
        if report.error is not None or not push_only or report.pushed or report.failed:
            # A push-only cycle does not look at the pause, so it leaves the warning schedule alone.
            log_report(report, cursor_age_s=self._cursor_age(engine.store, name),
                       warn_paused=not push_only and self._warn_paused(name, report.paused))
        if report.error is None and not push_only:
            # A never-reconciled adapter's schedule starts with its first cycle here; the store's
            # last_reconcile_at stays empty until a reconcile really ran (status shows it).
            schedule_start = self._schedule_start.setdefault(name, utc_now())
            if engine.reconcile_due(name, schedule_start):
                reconciled = engine.reconcile(name)
                self.metrics.observe_report(reconciled)
                log_report(reconciled, cursor_age_s=self._cursor_age(engine.store, name),
                           warn_paused=reconciled.paused and self._warn_paused(name, True))
                return reconciled.error is None
        return report.error is None

    def _warn_paused(self, name: str, paused: bool) -> bool:
        """Whether this cycle warns that `name` is paused: when it pauses, then every PAUSED_WARN_EVERY."""
        if not paused:
            self._paused_warned_at.pop(name, None)  # a later pause is news again
            return False
        now = time.monotonic()
        last = self._paused_warned_at.get(name)
        if last is not None and now - last < PAUSED_WARN_EVERY:
            return False
        self._paused_warned_at[name] = now
        return True

    def idle_checkpoint(self, store: Store) -> bool:
        """After a cycle that did nothing: truncate a grown WAL, at most every 10 s; True if it did.

        One thread at a time; a busy database (another writer, a long reader) is skipped quietly
        and tried again after the next idle cycle.
        """
        if self.postgresql or time.monotonic() - self._checkpoint_at < IDLE_CHECKPOINT_EVERY:
            return False  # PostgreSQL has no WAL file of ours to truncate
        real = real_store_path(store.path)  # SQLite keeps the WAL beside the real file, not a symlink
        wal = real.with_name(real.name + "-wal")
        try:
            size = os.stat(wal).st_size
        except OSError:
            return False
        if size <= WAL_TRUNCATE_ABOVE or not self._checkpoint_lock.acquire(blocking=False):
            return False
        try:
            done = store.truncate_wal(CHECKPOINT_BUSY_MS)
            if done:
                self._checkpoint_at = time.monotonic()
                log_event("wal_truncated", logging.DEBUG, wal_bytes_before=size)
            return done
        finally:
            self._checkpoint_lock.release()

    @staticmethod
    def _cursor_age(store: Store, name: str) -> float | None:
        cursor_at = store.checkpoint(name).cursor_at
        if cursor_at is None:
            return None
        return round((datetime.now(timezone.utc) - datetime.fromisoformat(cursor_at)).total_seconds(), 3)

    # -- the monitor ----------------------------------------------------------------------

    def _monitor(self) -> None:
        """Refresh the gauges and the lag alarm from the store until stopped; errors are logged, not fatal."""
        store = None
        last_problem = None
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                store = store or open_store(self.settings)
                self._observe(store)
                last_problem = None
            except Exception as exc:  # a locked or broken store: say so once, retry on a fresh connection
                problem = f"{type(exc).__name__}: {exc}"
                if problem != last_problem:
                    log_event("monitor_error", logging.WARNING, error_class=type(exc).__name__, error=str(exc))
                last_problem = problem
                store = self._discard(store, None)
            # Counting a deep backlog is slow; monitoring must not take the workers' time.
            pause = max(MONITOR_EVERY_MIN, 10 * (time.monotonic() - started))
            self.stop.wait(pause)
            # A worker that changed something wakes the monitor early, so the gauges follow at once.
            self.monitor_wake.wait(max(0.0, self.monitor_every - pause))
            self.monitor_wake.clear()
        self._discard(store, None)

    def _observe(self, store: Store) -> None:
        max_lag = self.settings.server.max_lag
        rows = status(self.settings, store, self.leases)["adapters"]
        self.history.record(rows)
        for row in rows:
            name = row["adapter"]
            self.metrics.set_state(name, pending=row["pending"], oldest_age_s=row["lag_s"],
                                   last_success_at=row["last_success_at"], paused=row["paused"],
                                   staged=row["staged"], open_failures=row["failures"], lag_alarm=row["lag_alarm"])
            now = time.monotonic()
            if row["lag_alarm"]:
                if name not in self._lag_alarm_at or now - self._lag_alarm_at[name] >= max_lag:
                    self._lag_alarm_at[name] = now
                    log_event("lag_alarm", logging.ERROR, adapter=name, lag_s=row["lag_s"], max_lag_s=max_lag,
                              pending=row["pending"],
                              message=f"the oldest opt-out not yet applied to {name} waits for longer than max_lag")
            elif self._lag_alarm_at.pop(name, None) is not None:
                log_event("lag_cleared", adapter=name, lag_s=row["lag_s"], pending=row["pending"])
        self.metrics.observe_applies(store)

    @staticmethod
    def _discard(store, adapter) -> None:
        """Close what is open, ignoring errors; None, to reset the caller's references."""
        for thing in (adapter, store):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # closing a broken connection may fail too; nothing to keep
                    pass
        return None
