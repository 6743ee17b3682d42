"""Reading CSV records from a byte offset, so a file can be followed as it grows.

A record ends at a newline outside quotes (an even number of quote characters
so far), which lets us resume exactly where the last complete record ended.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

DELIMITERS = (",", ";", "\t")


@dataclass(slots=True, frozen=True)
class RawRecord:
    """One CSV record: its fields, its 1-based record number, and the byte offset after it."""

    number: int
    fields: list[str]
    end_offset: int
    undecodable: bool = False


def decode(data: bytes) -> tuple[str, bool]:
    """UTF-8 (BOM dropped), else Windows-1252; the flag says the fallback was used."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace"), True


def sniff_delimiter(header_line: str) -> str:
    """The delimiter among comma, semicolon and tab that the header line uses most (comma on a tie)."""
    outside, quoted = [], False
    for ch in header_line:
        if ch == '"':
            quoted = not quoted
        elif not quoted:
            outside.append(ch)
    text = "".join(outside)
    counts = {d: text.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","


def read_records(handle: BinaryIO, start_offset: int, first_number: int, delimiter: str,
                 take_unterminated: bool) -> Iterator[RawRecord]:
    """Yield complete records from `start_offset` on; blank lines are skipped.

    A last record without a line end is taken only when `take_unterminated`
    (the file has settled), since it may still be being written.
    """
    handle.seek(start_offset)
    offset = start_offset
    number = first_number
    pending = b""
    quotes = 0
    for line in handle:
        pending += line
        quotes += line.count(b'"')
        complete = line.endswith(b"\n")
        if not complete and not take_unterminated:
            return
        if quotes % 2 and complete:
            continue  # a newline inside a quoted field: the record goes on
        if quotes % 2 and not take_unterminated:
            return
        offset += len(pending)
        text, fallback = decode(pending)
        pending, quotes = b"", 0
        number += 1
        if not text.strip():
            continue  # blank rows still count, so row numbers match a spreadsheet's
        fields = next(csv.reader([text.rstrip("\r\n")], delimiter=delimiter, strict=False), [])
        yield RawRecord(number - 1, fields, offset, fallback)
