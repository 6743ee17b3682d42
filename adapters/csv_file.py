"""`csv_file`: a sink that keeps one CSV of every suppression it was given.

The file is sorted by address and scope, and every change rewrites it
atomically (write a temporary file beside it, fsync, rename), merging the
sorted batch into the sorted file as a stream, so a reader never sees half a
file and memory holds only the batch.
"""

from __future__ import annotations

import csv
import fcntl
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

HEADER = ["email", "scope", "reason", "origin", "occurred_at"]


class CsvFileSettings(AdapterSettings):
    """Settings of a `csv_file` sink."""

    type: Literal["csv_file"] = "csv_file"
    role: Literal["write"] = "write"
    path: SettingsPath = Field(description="The CSV file to keep (relative to the settings file).",
                               examples=["suppression-list.csv"])
    scope: str | None = None  # one topic key: keep only it (and all-email); None: every scope
    batch_size: int = Field(default=50_000, ge=1, le=1_000_000)
    page_size: int = Field(default=5000, ge=1, le=100_000)


class CsvFileAdapter:
    """Writes suppressions into one sorted CSV file, atomically."""

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
        """Merge the batch into the file; an address already there is a success."""
        return self._rewrite(batch, remove=False)

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
            self._rewrite([], remove=False)

    def check(self) -> list[str]:
        """Say where the file is and whether its folder can be written."""
        folder = self.settings.path.parent
        if folder.exists() and not os.access(folder, os.W_OK):
            raise PermissionError(f"folder {folder} is not writable")
        state = "exists" if self.settings.path.exists() else "will be created"
        return [f"file {self.settings.path} {state}"]

    def close(self) -> None:
        """Nothing is held open between calls."""

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

    def _rows(self) -> Iterator[tuple[int, list[str]]]:
        path = self.settings.path
        if not path.exists():
            return
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
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


def _row(optout: OptOut) -> list[str]:
    return [optout.address, optout.scope, optout.reason, optout.origin, optout.occurred_at or ""]
