"""The operator's commands as library functions; `cli.py` only parses arguments and prints.

Each function takes validated Settings and returns data; errors are the
project's exception types, turned into exit codes by the CLI.
"""

from __future__ import annotations

import getpass
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import fields
from datetime import datetime
from pathlib import Path

from adapters import registry
from adapters.base import Adapter
from state.errors import ConfigError, OptOutSyncError
from state.models import OptOut, utc_now
from state.store import Store

from .engine import CycleReport, Engine
from .lock import StoreLock
from .logs import log_event
from .settings import Settings
from .store_guard import check_store_location


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


def open_store(settings: Settings) -> Store:
    """Open (and create or migrate) the configured store, refusing a folder that every user can write."""
    for warning in check_store_location(settings.store.path):
        log_event("store_permissions_fixed", logging.WARNING, message=warning)
    return Store(settings.store.path, busy_timeout=settings.store.busy_timeout)


@contextmanager
def engine_for(settings: Settings, names: list[str] | None = None, *, dry_run: bool = False) -> Iterator[Engine]:
    """An engine over the store and the named adapters, holding the store lock.

    A dry run takes no lock, and when there is no store yet it works on an empty
    temporary one, so that it leaves no file behind.
    """
    store_lock = None if dry_run else StoreLock(settings.store.path).acquire()
    scratch = tempfile.TemporaryDirectory() if dry_run and not settings.store.path.exists() else None
    store = adapters = None
    try:
        store = Store(Path(scratch.name) / "dry-run.db") if scratch else open_store(settings)
        adapters = build_adapters(settings, names)
        yield Engine(settings, store, adapters)
    finally:
        for adapter in (adapters or {}).values():
            adapter.close()
        if store is not None:
            store.close()
        if scratch is not None:
            scratch.cleanup()
        if store_lock is not None:
            store_lock.release()


def is_idle(report: CycleReport) -> bool:
    """True for a cycle that read, pushed, failed and rejected nothing, without an error or a note."""
    return not (report.error is not None or report.pulled or report.rejected or report.added or report.changed
                or report.pushed or report.failed or report.parked or report.skipped or report.missing_at_source
                or report.notes)


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
                  rejected=report.rejected, duration_ms=report.duration_ms, cursor_age_s=cursor_age_s,
                  error_class=None, error=None)
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


def sync_once(settings: Settings, names: list[str] | None = None, dry_run: bool = False) -> list[CycleReport]:
    """One cycle of every (or each named) adapter: all pulls, then all pushes."""
    with engine_for(settings, names, dry_run=dry_run) as engine:
        reports = engine.sync_once(names, dry_run=dry_run)
    for report in reports:
        log_report(report)
    return reports


def reconcile(settings: Settings, name: str, dry_run: bool = False) -> CycleReport | str:
    """Reconcile one adapter now; if a daemon holds the store, ask it to at its next cycle instead."""
    settings.adapter(name)
    if StoreLock(settings.store.path).is_held_elsewhere() and not dry_run:
        with open_store(settings) as store:
            store.set_checkpoint(name, reconcile_requested=1)
        return f"the daemon is running; it will reconcile {name!r} at that adapter's next cycle"
    with engine_for(settings, [name], dry_run=dry_run) as engine:
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
        rows = store.dismiss_failures(ids, reason, by=_who())
    for row in rows:
        log_event("failure_dismissed", adapter=row["adapter"], failure_id=row["id"], kind=row["kind"],
                  reason=reason.strip())
    return rows


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown user"


def check(settings: Settings) -> list[tuple[str, bool, list[str]]]:
    """Validate every adapter without changing anything: (name, ok, lines) each."""
    results = []
    for config in settings.adapters:
        try:
            adapter = build_adapters(settings, [config.name])[config.name]
        except ConfigError as exc:
            results.append((config.name, False, [str(exc)]))
            continue
        try:
            results.append((config.name, True, adapter.check()))
        except Exception as exc:  # the edge: every adapter gets its line, whatever went wrong
            results.append((config.name, False, [f"{type(exc).__name__}: {exc}"]))
        finally:
            adapter.close()
    return results


def status(settings: Settings, store: Store | None = None) -> dict:
    """Per adapter: last run, lag, cursor age, pending, pause, failures, lag alarm; and store totals.

    `lag_alarm` is true while the oldest opt-out an adapter has not applied yet
    (`lag_s`) is older than [server] max_lag. Reads `store` if given (the daemon's
    monitor), else opens the configured one.
    """
    now = datetime.fromisoformat(utc_now())
    max_lag = settings.server.max_lag

    def age(moment: str | None) -> float | None:
        return round((now - datetime.fromisoformat(moment)).total_seconds(), 3) if moment else None

    with nullcontext(store) if store is not None else open_store(settings) as store:
        rows = []
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
            })
        return {
            "store": str(settings.store.path),
            "suppressions": store.count_suppressions(),
            "daemon_running": StoreLock(settings.store.path).is_held_elsewhere(),
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
