"""`csv_folder`: a source that watches a folder for CSV files of opt-outs.

New files and rows appended to known files are read incrementally: the cursor
holds, per file, its identity (device, inode, a hash of its first bytes) and
the byte offset after the last complete record. A rewritten file is read
again from the start; the store makes the repeats harmless.

A last line without its line end is read once the file has been unchanged for
`settle_seconds`, but the offset never passes it: should the writer only have
paused, the completed line is read again, and the unfinished reading is listed
as a failure so that a person can check it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Literal

from pydantic import Field

from state.addresses import InvalidAddress, normalise_address
from state.models import GLOBAL_SCOPE, ORIGINS, REASONS, ApplyResult, OptOut, Page, Rejected, to_utc_iso

from .base import AdapterSettings, Capabilities, SettingsPath
from .csv_records import decode, read_batches, sniff_delimiter

EMAIL_HEADERS = ("email", "e-mail", "email address", "e-mail address", "email_address", "emailaddress",
                 "mail", "address")
HEAD_BYTES = 1024
ORIGIN_MEANINGS = {
    "recipient": "the person's own unsubscribe, never liftable",
    "user": "an operator's list, liftable with optout-sync lift",
    "system": "a bounce or complaint a system reported, never liftable",
}


class CsvFolderSettings(AdapterSettings):
    """Settings of a `csv_folder` source."""

    type: Literal["csv_folder"] = "csv_folder"
    role: Literal["read"] = "read"
    path: SettingsPath = Field(
        description="The folder to watch for *.csv opt-out lists (relative to the settings file).", examples=["inbox"])
    pattern: str = "*.csv"
    email_column: str | None = None
    scope_column: str = "scope"
    reason_column: str = "reason"
    origin_column: str = "origin"
    occurred_at_column: str = "occurred_at"
    default_reason: Literal["unsubscribed", "hard_bounce", "spam_complaint", "manual", "imported"] = "imported"
    default_origin: Literal["recipient", "user", "system"] = "user"
    page_size: int = Field(default=5000, ge=1, le=100_000)
    settle_seconds: float = Field(default=2.0, ge=0)


@dataclass(slots=True)
class _FileState:
    dev: int
    ino: int
    head_len: int
    head_hash: str
    offset: int
    next_row: int
    delimiter: str
    columns: list[str]
    tail_hash: str = ""
    mtime_ns: int = 0
    blocked: bool = False  # the header names no email column: wait for a change
    partial_len: int = 0   # bytes after `offset`: a last line without its line end, already read
    partial_hash: str = ""


@dataclass(slots=True)
class _Columns:
    email: int
    scope: int | None
    reason: int | None
    origin: int | None
    occurred_at: int | None


class CsvFolderAdapter:
    """Reads opt-outs from every CSV file in a folder, following files as they grow."""

    settings_model = CsvFolderSettings

    def __init__(self, settings: CsvFolderSettings, topics: dict[str, str]):
        self.settings = settings
        self.name = settings.name
        self.topics = topics
        self.capabilities = Capabilities(read_changes=True, read_all=True, write=False,
                                         batch_size=settings.page_size, scopes=frozenset(topics))

    # -- the Adapter protocol --------------------------------------------------

    def read_changes(self, cursor: str | None) -> Iterator[Page]:
        """Pages of rows not read before; each page's cursor covers every file read so far."""
        known = _load_cursor(cursor)
        seen: dict[str, _FileState] = {}
        page = Page()
        for path in self._files():
            relative = path.name
            state = self._resume_state(path, known.get(relative))
            if state is None:
                continue
            for items in self._read_file(path, state):
                seen[relative] = state
                while items:
                    room = self.settings.page_size - len(page.optouts) - len(page.rejected)
                    for item in items[:room]:
                        (page.optouts if type(item) is OptOut else page.rejected).append(item)
                    items = items[room:]
                    if len(page.optouts) + len(page.rejected) >= self.settings.page_size:
                        _seal(state, path)
                        page.cursor = _dump_cursor({**known, **seen})
                        yield page
                        page = Page()
            seen[relative] = _seal(state, path)
        present = {p.name for p in self._files()}
        merged = {name: st for name, st in {**known, **seen}.items() if name in present}
        page.cursor = _dump_cursor(merged)
        if page.optouts or page.rejected or page.cursor != cursor:
            yield page

    def read_all(self) -> Iterator[Page]:
        """Every row of every file, from the start."""
        for page in self.read_changes(None):
            page.cursor = None
            yield page

    def apply(self, batch: list[OptOut]) -> list[ApplyResult]:
        raise TypeError(f"adapter {self.name!r} (csv_folder) is read-only")

    def remove(self, batch: list[OptOut]) -> list[ApplyResult]:
        raise TypeError(f"adapter {self.name!r} (csv_folder) is read-only")

    def check(self) -> list[str]:
        """Say whether the folder exists and how many files match."""
        folder = self.settings.path
        origin = self.settings.default_origin
        # Said at every check, so that the operator chooses who made a list's opt-outs knowingly.
        origin_line = (f"rows without an origin are taken as origin {origin!r} ({ORIGIN_MEANINGS[origin]}); "
                       "set default_origin to change it")
        if not folder.is_dir():
            return [f"folder {folder} does not exist yet; it will be watched once created", origin_line]
        return [f"folder {folder}: {len(self._files())} file(s) matching {self.settings.pattern}", origin_line]

    def close(self) -> None:
        """Nothing is held open between calls."""

    # -- reading ---------------------------------------------------------------

    def _files(self) -> list[Path]:
        folder = self.settings.path
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.glob(self.settings.pattern)
                      if p.is_file() and not p.name.startswith((".", "~$")))

    def _resume_state(self, path: Path, known: _FileState | None) -> _FileState | None:
        """Where to go on reading a file: its saved state, or a fresh one if it is new or rewritten."""
        stat = path.stat()
        if known is not None and (known.dev, known.ino) == (stat.st_dev, stat.st_ino):
            if known.blocked:
                if stat.st_mtime_ns == known.mtime_ns and self._columns(known.columns) is None:
                    return None
            elif stat.st_size >= known.offset and (
                    stat.st_mtime_ns == known.mtime_ns
                    or (_head_hash(path, known.head_len) == known.head_hash
                        and _tail_hash(path, known.offset) == known.tail_hash)):
                # Unchanged before the offset: only appended rows are new.
                touched, known.mtime_ns = stat.st_mtime_ns != known.mtime_ns, stat.st_mtime_ns
                if (known.partial_len and stat.st_size == known.offset + known.partial_len
                        and (not touched or _range_hash(path, known.offset, known.partial_len) == known.partial_hash)):
                    return None  # only the unfinished last line, already read and unchanged
                return known if stat.st_size > known.offset else None
        return _FileState(stat.st_dev, stat.st_ino, 0, "", 0, 1, ",", [], mtime_ns=stat.st_mtime_ns)

    def _read_file(self, path: Path, state: _FileState) -> Iterator[list[OptOut | Rejected]]:
        """The file's items, one list per batch of records, yielded before its offset is advanced."""
        settled = time.time() - path.stat().st_mtime >= self.settings.settle_seconds
        name = path.name
        with path.open("rb") as handle:
            if state.offset == 0:
                # At the start of the file its first record is the header, whatever the state
                # holds: a page cut inside the first batch saves the columns with offset 0.
                state.columns = []
                first = handle.readline()
                header_text, _ = decode(first)
                state.delimiter = sniff_delimiter(header_text)
            columns = None
            unfinished = _unfinished_line(handle, state) if state.partial_len else None
            for batch in read_batches(handle, state.offset, state.next_row, state.delimiter, settled):
                records = batch.records
                # The first non-blank record is the header, even after blank lines (blank
                # records are not yielded, so row 1 is not always there to be the header).
                if records and not state.columns:
                    number, fields = records[0]
                    state.columns = [c.strip().lower() for c in fields]
                    problem = self._header_problem(state.columns)
                    if problem:
                        # Reported once; nothing of the file is consumed, so fixing the
                        # settings or the file has it read in full.
                        state.blocked = True
                        yield [Rejected(f"{name} row {number}", ",".join(fields), problem)]
                        return
                    state.blocked = False
                    records = records[1:]
                notes: list[OptOut | Rejected] = []
                if unfinished is not None:  # the first batch starts with the line read unfinished
                    records, notes = self._after_unfinished(name, state.next_row, records, unfinished)
                    state.partial_len, state.partial_hash, unfinished = 0, "", None
                if records or notes:
                    columns = columns or self._columns(state.columns)
                    row = self._row
                    yield notes + [row(f"{name} row {number}", fields, columns) for number, fields in records]
                if batch.complete:
                    # Offsets are known per batch: a page cut inside one is re-read after a crash (harmless).
                    _advance(state, batch.end_offset, batch.next_number)
                elif records:
                    # A last line without its line end: read, but not passed, so that a writer who only
                    # paused has the completed line read again.
                    state.partial_len = batch.end_offset - state.offset
                    state.partial_hash = _range_hash(path, state.offset, state.partial_len)

    def _after_unfinished(self, name: str, number: int, records: list[tuple[int, list[str]]],
                          unfinished: tuple[bool, str]) -> tuple[list[tuple[int, list[str]]], list[Rejected]]:
        """The records after a line read unfinished, and a note when that line has changed since.

        `unfinished` is (only its line end was added, the text it had when it was read); in the
        first case the row is not read twice.
        """
        ended, text = unfinished
        if ended:
            return [r for r in records if r[0] != number], []
        return records, [Rejected(
            f"{name} row {number}", text,
            f"this row was read unfinished as {text!r} (no line end, file unchanged for "
            f"{self.settings.settle_seconds:g} s) and is read again now that it changed; check the "
            "unfinished reading with 'optout-sync history' and lift it if it is not a real opt-out")]

    def _header_problem(self, header: list[str]) -> str | None:
        if self._columns(header) is not None:
            return None
        wanted = self.settings.email_column or " or ".join(repr(h) for h in EMAIL_HEADERS[:4])
        return f"no email column {wanted} in header {header}; set email_column for this adapter"

    def _columns(self, header: list[str]) -> _Columns | None:
        def find(name: str | None) -> int | None:
            if name is None:
                return None
            name = name.strip().lower()
            return header.index(name) if name in header else None

        if self.settings.email_column:
            email = find(self.settings.email_column)
        else:
            email = next((header.index(h) for h in EMAIL_HEADERS if h in header), None)
        if email is None:
            return None
        s = self.settings
        return _Columns(email, find(s.scope_column), find(s.reason_column), find(s.origin_column),
                        find(s.occurred_at_column))

    def _row(self, where: str, fields: list[str], columns: _Columns) -> OptOut | Rejected:
        # Runs once per row of every file: optional columns are looked at only where they exist.
        count = len(fields)
        if columns.email >= count:
            return Rejected(where, ",".join(fields),
                            f"row has {count} field(s); the email column is number {columns.email + 1}")
        raw = fields[columns.email]
        try:
            address = normalise_address(raw)
        except InvalidAddress as exc:
            return Rejected(where, raw, f"invalid address {raw.strip()!r}: {exc}")
        scope = _cell(fields, columns.scope, count) or GLOBAL_SCOPE
        if scope != GLOBAL_SCOPE:
            if scope.lower() == "all":
                scope = GLOBAL_SCOPE
            elif scope not in self.topics:
                return Rejected(where, raw,
                                f"unknown topic {scope!r}; defined topics: {sorted(self.topics) or 'none'}")
        reason = _cell(fields, columns.reason, count).lower() or self.settings.default_reason
        if reason not in REASONS:
            return Rejected(where, raw, f"unknown reason {reason!r}; expected one of {', '.join(REASONS)}")
        origin = _cell(fields, columns.origin, count).lower() or self.settings.default_origin
        if origin not in ORIGINS:
            return Rejected(where, raw, f"unknown origin {origin!r}; expected one of {', '.join(ORIGINS)}")
        occurred_text = _cell(fields, columns.occurred_at, count)
        occurred_at = None
        if occurred_text:
            try:
                occurred_at = parse_moment(occurred_text)
            except ValueError:
                return Rejected(where, raw, f"occurred_at {occurred_text!r} is not an ISO date or date-time")
        return OptOut(address, scope, reason, origin, occurred_at, {"file": where})


