"""The operator's commands as library functions; `cli.py` only parses arguments and prints.

Each function takes validated Settings and returns data; errors are the
project's exception types, turned into exit codes by the CLI.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from adapters import registry
from adapters.base import Adapter
from state.errors import ConfigError, OptOutSyncError, StoreError
from state.models import OptOut, utc_now
from state.resubscribes import release_counts
from state.schema import SCHEMA_VERSION
from state.store import Store

from .engine import CycleReport, Engine
from .lock import StoreLock
from .logs import log_event
from .progress import clear_stored_progress, stored_progress
from .store_guard import check_store_location, lost_marker, prepare_store_folder, require_store
from .store_identity import connect_read_only

if TYPE_CHECKING:  # pydantic-settings loads only where settings are loaded; psycopg only for PostgreSQL
    from state.pg_store import PgStore

    from .leases import LeaseHolder, PgLeases
    from .settings import Settings


def build_adapters(settings: Settings, names: list[str] | None = None) -> dict[str, Adapter]:
    """Instantiate the configured adapters (all, or those named)."""
    wanted = names or [a.name for a in settings.adapters]
    adapters = {}
    for name in wanted:
        config = settings.adapter(name)
        try:
            adapters[name] = registry.build(config, settings.topics)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{settings.source}: adapter {name!r}: {exc}") from None
    return adapters


def open_store(settings: Settings, *, create: bool = False) -> Store | PgStore:
    """Open (and migrate) the configured store: the one place that chooses the backend.

    `[store] url` (or `url_file`): a PgStore on that PostgreSQL database, created and migrated
    there when empty. Else the SQLite file at `[store] path`, refusing a folder that every user
    can write; only the creating commands (run, sync, import, restore) pass `create=True`; for
    every other command a missing SQLite store is a ConfigError naming the path, and nothing is
    created. Callers use the two alike and never ask which they have.
    """
    if settings.store.postgresql:
        from state.pg_store import PgStore  # psycopg loads only for a PostgreSQL store

        return PgStore(settings.store.url_text())
    path = settings.store.path
    if create:
        prepare_store_folder(path)
    else:
        require_store(path)
    for warning in check_store_location(path):
        log_event("store_permissions_fixed", logging.WARNING, message=warning)
    return Store(path, busy_timeout=settings.store.busy_timeout, create=create)


def take_leases(settings: Settings, names: list[str], command: str) -> PgLeases:
    """The leases of the named adapters on a PostgreSQL store, for a one-shot command; StoreError if one is held.

    A daemon (or another command) driving one of them keeps it: two processes never push the same
    adapter at once, as the SQLite store's lock ensures there.
    """
    from .leases import PgLeases, default_daemon_id

    leases = PgLeases(settings.store.url_text(), daemon_id=f"{default_daemon_id()} ({command})")
    try:
        for name in names:
            if not leases.try_acquire(name):
                holder = leases.holders().get(name)
                by = f" ({holder.daemon_id} on {holder.host}, since {holder.since})" if holder else ""
                raise StoreError(f"another process is already syncing adapter {name!r}{by}; stop it first")
    except BaseException:
        leases.close()
        raise
    return leases


@contextmanager
def engine_for(settings: Settings, names: list[str] | None = None, *, dry_run: bool = False,
               create: bool = False, command: str = "sync") -> Iterator[Engine]:
    """An engine over the store and the named adapters, holding the store lock (SQLite) or their leases.

    A dry run takes no lock, and when there is no SQLite store yet it works on an empty
    temporary one, so that it leaves no file behind. Without `create`, a missing SQLite
    store is a ConfigError before anything (the lock file included) is made. On PostgreSQL
    the named adapters' leases are taken (connector/leases.py), and every write checks them.
    """
    postgresql = settings.store.postgresql
    wanted = names or [a.name for a in settings.adapters]
    if not dry_run and not postgresql:
        if create:
            prepare_store_folder(settings.store.path)
        else:
            require_store(settings.store.path)
    store_lock = None if dry_run or postgresql else StoreLock(settings.store.path, command=command).acquire()
    scratch = (tempfile.TemporaryDirectory() if dry_run and not postgresql and not settings.store.path.exists()
               else None)
    store = adapters = leases = None
    try:
        store = Store(Path(scratch.name) / "dry-run.db") if scratch else open_store(settings, create=create)
        if postgresql and not dry_run:
            leases = take_leases(settings, wanted, command)
            store.fence = leases.fence(wanted)
        if not dry_run:  # this process holds the lock now: a row left by a killed one is stale
            clear_stored_progress(store, wanted)
        adapters = build_adapters(settings, names)
        yield Engine(settings, store, adapters, report_progress=not dry_run)
    finally:
        for adapter in (adapters or {}).values():
            adapter.close()
        if store is not None:
            store.close()
        if leases is not None:
            leases.close()
        if scratch is not None:
            scratch.cleanup()
        if store_lock is not None:
            store_lock.release()


def is_idle(report: CycleReport) -> bool:
    """True for a cycle that read, pushed, failed and rejected nothing, without an error or a note."""
    return not (report.error is not None or report.pulled or report.rejected or report.added or report.changed
                or report.pushed or report.failed or report.parked or report.skipped or report.missing_at_source
                or report.released or report.removed or report.notes)


def log_report(report: CycleReport, cursor_age_s: float | None = None, warn_paused: bool = True) -> None:
    """One log line for a cycle, plus one per guard pause (unless `warn_paused` is false) and note.

    Every cycle line has the same keys (None where a value does not apply), so a
    JSON consumer can rely on them: adapter, phase, counts, duration_ms,
    cursor_age_s (seconds since the source's read cursor last moved), error_class
    and error. An idle cycle logs at debug level, so a quiet daemon's log stays quiet.
    """
    level = logging.ERROR if report.error else logging.DEBUG if is_idle(report) else logging.INFO
    fields = dict(adapter=report.adapter, phase=report.phase, pulled=report.pulled, added=report.added,
                  pushed=report.pushed, failed=report.failed, parked=report.parked, skipped=report.skipped,
                  rejected=report.rejected, released=report.released, removed=report.removed,
                  duration_ms=report.duration_ms, cursor_age_s=cursor_age_s, error_class=None, error=None)
    if report.phase == "reconcile":
        fields["missing_at_source"] = report.missing_at_source
    if report.dry_run:
        fields["dry_run"] = True
    if report.error is not None:
        fields.update(error_class=type(report.error).__name__, error=str(report.error))
    log_event(report.phase, level, **fields)
    if report.paused and warn_paused:
        log_event("guard_paused", logging.WARNING, adapter=report.adapter, staged=report.waiting_approval,
                  approve=f"optout-sync approve {report.adapter} --count {report.waiting_approval}")
    for note in report.notes:
        log_event("note", logging.INFO, adapter=report.adapter, message=note)


def sync_once(settings: Settings, names: list[str] | None = None, dry_run: bool = False,
              list_all: bool = False) -> list[CycleReport]:
    """One cycle of every (or each named) adapter: all pulls, then all pushes.

    A dry run's report lists the first DRY_RUN_LIST_LIMIT items of each kind; `list_all` keeps every one.
    """
    with engine_for(settings, names, dry_run=dry_run, create=True) as engine:
        if list_all:
            engine.dry_run_list_limit = None
        reports = engine.sync_once(names, dry_run=dry_run)
    for report in reports:
        log_report(report)
    return reports


def reconcile(settings: Settings, name: str, dry_run: bool = False) -> CycleReport | str:
    """Reconcile one adapter now; if a daemon holds the store, ask it to at its next cycle instead."""
    settings.adapter(name)
    if settings.store.postgresql:
        driven = not dry_run and name in adapter_holders(settings)
    else:
        require_store(settings.store.path)
        driven = StoreLock(settings.store.path).is_held_elsewhere() and not dry_run
    if driven:
        with open_store(settings) as store:
            store.set_checkpoint(name, reconcile_requested=1)
        return f"the daemon is running; it will reconcile {name!r} at that adapter's next cycle"
    with engine_for(settings, [name], dry_run=dry_run, command="reconcile") as engine:
        report = engine.reconcile(name, dry_run=dry_run)
    log_report(report)
    return report


def approve(settings: Settings, name: str, count: int) -> int:
    """Apply a guard-paused adapter's staged opt-outs when `count` matches; the number applied."""
    settings.adapter(name)
    with open_store(settings) as store:
        added = Engine(settings, store, {}).approve(name, count)
    log_event("approved", adapter=name, applied=added)
    return added


def failures(settings: Settings, adapter: str | None = None) -> list[dict]:
    """Open failures, oldest first."""
    if adapter:
        settings.adapter(adapter)
    with open_store(settings) as store:
        return list(store.failures(adapter))


def dismiss_failures(settings: Settings, ids: list[int], reason: str) -> list[dict]:
    """Close open failures by id with a reason (an audit event each); the failures as they were.

    Unknown or closed ids: InputError naming them, nothing changed.
    """
    with open_store(settings) as store:
        rows = store.dismiss_failures(ids, reason, by=who())
    for row in rows:
        log_event("failure_dismissed", adapter=row["adapter"], failure_id=row["id"], kind=row["kind"],
                  reason=reason.strip())
    return rows


def who() -> str:
    """The operating-system user running this command, for audit events."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown user"


def check(settings: Settings, names: list[str] | None = None) -> list[tuple[str, bool, list[str]]]:
    """Validate every (or each named) adapter without changing anything: (name, ok, lines) each."""
    results = []
    for config in settings.adapters if names is None else [settings.adapter(name) for name in names]:
        try:
            adapter = build_adapters(settings, [config.name])[config.name]
        except ConfigError as exc:
            results.append((config.name, False, [str(exc)]))
            continue
        try:
            results.append((config.name, True, adapter.check()))
        except Exception as exc:  # the edge: every adapter gets its line, whatever went wrong
            # A refused probe says what is missing: the credential, a scope or permission, a domain.
            explained = getattr(adapter, "probe_refusal", lambda _: None)(exc)
            results.append((config.name, False, [explained] if explained else [f"{type(exc).__name__}: {exc}"]))
        finally:
            adapter.close()
    return results


def adapter_holders(settings: Settings, leases: PgLeases | None = None) -> dict[str, LeaseHolder]:
    """Which live process drives each adapter: {adapter: LeaseHolder}; adapters nobody drives are left out.

    PostgreSQL: the adapters' leases (`leases`, the daemon's own, or a connection made for this);
    SQLite: the holder of the store's lock drives every adapter.
    """
    from .leases import LeaseHolder, PgLeases

    if settings.store.postgresql:
        own = leases is None
        leases = leases or PgLeases(settings.store.url_text())
        try:
            return leases.holders()
        finally:
            if own:
                leases.close()
    holder = StoreLock(settings.store.path).holder()
    if holder is None:
        return {}
    host = socket.gethostname()  # flock is local: the holder runs on this host
    driver = LeaseHolder(f"{host}/{holder.pid}", host, holder.pid, holder.started_at)
    return {a.name: driver for a in settings.adapters}


def status(settings: Settings, store: Store | None = None, leases: PgLeases | None = None) -> dict:
    """Per adapter: last run, lag, cursor age, pending, pause, failures, lag alarm, progress, holder; store totals.

    `lag_alarm` is true while the oldest opt-out an adapter has not applied yet
    (`lag_s`) is older than [server] max_lag. Reads `store` if given (the daemon's
    monitor, with its `leases` on PostgreSQL), else opens the configured one. `holder` is the
    process driving the adapter (daemon id, host, pid, since), or None. `progress` is the running
    push or reconcile's last report (connector.progress), or None; shown only while a process
    drives the adapter.
    """
    now = datetime.fromisoformat(utc_now())
    max_lag = settings.server.max_lag

    def age(moment: str | None) -> float | None:
        return round((now - datetime.fromisoformat(moment)).total_seconds(), 3) if moment else None

    with nullcontext(store) if store is not None else open_store(settings) as store:
        rows = []
        released = release_counts(store)  # opt-outs a recipient's own re-subscribe released, per adapter
        for config in settings.adapters:
            checkpoint = store.checkpoint(config.name)
            pending, oldest = (store.pending_summary(config.name, checkpoint.applied_seq)
                               if config.writes else (0, None))
            last = store.last_run(config.name)
            lag = age(oldest)
            rows.append({
                "adapter": config.name,
                "type": config.type,
                "role": config.role,
                "interval_s": config.interval,
                "last_run_at": last["finished_at"] if last else None,
                "last_run_error": last["error"] if last else None,
                "last_success_at": checkpoint.last_success_at,
                "cursor_age_s": age(checkpoint.cursor_at),
                "pending": pending,
                "lag_s": lag,
                "lag_alarm": lag is not None and lag > max_lag,
                "applied_seq": checkpoint.applied_seq,
                "paused": checkpoint.paused,
                "staged": store.staged_count(config.name),
                "failures": store.failure_count(config.name),
                "last_reconcile_at": checkpoint.last_reconcile_at,
                "released": released.get(config.name, 0),
                "progress": stored_progress(store, config.name),
            })
        holders = adapter_holders(settings, leases)
        for row in rows:
            driver = holders.get(row["adapter"])
            row["holder"] = ({"daemon_id": driver.daemon_id, "host": driver.host, "pid": driver.pid,
                              "since": driver.since} if driver is not None else None)
            if driver is None:  # a row a killed process left behind describes no running work
                row["progress"] = None
        holder = None if settings.store.postgresql else StoreLock(settings.store.path).holder()
        return {
            # A PostgreSQL store is named by database and host: its URL may hold a password.
            "store": store.path if settings.store.postgresql else str(settings.store.path),
            "backend": "postgresql" if settings.store.postgresql else "sqlite",
            "suppressions": store.count_suppressions(),
            "releases": sum(released.values()),
            "daemon_running": bool(holders) if settings.store.postgresql else holder is not None,
            # Who holds the store's lock (the daemon, or a `sync --once`/`reconcile` run): pid, since when.
            "daemon": ({"pid": holder.pid, "started_at": holder.started_at, "command": holder.command}
                       if holder is not None else None),
            "max_lag_s": max_lag,
            "adapters": rows,
        }


DRY_RUN_LISTS = ("would_add", "would_reject", "would_push")


def report_dict(report: CycleReport) -> dict:
    """A cycle report as JSON-ready data; a dry run's lists in full, others without them."""
    data = {f.name: getattr(report, f.name) for f in fields(report) if f.name not in DRY_RUN_LISTS}
    data["duplicates"] = report.duplicates
    data["error"] = f"{type(report.error).__name__}: {report.error}" if report.error else None
    if report.dry_run:
        data["would_add"] = [optout_dict(o) for o in report.would_add]
        data["would_reject"] = [{"where": r.where, "value": r.value, "reason": r.reason}
                                for r in report.would_reject]
        data["would_push"] = [optout_dict(o) for o in report.would_push]
    return data


