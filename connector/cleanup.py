"""Clean-up of bounced and spam-reporting contacts: a static snapshot to review, then a count-confirmed delete.

The snapshot is built from the store's events and frozen with the contact ids
the adapter finds; the delete archives exactly those contacts when the typed
count matches, records each outcome in history, and leaves every suppression.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from state import snapshots
from state.errors import InputError, RefusedError

from .commands import build_adapters, open_store
from .operator import check_window
from .settings import Settings

LOOKUP_BATCH = 100
CSV_HEADER = ["email", "contact_id", "reason", "occurred_at", "bounce_category"]


@dataclass
class SnapshotReport:
    """A snapshot just built: how many contacts it holds and where its CSV is."""

    name: str
    adapter: str
    reason: str
    count: int
    without_contact: int
    csv_path: Path


@dataclass
class DeleteReport:
    """What a confirmed delete did."""

    name: str
    adapter: str
    deleted: int = 0
    failed: int = 0
    done_before: int = 0


def contact_adapter(settings: Settings, name: str):
    """The adapter called `name` if it can look up and delete contacts; InputError (a usage error) otherwise."""
    config = settings.adapter(name)
    adapter = build_adapters(settings, [name])[name]
    if not (callable(getattr(adapter, "find_contact_ids", None)) and callable(getattr(adapter, "archive_contacts",
                                                                                      None))):
        adapter.close()
        raise InputError(f"adapter {name!r} ({config.type}) has no contacts to look up or delete; "
                           "clean-up works with adapters that keep contacts, such as hubspot")
    return adapter


def build_snapshot(settings: Settings, adapter_name: str, reason: str, *, since: str | None = None,
                   until: str | None = None, categories: list[str] | None = None, name: str | None = None,
                   csv_path: str | Path | None = None) -> SnapshotReport:
    """Freeze the contacts of addresses that got `reason` in the window; write them as CSV for review."""
    if reason not in snapshots.CLEANUP_REASONS:
        raise InputError(f"reason {reason!r} is not one of {', '.join(snapshots.CLEANUP_REASONS)}")
    if categories and reason != "hard_bounce":
        raise InputError("--bounce-category applies to --reason hard_bounce only")
    since_text, until_text = check_window(since, until)
    name = name or f"{adapter_name}-{reason}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}"
    adapter = contact_adapter(settings, adapter_name)
    try:
        with open_store(settings) as store:
            snapshots.create(store, name, adapter_name, reason, since=since_text, until=until_text,
                             categories=list(categories or []) or None)
            without_contact, after = 0, ""
            while True:
                found = snapshots.candidates(store, reason, since=since_text, until=until_text,
                                             categories=list(categories or []) or None, after=after,
                                             limit=LOOKUP_BATCH)
                if not found:
                    break
                after = found[-1].address
                # No write transaction is open during the vendor calls, so the daemon is never blocked.
                ids = adapter.find_contact_ids([c.address for c in found])
                without_contact += sum(1 for c in found if not ids.get(c.address))
                snapshots.add_members(store, name, [(contact_id, c.address, c.occurred_at, c.bounce_category)
                                                    for c in found for contact_id in ids.get(c.address, [])])
            snapshots.finish(store, name, without_contact)
            path = Path(csv_path) if csv_path else settings.store.path.parent / f"cleanup-{name}.csv"
            _write_csv(path, reason, snapshots.members(store, name))
            count = snapshots.load(store, name)["count"]
    finally:
        adapter.close()
    return SnapshotReport(name, adapter_name, reason, count, without_contact, path)


def delete_snapshot(settings: Settings, adapter_name: str, *, confirm: int, reason: str | None = None,
                    name: str | None = None) -> DeleteReport:
    """Delete exactly the contacts of a saved snapshot when `confirm` is their number; RefusedError otherwise.

    Without `name`, the newest ready snapshot of the adapter and reason is used.
    Contacts deleted by an earlier run are skipped; failures can be retried by
    running the same command again.
    """
    contact_adapter(settings, adapter_name).close()  # a usage error first, before any snapshot is looked up
    with open_store(settings) as store:
        snapshot = _pick(store, adapter_name, reason, name)
        if confirm != snapshot["count"]:
            raise RefusedError(f"snapshot {snapshot['name']!r} has {snapshot['count']} contacts, not {confirm}; "
                               "nothing deleted")
        report = DeleteReport(snapshot["name"], adapter_name, done_before=snapshot["count"] - snapshot["pending"])
        if not snapshot["pending"]:
            return report
        adapter = contact_adapter(settings, adapter_name)
        try:
            for batch in snapshots.members(store, snapshot["name"], pending_only=True):
                results = {r.contact_id: r for r in adapter.archive_contacts([m.contact_id for m in batch])}
                outcomes = []
                for member in batch:
                    result = results.get(member.contact_id)
                    ok = bool(result and result.ok)
                    outcomes.append((member, ok, result.message if result else "no answer for this contact"))
                snapshots.record_deletions(store, snapshot["name"], adapter_name, snapshot["reason"], outcomes)
                report.deleted += sum(1 for _, ok, _ in outcomes if ok)
                report.failed += sum(1 for _, ok, _ in outcomes if not ok)
        finally:
            adapter.close()
    return report


def _pick(store, adapter_name: str, reason: str | None, name: str | None) -> dict:
    if name:
        snapshot = snapshots.load(store, name)
        if snapshot is None:
            raise InputError(f"no snapshot named {name!r}")
        if snapshot["adapter"] != adapter_name or (reason and snapshot["reason"] != reason):
            raise RefusedError(f"snapshot {name!r} is of adapter {snapshot['adapter']!r} and reason "
                               f"{snapshot['reason']!r}, not what was asked")
    else:
        if not reason:
            raise InputError("name the snapshot, or give the reason whose newest snapshot to use")
        snapshot = snapshots.latest(store, adapter_name, reason)
        if snapshot is None:
            raise InputError(f"no snapshot ready for adapter {adapter_name!r} and reason {reason!r}; "
                             "build one first (without --delete) and review it")
    if snapshot["state"] == snapshots.BUILDING:
        raise RefusedError(f"snapshot {snapshot['name']!r} was never completed; build a new one")
    return snapshot


def _write_csv(path: Path, reason: str, batches) -> None:
    """The snapshot for review, readable by its owner only (it lists people's addresses)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        for batch in batches:
            writer.writerows([m.address, m.contact_id, reason, m.occurred_at or "", m.bounce_category or ""]
                             for m in batch)