def _cell(fields: list[str], index: int | None, count: int) -> str:
    """A field stripped of white space, or "" where the column is absent or the row short."""
    return fields[index].strip() if index is not None and index < count else ""


def parse_moment(text: str) -> str:
    """An ISO-8601 date or date-time as the store's UTC text (a date means its midnight UTC)."""
    text = text.strip()
    if len(text) == 10:
        day = date.fromisoformat(text)
        return to_utc_iso(datetime(day.year, day.month, day.day))
    return to_utc_iso(datetime.fromisoformat(text.replace("Z", "+00:00")))


def _advance(state: _FileState, offset: int, next_row: int) -> None:
    state.offset = offset
    state.next_row = next_row


def _seal(state: _FileState, path: Path) -> _FileState:
    """Record the hashes that later tell an appended file from a rewritten one."""
    state.tail_hash = _tail_hash(path, state.offset)
    if state.head_len < HEAD_BYTES:
        state.head_len = min(HEAD_BYTES, state.offset)
        state.head_hash = _head_hash(path, state.head_len)
    return state


def _unfinished_line(handle, state: _FileState) -> tuple[bool, str]:
    """What became of the line read without its line end: (it only got its line end, its old text)."""
    handle.seek(state.offset)
    data = handle.read(state.partial_len + 2)
    head, rest = data[:state.partial_len], data[state.partial_len:]
    if hashlib.sha256(head).hexdigest() != state.partial_hash:
        return False, ""  # replaced: its old text is gone
    ended = (rest.startswith(b"\n") or rest.startswith(b"\r\n")) and head.count(b'"') % 2 == 0
    return ended, decode(head)[0].strip()