def optout_dict(optout: OptOut) -> dict:
    """An opt-out as JSON-ready data (without its details)."""
    return {"address": optout.address, "scope": optout.scope, "reason": optout.reason, "origin": optout.origin,
            "occurred_at": optout.occurred_at}


def check_store(settings: Settings) -> tuple[bool, list[str]]:
    """Check the store's location without changing anything: (ok, lines).

    The folder must exist (or be creatable by `run`: its parent exists) and be writable, the lock
    must be free or held by a daemon (reported), and an existing store must open read-only with a
    schema version this program knows. A missing store is not an error: `run` creates it.
    On PostgreSQL: the database must answer, and hold no newer schema; who drives what is listed.
    """
    if settings.store.postgresql:
        return _check_pg_store(settings)
    path = settings.store.path
    folder = path.parent
    lines: list[str] = []
    if not folder.exists():
        if not folder.parent.is_dir():
            return False, [f"the store's folder {folder} does not exist, nor does its parent {folder.parent}; "
                           "check [store] path or OPTOUT_SYNC_STORE__PATH"]
        return True, [f"no store yet at {path}; `run` will create it (and its folder {folder}, mode 0700)"]
    if not folder.is_dir():
        return False, [f"the store's folder {folder} is not a folder; check [store] path or OPTOUT_SYNC_STORE__PATH"]
    ok = True
    marker = lost_marker(path)
    if marker.exists():
        ok = False
        lines.append(f"the store was deleted or replaced while a daemon ran (see {marker}); `run` refuses to start "
                     "until it is restored (`optout-sync restore FILE`) or the marker is deleted")
    lock = StoreLock(path)
    for place in dict.fromkeys([folder, lock.path.parent]):
        if not os.access(place, os.W_OK | os.X_OK):
            ok = False
            lines.append(f"the folder {place} is not writable by this user: the store and its lock cannot be written")
    if lock.path.exists() and not lock.path.is_file():
        ok = False
        lines.append(f"the lock file {lock.path} is not a file: the store cannot be locked")
    else:
        holder = lock.holder()
        if holder is not None:
            lines.append(f"a process holds the store's lock ({'daemon' if holder.command in (None, 'run') else holder.command}, "
                         f"pid {holder.pid or 'unknown'}{', since ' + holder.started_at if holder.started_at else ''})")
        elif ok:
            lines.append(f"the store's lock {lock.path} can be taken")
    if not path.exists():
        lines.append(f"no store yet at {path}; `run` will create it")
        return ok, lines
    if not path.is_file():
        return False, [*lines, f"the store path {path} is not a file"]
    try:
        conn = connect_read_only(path, timeout=2.0)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            meta = dict(conn.execute("SELECT key, value FROM store_meta")) if "store_meta" in tables else {}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return False, [*lines, f"the store {path} cannot be opened read-only: {exc}"]
    if version > SCHEMA_VERSION:
        return False, [*lines, f"the store {path} has schema version {version}, newer than this program's "
                               f"{SCHEMA_VERSION}; upgrade optout-sync"]
    if version == 0 or "suppressions" not in tables:
        return False, [*lines, f"{path} is not an optout-sync store (no schema); check [store] path"]
    upgrade = f" (the next run migrates it to {SCHEMA_VERSION})" if version < SCHEMA_VERSION else ""
    identity = f", id {meta['store_id']}, created {meta.get('created_at')}" if "store_id" in meta else ""
    lines.append(f"store {path}: schema version {version}{upgrade}{identity}")
    return ok, lines


