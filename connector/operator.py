"""The operator's hand-run workflows: count-confirmed import, export, history and the audited lift.

Library functions over the store; the CLI only parses and prints. They carry
the legal weight described in domain.md sections 2-4.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TextIO

from state.addresses import InvalidAddress, normalise_address, normalise_block
from state.errors import InputError, OptOutSyncError
from state.imports import CHUNK as IMPORT_BATCH, ImportPreview, run_import_batches, saved_count
from state.lifts import holders, lift as lift_in_store, record_removal
from state.models import GLOBAL_SCOPE, REASONS, OptOut, Rejected, to_utc_iso, utc_now

from .collector import fewer_collections
from .commands import build_adapters, open_store, who
from .csv_import import ImportFile, ImportRow
if TYPE_CHECKING:  # pydantic-settings loads only where settings are loaded
    from .settings import Settings

# released_at: the adapters where the recipient's own re-subscribe released the opt-out, ';'-separated.
EXPORT_HEADER = ["email", "scope", "reason", "origin", "source", "occurred_at", "released_at"]
IMPORT_REASONS = ("imported", "manual", "unsubscribed", "hard_bounce", "spam_complaint")
REJECTED_OUT_HEADER = ["row", "value", "reason"]


@dataclass(slots=True, frozen=True)
class RejectedRow(Rejected):
    """A rejected row of an import file, with its spreadsheet row number as a number."""

    row: int = 0


def check_scope(settings: Settings, scope: str) -> str:
    """`*` (or 'all') or a defined topic key; InputError otherwise."""
    if scope in (GLOBAL_SCOPE, "all"):
        return GLOBAL_SCOPE
    if scope not in settings.topics:
        raise InputError(f"scope {scope!r} is not '*' or a topic defined in settings "
                         f"({', '.join(sorted(settings.topics)) or 'none defined'})")
    return scope


# -- output files ----------------------------------------------------------------

# Write errors that are about the output file (not a bug): said in one line, exit 1.
_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG, errno.EROFS, errno.EPIPE)


@contextmanager
def output_file(path: Path, option: str) -> Iterator[TextIO]:
    """A text file written in full or not at all, for an option such as `-o` or `--rejected-out`.

    It is written as a temporary file beside `path` and renamed over it at the end;
    on any error or interruption the temporary file is removed and a file already
    at `path` stays as it was. A missing folder or an unwritable file is an
    InputError naming the option and the path, raised before anything is read.
    A new file gets mode 0600 (it lists people's addresses); a replaced one keeps its mode.
    """
    path = Path(path)
    folder = path.parent
    if not folder.exists():
        raise InputError(f"{option} {path}: the folder {folder} does not exist")
    if not folder.is_dir():
        raise InputError(f"{option} {path}: {folder} is not a folder")
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder, not a file")
    if path.exists() and not path.is_file():
        # A device or a pipe (/dev/stdout, a FIFO) is written in place: a rename would replace it.
        with _writing(path, option), path.open("w", newline="", encoding="utf-8") as handle:
            yield handle
        return
    if not os.access(path if path.exists() else folder, os.W_OK):
        raise InputError(f"{option} {path}: cannot write {'this file' if path.exists() else 'in ' + str(folder)} "
                         "(permission denied)")
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise InputError(f"{option} {path}: cannot write in the folder {folder} ({exc.strerror})") from None
    try:
        if path.exists():
            os.fchmod(fd, stat.S_IMODE(path.stat().st_mode))
        with _writing(path, option), os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            yield handle
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


@contextmanager
def _writing(path: Path, option: str) -> Iterator[None]:
    """Turn an error about writing `path` (cannot open it, disk full) into one line naming it."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _WRITE_ERRORS or (exc.filename is not None and Path(exc.filename) == path):
            raise OptOutSyncError(f"{option} {path}: cannot write: {exc.strerror}") from None
        raise


# -- import ----------------------------------------------------------------------


# Rows between two progress reports while an import reads its file: often enough for a smooth bar,
# rarely enough to cost nothing next to the rows themselves.
PROGRESS_ROWS = 10_000


class ImportProgress(Protocol):
    """What `import_file` tells a progress display (the CLI's bar on a terminal)."""

    def reading(self, done: int, total: int) -> None:
        """`done` of the file's `total` bytes have been read (ImportFile.bytes_read and size)."""

    def finishing(self, what: str) -> None:
        """The file is read; what the import is doing now ("counting ...", "saving ..."), until it returns."""


class ImportInterrupted(KeyboardInterrupt):
    """Ctrl-C during an import, with what it had saved: `saved` new opt-outs (0: nothing was changed)."""

    def __init__(self, saved: int):
        super().__init__(saved)
        self.saved = saved


def import_file(settings: Settings, path: str | Path, *, column: str | None = None, scope: str = GLOBAL_SCOPE,
                reason: str = "imported", confirm: int | None = None, legal_basis: str | None = None,
                explanation: str | None = None, rejected_out: Path | None = None,
                progress: ImportProgress | None = None) -> tuple[ImportFile, ImportPreview]:
    """Preview (no `confirm`) or apply (matching `confirm`) an opt-out list; never creates contacts.

    `progress`, if given, hears how much of the file has been read and then what the import does
    after the last row (the count against the store, or the one transaction that saves it).
    """
    scope = check_scope(settings, scope)
    if reason not in IMPORT_REASONS:
        raise InputError(f"reason {reason!r} is not one of {', '.join(IMPORT_REASONS)}")
    source = ImportFile(path, column)
    outputs = ExitStack()
    rejected_writer = None
    if rejected_out is not None:
        rejected_writer = csv.writer(outputs.enter_context(output_file(rejected_out, "--rejected-out")))
        rejected_writer.writerow(REJECTED_OUT_HEADER)

    def on_rejected(item: RejectedRow) -> None:
        if rejected_writer is not None:
            # The row number has a column of its own, so a spreadsheet can sort and look it up.
            rejected_writer.writerow([item.row, item.value, item.reason])

    def rejected(row: ImportRow) -> RejectedRow:
        return RejectedRow(f"row {row.number}", row.raw or "", row.problem or "row is too short", row.number)

    def one(number: int, raw: str) -> str | RejectedRow:
        try:
            return normalise_address(raw)
        except InvalidAddress as exc:
            return RejectedRow(f"row {number}", raw, f"invalid address {raw.strip()!r}: {exc}", number)

    def batches() -> Iterator[list[str | Rejected]]:
        # Lists of about IMPORT_BATCH, in file order; a block of ordinary rows is normalised in one go.
        batch: list[str | Rejected] = []
        count = 0
        for item in source.blocks():
            if isinstance(item, ImportRow):
                batch.append(rejected(item) if item.problem or item.raw is None else one(item.number, item.raw))
                added = 1
            else:
                addresses = normalise_block(item.raws)
                if None in addresses:
                    addresses = [one(item.first + i, item.raws[i]) if address is None else address
                                 for i, address in enumerate(addresses)]
                batch += addresses
                added = len(addresses)
            if progress is not None and (count + added) // PROGRESS_ROWS > count // PROGRESS_ROWS:
                progress.reading(source.bytes_read, source.size)
            count += added
            if len(batch) >= IMPORT_BATCH:
                yield batch
                batch = []
        if progress is not None:
            # The last row is read; run_import now counts against the store, or saves in one
            # transaction, which on a large list takes seconds of its own.
            progress.reading(source.bytes_read, source.size)
            progress.finishing("counting the new opt-outs against the store" if confirm is None
                               else "saving the import (one transaction)")
        if batch:
            yield batch

    details = {"file": Path(path).name, "by": who()}
    started = utc_now()
    try:
        with outputs, open_store(settings, create=True) as store, fewer_collections():
            preview = run_import_batches(
                store, batches(), scope=scope, reason=reason, confirm=confirm, source="import",
                legal_basis=legal_basis, explanation=explanation,
                details=details, on_rejected=on_rejected)
    except KeyboardInterrupt:
        if confirm is None:
            raise ImportInterrupted(0) from None
        # The interrupt may have come just before or just after the commit: the store says which.
        with open_store(settings) as store:
            raise ImportInterrupted(saved_count(store, source="import", details=details, since=started)) from None
    return source, preview


# -- export ----------------------------------------------------------------------


def parse_bound(text: str, *, end: bool) -> str:
    """An ISO date or date-time as store text; a date as `until` covers that whole day."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
            return to_utc_iso(moment + timedelta(days=1) if end else moment)
        return to_utc_iso(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        raise InputError(f"{text!r} is not an ISO date (2026-01-31) or date-time (2026-01-31T12:00:00Z)") from None


def check_window(since: str | None, until: str | None) -> tuple[str | None, str | None]:
    """--since and --until as store text; InputError if the window they make is empty."""
    since_text = parse_bound(since, end=False) if since else None
    until_text = parse_bound(until, end=True) if until else None
    if since_text and until_text and since_text >= until_text:
        raise InputError(f"--since {since} is not before --until {until}: no opt-out can be in that window")
    return since_text, until_text


def export(settings: Settings, out: TextIO, *, reasons: list[str] | None = None, scope: str | None = None,
           source: str | None = None, since: str | None = None, until: str | None = None) -> int:
    """Write suppressions as CSV (streamed); the number of rows written.

    `source` must be a configured adapter, 'import', or a source that stored
    opt-outs still name (an adapter removed from settings stays exportable);
    anything else is a mistyped name, an InputError, not an empty file.
    """
    for reason in reasons or []:
        if reason not in REASONS:
            raise InputError(f"reason {reason!r} is not one of {', '.join(REASONS)}")
    if scope is not None:
        scope = check_scope(settings, scope)
    since_text, until_text = check_window(since, until)
    writer = csv.writer(out, lineterminator="\n")
    filters = dict(reasons=reasons, scope=scope, source=source, since=since_text, until=until_text)
    with open_store(settings) as store, fewer_collections():
        configured = [a.name for a in settings.adapters]
        if (source is not None and source != "import" and source not in configured
                and not store.iter_suppressions(source=source, count=True).fetchone()[0]):
            raise InputError(f"--source {source!r} is not a configured adapter, 'import', or the source of any "
                             f"stored opt-out (configured: {', '.join(configured) or 'none'})")
        writer.writerow(EXPORT_HEADER)
        # One statement is one read snapshot, so the rows counted are the rows written.
        return _write_rows(writer, out, store.iter_suppressions(**filters), len(EXPORT_HEADER))


# Rows per chunk: enough to make the per-chunk Python code negligible, few enough that a
# chunk is freed before the cyclic garbage collector scans it (from about 5,000 it does).
_EXPORT_CHUNK = 1_000


def _write_rows(writer, out: TextIO, rows: Iterator[tuple], width: int) -> int:
    """Write `rows` to `out` exactly as `writer` (csv.writer on `out`, "," and "\\n") would; the count.

    A chunk whose cells are all text with nothing csv would quote is joined in C
    (",".join per row, one write per chunk), with no Python code per row; any other
    chunk (NULL cells, commas, quotes, line breaks) goes through csv.writer.
    """
    written = 0
    while chunk := list(islice(rows, _EXPORT_CHUNK)):
        written += len(chunk)
        try:
            text = "\n".join(map(",".join, chunk)) + "\n"
        except TypeError:  # a NULL (or non-text) cell: csv.writer writes it
            writer.writerows(chunk)
            continue
        # Only our own separators, and no quote or CR (which some Python versions quote):
        # then no cell needed quoting, and the text is byte for byte what csv.writer writes.
        if (text.count(",") == (width - 1) * len(chunk) and text.count("\n") == len(chunk)
                and '"' not in text and "\r" not in text):
            out.write(text)
        else:
            writer.writerows(chunk)
    return written


# -- history ---------------------------------------------------------------------


@dataclass
class HistoryLine:
    """One event of an address's history, in words and as data."""

    seq: int
    at: str
    what: str
    data: dict = field(default_factory=dict)


def history(settings: Settings, address: str) -> tuple[str, list[HistoryLine]]:
    """Every event of one address, oldest first (the address is normalised as the store does)."""
    try:
        normalised = normalise_address(address)
    except InvalidAddress as exc:
        raise InputError(f"{address!r} is not a valid address: {exc}") from None
    with open_store(settings) as store:
        events = store.events_for(normalised)
    return normalised, [HistoryLine(e["seq"], e["recorded_at"], describe_event(e), _event_data(e)) for e in events]


def describe_event(event: dict) -> str:
    """A sentence for one event."""
    kind, scope = event["kind"], event["scope"]
    scope_text = "all email" if scope == GLOBAL_SCOPE else f"topic {scope}"
    basis = ""
    if event.get("legal_basis"):
        basis = f"; legal basis {event['legal_basis']}"
    if event.get("explanation"):
        basis += f"; explanation: {event['explanation']}"
    if kind == "suppressed":
        return (f"suppressed from {scope_text}: {event['reason']} by {event['origin']}, from {event['source']}"
                f"{', happened ' + event['occurred_at'] if event.get('occurred_at') else ''}{basis}")
    if kind == "changed":
        return f"reason changed to {event['reason']} by {event['origin']} ({scope_text}), seen at {event['source']}; {event['message']}"
    if kind == "applied":
        return f"applied to {event['target']} ({scope_text}){': ' + event['message'] if event.get('message') else ''}"
    if kind == "failed":
        return f"failed at {event['target']} ({scope_text}): {event['message']}"
    if kind == "skipped":
        return f"skipped at {event['target']}: {event['message']}"
    if kind == "lifted":
        return f"lifted ({scope_text}), {event['message']}{basis}"
    if kind == "removed":
        return f"removed at {event['target']} after the lift ({scope_text}): {event['message'] or 'ok'}"
    if kind == "remove_failed":
        return f"removal at {event['target']} failed ({scope_text}): {event['message']}"
    if kind == "failure_dismissed":
        failure_id = json.loads(event["details"] or "{}").get("failure_id")
        return f"failure #{failure_id} at {event['target']} dismissed: {event['message']}"
    if kind == "observed":
        return f"seen at {event['source']} ({scope_text}): {event['message']}"
    if kind == "resubscribed":
        evidence = {k: v for k, v in json.loads(event["details"] or "{}").items()
                    if k != "resubscribe_by" and v not in (None, "")}
        return (f"re-subscribed at {event['source']} by the {event['origin']} ({scope_text}), happened "
                f"{event['occurred_at']}; {event['message'].split('; ', 1)[-1]}; evidence: "
                + ", ".join(f"{k}={v}" for k, v in sorted(evidence.items())))
    if kind == "release_ended":
        return f"release at {event['target']} ended ({scope_text}): {event['message']}"
    return f"{kind} ({scope_text}){': ' + event['message'] if event.get('message') else ''}"


def _event_data(event: dict) -> dict:
    data = {key: value for key, value in event.items() if value is not None}
    if "details" in data:
        data["details"] = json.loads(data["details"])
    return data


# -- lift ------------------------------------------------------------------------


@dataclass
class LiftOutcome:
    """What a lift did: the row removed, where it still is, and per-adapter removals."""

    address: str
    scope: str
    removed_row: dict
    source: str | None
    applied_at: list[str]
    propagated: dict[str, str] = field(default_factory=dict)


def lift(settings: Settings, address: str, *, scope: str, legal_basis: str, explanation: str,
         propagate: bool = False) -> LiftOutcome:
    """Lift one user-made opt-out; with `propagate`, remove it where this daemon had applied it."""
    try:
        normalised = normalise_address(address)
    except InvalidAddress as exc:
        raise InputError(f"{address!r} is not a valid address: {exc}") from None
    scope = check_scope(settings, scope)
    with open_store(settings) as store:
        row = lift_in_store(store, normalised, scope, legal_basis, explanation, by=who())
        source, applied_at = holders(store, normalised, scope)
        outcome = LiftOutcome(normalised, scope, row, source, applied_at)
        if not propagate:
            return outcome
        configured = {a.name for a in settings.adapters}
        for name in applied_at:
            if name not in configured:
                outcome.propagated[name] = "not configured any more; remove it there by hand"
                continue
            adapter = build_adapters(settings, [name])[name]
            try:
                if not adapter.capabilities.remove:
                    outcome.propagated[name] = "this adapter cannot remove suppressions; remove it there by hand"
                    continue
                result = adapter.remove([OptOut(normalised, scope, row["reason"], row["origin"])])[0]
                message = result.message or ("removed" if result.outcome == "applied" else "was not there")
                outcome.propagated[name] = message if result.ok else f"failed: {message}"
                record_removal(store, normalised, scope, name, result.ok, message)
            except (OptOutSyncError, OSError) as exc:  # recorded; the other sinks still get the removal
                outcome.propagated[name] = f"failed: {type(exc).__name__}: {exc}"
                record_removal(store, normalised, scope, name, False, f"{type(exc).__name__}: {exc}")
            finally:
                adapter.close()
    return outcome