def _range_hash(path: Path, offset: int, length: int) -> str:
    with path.open("rb") as handle:
        handle.seek(offset)
        return hashlib.sha256(handle.read(length)).hexdigest()


def _head_hash(path: Path, length: int) -> str:
    with path.open("rb") as handle:
        return hashlib.sha256(handle.read(length)).hexdigest()


def _tail_hash(path: Path, offset: int) -> str:
    """Hash of the bytes just before `offset`, the last ones already read."""
    start = max(0, offset - HEAD_BYTES)
    with path.open("rb") as handle:
        handle.seek(start)
        return hashlib.sha256(handle.read(offset - start)).hexdigest()


def _load_cursor(cursor: str | None) -> dict[str, _FileState]:
    if not cursor:
        return {}
    return {name: _FileState(**fields) for name, fields in json.loads(cursor).get("files", {}).items()}


def _dump_cursor(files: dict[str, _FileState]) -> str:
    return json.dumps({"files": {name: {
        "dev": st.dev, "ino": st.ino, "head_len": st.head_len, "head_hash": st.head_hash,
        "offset": st.offset, "next_row": st.next_row, "delimiter": st.delimiter, "columns": st.columns,
        "tail_hash": st.tail_hash, "mtime_ns": st.mtime_ns, "blocked": st.blocked,
        "partial_len": st.partial_len, "partial_hash": st.partial_hash,
    } for name, st in sorted(files.items())}}, separators=(",", ":"))