def _check_pg_store(settings: Settings) -> tuple[bool, list[str]]:
    """check_store on PostgreSQL, read-only: connect, read the schema version, list the lease holders."""
    from state.pg_errors import BAD_URL, describe
    from state.pg_schema import SCHEMA_VERSION as PG_VERSION

    url = settings.store.url_text()
    try:
        import psycopg

        conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
    except ImportError as exc:
        return False, [f"a PostgreSQL store needs psycopg 3, which cannot be imported: {exc}"]
    except psycopg.ProgrammingError:
        return False, [BAD_URL]  # libpq's message quotes the URL, password and all
    except psycopg.Error as exc:
        return False, [f"cannot connect to the store's PostgreSQL: {describe(exc, url)}"]
    name = f"PostgreSQL database {conn.info.dbname} on {conn.info.host}"
    try:
        with conn:
            exists = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()[0]
            version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] if exists else None
            leases = conn.execute("SELECT to_regclass('leases') IS NOT NULL").fetchone()[0]
    except psycopg.Error as exc:
        return False, [f"cannot read the store {name}: {describe(exc, url)}"]
    if version is None:
        return True, [f"{name} has no optout-sync schema yet; `run` will create it"]
    if version > PG_VERSION:
        return False, [f"the store {name} has schema version {version}, newer than this program's {PG_VERSION}; "
                       "upgrade optout-sync"]
    upgrade = f" (the next run migrates it to {PG_VERSION})" if version < PG_VERSION else ""
    lines = [f"store {name}: schema version {version}{upgrade}"]
    for adapter, holder in (adapter_holders(settings) if leases else {}).items():
        lines.append(f"adapter {adapter} is driven by {holder.daemon_id} on {holder.host} since {holder.since}")
    return True, lines
