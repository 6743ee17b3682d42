"""Reading CSV records from a byte offset, so a file can be followed as it grows.

A record ends at a newline outside quotes (an even number of quote characters
so far), which lets us resume exactly where the last complete record ended.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

DELIMITERS = (",", ";", "\t")


@dataclass(slots=True)
class RecordBatch:
    """Records read in one go: (row number, fields) each, and the byte offset after them.

    `complete` is False for a last record without its line end (taken because the file settled).
    """

    records: list[tuple[int, list[str]]]
    end_offset: int
    next_number: int
    complete: bool = True


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


def read_batches(handle: BinaryIO, start_offset: int, first_number: int, delimiter: str,
                 take_unterminated: bool, chunk_bytes: int = 256 * 1024) -> Iterator[RecordBatch]:
    """Yield batches of complete records from `start_offset` on; blank rows count but are not yielded.

    A last record without a line end is taken only when `take_unterminated` (the
    file has settled), since it may still be being written. Parsing a whole chunk
    with one csv reader keeps the per-row cost low; offsets are known per batch.
    """
    handle.seek(start_offset)
    offset, number, carry = start_offset, first_number, b""
    while True:
        data = handle.read(chunk_bytes)
        buffer = carry + data if carry else data
        if not buffer:
            return
        if data:
            cut = _record_boundary(buffer)
            if cut == 0:
                carry = buffer  # not one complete record yet: read on
                continue
        elif take_unterminated:
            cut = len(buffer)
        else:
            return
        piece, carry = buffer[:cut], buffer[cut:]
        text, _ = decode(piece)
        records = []
        for fields in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=False):
            if fields and (len(fields) > 1 or fields[0].strip()):
                records.append((number, fields))
            number += 1  # blank rows still count, so row numbers match a spreadsheet's
        offset += cut
        yield RecordBatch(records, offset, number, complete=bool(data))
        if not data:
            return


def _record_boundary(buffer: bytes) -> int:
    """The index just after the last newline that ends a record (outside quotes), or 0."""
    if b'"' not in buffer:
        return buffer.rfind(b"\n") + 1
    cut = position = quotes = 0
    for line in buffer.split(b"\n")[:-1]:
        quotes += line.count(b'"')
        position += len(line) + 1
        if quotes % 2 == 0:
            cut = position  # a newline inside a quoted field does not end the record
    return cut
