"""`csv_file`: a sink that keeps one CSV of every suppression it was given.

A batch is appended to the end of the file (its rows sorted among themselves),
so a push costs time in proportion to what it writes, not to the size of the
file. Crash safety: before the append, a marker file beside it records where
the file ended (fsynced); the append is fsynced and only then is the marker
removed. A marker found later means an append was cut short: the file is cut
back to the recorded end before anything else happens, and the store, which
records a batch only after `apply` returns, sends that batch again. A removal
(the audited lift) rewrites the file atomically (a temporary file beside it,
fsync, rename). Appends and rewrites lock the file, so a lift in another
process and the daemon's push never lose each other's rows.

Which (address, scope) keys the file holds is kept as 64-bit hashes
(`held_keys.HeldKeys`): sorted in a private, nameless temporary file beside the
file (looked up with pread: page cache, not memory), the latest appends in
memory up to a fixed bound, so memory does not grow with the file. A key whose
hash is absent is new; the few whose hash is present are confirmed against the
file itself before being called "already held", so a hash collision can never
keep a row out of the file. The index is a cache of the file: it is dropped
whenever the file's device, inode, size or mtime differ from what this
process's last write left, and rebuilt from the file.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import Field

from state.addresses import InvalidAddress, normalise_address
from state.models import ALREADY, APPLIED, GLOBAL_SCOPE, ORIGINS, REASONS, ApplyResult, OptOut, Page, Rejected

from .base import AdapterSettings, Capabilities, SettingsPath
from .held_keys import MASK, HeldKeys, IndexDamaged

HEADER = ["email", "scope", "reason", "origin", "occurred_at"]


class CsvFileSettings(AdapterSettings):
    """Settings of a `csv_file` sink."""

    type: Literal["csv_file"] = "csv_file"
    role: Literal["write"] = "write"
    path: SettingsPath = Field(description="The CSV file to keep (relative to the settings file).",
                               examples=["suppression-list.csv"])
    scope: str | None = None  # one topic key: keep only it (and all-email); None: every scope
    batch_size: int = Field(default=10_000, ge=1, le=1_000_000)
    page_size: int = Field(default=5000, ge=1, le=100_000)


def key_hash(address: str, scope: str) -> int:
    """The hash of one (address, scope) key, as an unsigned 64-bit number.

    This process's string hashing (several times faster than a stable digest); the index is private
    to the process that built it, so the hashes need not agree between processes.
    """
    return hash((address, scope)) & MASK


class CsvFileAdapter:
    """Appends suppressions to one CSV file, crash-safely; removes them with an atomic rewrite."""

    settings_model = CsvFileSettings

    def __init__(self, settings: CsvFileSettings, topics: dict[str, str]):
        self.settings = settings
        self.name = settings.name
        if settings.scope is not None and settings.scope not in topics and settings.scope != GLOBAL_SCOPE:
            raise ValueError(f"scope {settings.scope!r} is not a defined topic")
        scopes = set(topics) if settings.scope is None else ({settings.scope} - {GLOBAL_SCOPE})
        self.capabilities = Capabilities(read_changes=False, read_all=True, write=True, remove=True,
                                         batch_size=settings.batch_size, scopes=frozenset(scopes))
        self._swept = False
        self._index: HeldKeys | None = None
        self._stamp: tuple[int, int, int, int] | None = None  # the file as our last write left it
        self._read_once = False  # an apply without an index has read the file once since it was (re)loaded

    def read_changes(self, cursor: str | None) -> Iterator[Page]:
        raise TypeError(f"adapter {self.name!r} (csv_file) is a sink; it has no changes to read")

    def read_all(self) -> Iterator[Page]:
        """The file's rows as opt-outs, in pages; malformed rows are listed as rejected."""
        page, size, parse = Page(), self.settings.page_size, self._parse
        for number, row in self._rows():
            item = parse(number, row)
            (page.optouts if type(item) is OptOut else page.rejected).append(item)
            if len(page.optouts) + len(page.rejected) >= size:
                yield page
                page = Page()
        if page.optouts or page.rejected:
            yield page

    def apply(self, batch: list[OptOut]) -> list[ApplyResult]:
        """Append the batch's new keys to the file; a key already there is a success ("already")."""
        path = self.settings.path
        if not path.exists():
            self._rewrite([], remove=True)  # the header, atomically
        with self._locked_file() as fd:
            self._cut_torn_append(fd)
            index = self._index_for(fd)
            wanted = {(o.address, o.scope): o for o in batch}
            hashes = {key: key_hash(*key) for key in wanted}
            maybe = self._maybe_held(index, hashes) if index is not None else None
            if maybe is None:
                present = self._confirm_held(set(wanted))   # one exact read of the file, no index (yet)
            else:
                present = self._confirm_held(maybe) if maybe else set()
            new = sorted(key for key in wanted if key not in present)
            if new:
                buffer = io.StringIO()
                writerow = csv.writer(buffer, lineterminator="\n").writerow
                end = os.fstat(fd).st_size
                if end and os.pread(fd, 1, end - 1) != b"\n":
                    writerow([])  # a hand-edited last row without its line end keeps its own line
                for key in new:
                    writerow(_row(wanted[key]))
                self._append_durably(fd, end, buffer.getvalue().encode("utf-8"))
                if self._index is not None:
                    try:
                        self._index.add(hashes[key] for key in new)
                    except (OSError, IndexDamaged):
                        self._drop_index()  # rebuilt from the file when next needed
            self._remember(fd)
        return [ApplyResult(o, ALREADY if (o.address, o.scope) in present else APPLIED) for o in batch]

    def remove(self, batch: list[OptOut]) -> list[ApplyResult]:
        """Drop the batch's (address, scope) rows from the file (the audited lift only)."""
        return self._rewrite(batch, remove=True)

    def prepare(self) -> None:
        """Before a push: sweep this sink's stale temporary files (once), and create the file if missing.

        The file exists, with its header, from the first cycle on, so a reader finds
        it even before any opt-out has arrived.
        """
        if not self._swept:
            self._sweep_temporaries()
            self._swept = True
        if not self.settings.path.exists():
            self._rewrite([], remove=True)

    def check(self) -> list[str]:
        """Say where the file is and whether its folder can be written."""
        folder = self.settings.path.parent
        if folder.exists() and not os.access(folder, os.W_OK):
            raise PermissionError(f"folder {folder} is not writable")
        state = "exists" if self.settings.path.exists() else "will be created"
        return [f"file {self.settings.path} {state}"]

    def close(self) -> None:
        """Close the key index's private file (it has no name, so nothing is left behind)."""
        self._drop_index()

    # -- internals ---------------------------------------------------------------

    def _sweep_temporaries(self) -> list[Path]:
        """Remove the temporary files a killed rewrite of this sink left; the paths removed.

        Only names this sink gives its own (`.<file name>.<8 characters>.tmp` beside
        the file) are candidates, and one still locked by a running rewrite stays.
        """
        path = self.settings.path
        own = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")
        if not path.parent.is_dir():
            return []
        removed = []
        for candidate in path.parent.iterdir():
            if not own.fullmatch(candidate.name) or candidate.is_symlink() or not candidate.is_file():
                continue
            try:
                fd = os.open(candidate, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                candidate.unlink()
                removed.append(candidate)
            except (BlockingIOError, FileNotFoundError):
                pass  # a rewrite in progress (another process, such as a lift), or already gone
            finally:
                os.close(fd)
        return removed

    @property
    def _marker(self) -> Path:
        """Where an append in progress records the file's previous end."""
        path = self.settings.path
        return path.with_name(f".{path.name}.append")

    def _locked_file(self):
        """The file, open for writing and exclusively locked; reopened if a rewrite replaced it meanwhile."""
        adapter = self

        class _Locked:
            def __enter__(self) -> int:
                path = adapter.settings.path
                while True:
                    fd = os.open(path, os.O_RDWR)
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    try:
                        if os.stat(path).st_ino == os.fstat(fd).st_ino:
                            self.fd = fd
                            return fd
                    except FileNotFoundError:
                        pass
                    os.close(fd)  # renamed over while we waited: lock the new file

            def __exit__(self, *exc_info) -> None:
                os.close(self.fd)

        return _Locked()

    def _cut_torn_append(self, fd: int) -> None:
        """Cut the file back to where an append that did not finish began (its marker says where)."""
        end = self._torn_end()
        if end is None:
            return
        if 0 <= end < os.fstat(fd).st_size:
            os.ftruncate(fd, end)
            os.fsync(fd)
        self._marker.unlink(missing_ok=True)
        self._drop_index()

    def _torn_end(self) -> int | None:
        try:
            text = self._marker.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            text = ""
        if not text.isdigit():
            # A marker written only in part: its own write was cut short, so the file was not touched.
            return -1
        return int(text)

    def _append_durably(self, fd: int, end: int, data: bytes) -> None:
        marker = self._marker
        with open(marker, "w", encoding="ascii") as handle:
            handle.write(f"{end}\n")
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_folder(marker.parent)
        written = 0
        while written < len(data):
            written += os.pwrite(fd, data[written:], end + written)
        os.fsync(fd)
        marker.unlink()

    def _index_for(self, fd: int) -> HeldKeys | None:
        """The key index; None for the first apply after the file was (re)loaded, built at the second.

        One batch (a reconcile's re-apply, say) is checked by one exact read of the file, which
        costs less than building the index; a push of many batches builds it once. An index whose
        file no longer matches (changed by another writer since our last write) is dropped.
        """
        if self._index is not None and self._stamp == _stamp(fd):
            return self._index
        self._drop_index(read_once=self._read_once)
        if not self._read_once:
            self._read_once = True
            return None
        try:
            self._index = HeldKeys(self.settings.path.parent, (
                key_hash(row[0], row[1] if len(row) > 1 and row[1] else GLOBAL_SCOPE) for _, row in self._rows()))
        except (OSError, IndexDamaged):
            return None  # no room for the index: this batch is checked by an exact read of the file
        return self._index

    def _maybe_held(self, index: HeldKeys, hashes: dict[tuple[str, str], int]) -> set[tuple[str, str]] | None:
        """The keys whose hash the index holds; None if its private file was found damaged (then dropped)."""
        try:
            found = index.held(hashes.values())
        except (OSError, IndexDamaged):
            self._drop_index(read_once=True)  # the next apply rebuilds it
            return None
        return {key for key, value in hashes.items() if value in found}

    def _drop_index(self, read_once: bool = False) -> None:
        """Forget the key index (closing its private file); the next apply reads the file once, then rebuilds.

        `read_once`: the file was read once already since it was loaded, so the next apply rebuilds.
        """
        if self._index is not None:
            self._index.close()
        self._index, self._read_once = None, read_once

    def _remember(self, fd: int) -> None:
        self._stamp = _stamp(fd)

    def _confirm_held(self, keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
        """Of keys whose hash the index holds, those the file really holds (one read of the file)."""
        held = set()
        for _, row in self._rows():
            key = (row[0], row[1] if len(row) > 1 and row[1] else GLOBAL_SCOPE)
            if key in keys:
                held.add(key)
                if len(held) == len(keys):
                    break
        return held

    def _rows(self) -> Iterator[tuple[int, list[str]]]:
        path = self.settings.path
        if not path.exists():
            return
        end = self._torn_end()
        with path.open("rb") as raw:
            # An append cut short is not part of the file: read only up to where it began.
            lines = _bounded_lines(raw, end) if end is not None and end >= 0 else io.TextIOWrapper(
                raw, encoding="utf-8", newline="")
            reader = csv.reader(lines)
            next(reader, None)
            for number, row in enumerate(reader, start=2):
                if row:
                    yield number, row

    def _parse(self, number: int, row: list[str]) -> OptOut | Rejected:
        # Runs once per row of a full read: the row's location is spelled out only for a rejection.
        email, count = row[0], len(row)
        try:
            address = normalise_address(email)
        except InvalidAddress as exc:
            return Rejected(f"{self.settings.path.name} row {number}", email, f"invalid address {email!r}: {exc}")
        scope = row[1] if count > 1 and row[1] else GLOBAL_SCOPE
        reason = row[2] if count > 2 and row[2] in REASONS else "manual"
        origin = row[3] if count > 3 and row[3] in ORIGINS else "user"
        return OptOut(address, scope, reason, origin, row[4] if count > 4 and row[4] else None)

    def _rewrite(self, batch: list[OptOut], remove: bool) -> list[ApplyResult]:
        if self.settings.path.exists():
            with self._locked_file() as fd:
                self._cut_torn_append(fd)
                results = self._rewrite_unlocked(batch, remove)
                self._drop_index()  # the keys changed; the next appends reload
                return results
        return self._rewrite_unlocked(batch, remove)

    def _rewrite_unlocked(self, batch: list[OptOut], remove: bool) -> list[ApplyResult]:
        wanted = {(o.address, o.scope): o for o in batch}
        present: set[tuple[str, str]] = set()
        # The sorted batch is merged into the sorted file in one pass: an incoming row is written
        # just before the first file row that sorts after it; a key already in the file is kept once.
        incoming = [] if remove else sorted(wanted)
        position, pending = 0, len(incoming)
        path = self.settings.path
        path.parent.mkdir(parents=True, exist_ok=True)
        # The name is one _sweep_temporaries knows as this sink's; the lock tells it the rewrite is alive.
        fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        held = os.dup(fd)  # holds the lock (shared by both descriptors) until the rename is done
        try:
            fcntl.flock(held, fcntl.LOCK_EX)
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as out:
                writer = csv.writer(out, lineterminator="\n")
                writerow = writer.writerow
                writerow(HEADER)
                last_key = None
                for _, row in self._rows():
                    key = (row[0], row[1] if len(row) > 1 and row[1] else GLOBAL_SCOPE)
                    while position < pending and incoming[position] <= key:
                        here = incoming[position]
                        if here == key or here == last_key:
                            present.add(here)  # the file holds it already
                        else:
                            writerow(_row(wanted[here]))
                            last_key = here
                        position += 1
                    if key == last_key or (remove and key in wanted):
                        present.add(key)
                        continue
                    writerow(row)
                    last_key = key
                for key in incoming[position:]:
                    writerow(_row(wanted[key]))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp_name, path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        finally:
            os.close(held)
        if remove:
            return [ApplyResult(o, APPLIED if (o.address, o.scope) in present else ALREADY) for o in batch]
        return [ApplyResult(o, ALREADY if (o.address, o.scope) in present else APPLIED) for o in batch]


def _stamp(fd: int) -> tuple[int, int, int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _bounded_lines(raw, limit: int) -> Iterator[str]:
    """The text lines of a binary file up to byte `limit` (only after a cut-short append)."""
    taken = 0
    for line in raw:
        if taken + len(line) > limit:
            line = line[:limit - taken]
        taken += len(line)
        if line:
            yield line.decode("utf-8")
        if taken >= limit:
            return


def _row(optout: OptOut) -> list[str]:
    return [optout.address, optout.scope, optout.reason, optout.origin, optout.occurred_at or ""]
