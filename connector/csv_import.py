"""Reading the opt-out lists people really have (CSV/TSV in any common encoding, or .xlsx) for `import`.

Sniffs encoding, delimiter, header row and address column from the start of the file, then streams
the chosen column row by row in bounded memory. It judges no address finally and never touches the store.
"""

from __future__ import annotations

import bisect
import codecs
import csv
import io
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import BinaryIO

from state.addresses import is_valid_address
from state.errors import InputError

SNIFF_BYTES = 64 * 1024      # encoding, delimiter and header are judged on this much of the file
SAMPLE_ROWS = 200            # data rows looked at to find the address column
MAX_LINE_BYTES = 1024 * 1024  # one physical line longer than this is not an opt-out list
XLSX_SUFFIXES = (".xlsx", ".xlsm")
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}

_CHUNK = 64 * 1024
_EOL = re.compile(rb"\r\n|\r|\n")
_SEPARATORS_ONLY = re.compile(r"[\s,;|]*")
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)?")
# UTF-8 is decoded with surrogateescape, which turns each byte that is not valid UTF-8 into one of
# these; decoded text never holds them otherwise, so they mark exactly the lines the fallback reads.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
# A line (one address cell of a chunk joined by newlines) with no @: the row is not ordinary.
_NO_AT_LINE = re.compile(r"^[^@\n]*$", re.MULTILINE)
# Records read at a time by the text reader; their ordinary rows come out as ImportBlocks.
BLOCK_ROWS = 2_000
# A single-column file has no delimiter; csv still needs one for its quote handling, so we use NUL
# and join the pieces back should a NUL ever turn up in the data.
_NO_DELIMITER = "\0"
_UNCLOSED_QUOTE = ("a quoted cell starts in this row and its closing quote is missing, "
                   "so the rest of the file would be one cell; fix the quoting")
_CHOOSE = "choose the one to import with --column NAME or --column NUMBER."
_ENCODING_NAMES = {
    "utf-8": "UTF-8", "utf-8-sig": "UTF-8 with BOM", "utf-16-le": "UTF-16 LE",
    "utf-16-be": "UTF-16 BE", "cp1252": "Windows-1252",
}

# (number, fields, decoded_by_fallback): one non-blank record as the csv module parsed it.
_Record = tuple[int, list[str], bool]


@dataclass(frozen=True, slots=True)
class ImportRow:
    """One data row of an import file: its spreadsheet row number and the cell of the address column.

    `raw` is the cell exactly as read (None when the row is too short to have it); `problem` says why
    the row cannot be used at all (too short, address undecodable), else None.
    """

    number: int
    raw: str | None
    problem: str | None


@dataclass(frozen=True, slots=True)
class ImportBlock:
    """Consecutive data rows whose address cells are plain ASCII with an @, read in one go.

    Row `first + i` has the cell `raws[i]` exactly as read and no problem: the same as an
    ImportRow(first + i, raws[i], None) for each, without an object per row.
    """

    first: int
    raws: list[str]


class ImportFile:
    """An opt-out list on disk, sniffed on construction and streamed by `rows()`.

    `encoding` is one of utf-8, utf-8-sig, utf-16-le, utf-16-be, cp1252, or "xlsx" for a workbook
    (whose first sheet is read). `delimiter` is None for a workbook or a file with a single column.
    `columns` are display names: the header cell, or "column N" when there is none. Every problem
    with the file or the `column` choice raises InputError naming the file.

    Encoding errors after the sniffed prefix: a UTF-8 file is decoded line by line, and a line that
    is not valid UTF-8 is read as Windows-1252 instead (the usual cause is a Windows-1252 file whose
    first accented letter comes late). Such a row is still used when its address cell is plain
    ASCII, since then the guess cannot change the address; otherwise it gets a `problem`, because
    opting out a guessed spelling is worse than asking the user to check the file.
    """

    def __init__(self, path: Path | str, column: str | int | None = None):
        self.path = Path(path)
        self._check_is_file()
        try:
            self.size = self.path.stat().st_size
        except OSError as exc:
            raise InputError(f"{self.path}: cannot be read ({exc.strerror or exc})") from None
        self._reading: _CountedFile | None = None  # the file rows() reads, for bytes_read
        self._read_all = False
        self._sheet: str | None = None
        self._sheets = 0
        if self.path.suffix.lower() in XLSX_SUFFIXES:
            self.encoding = "xlsx"
            self.delimiter: str | None = None
            self._bom = 0
            sample = self._xlsx_sample()
        else:
            sample = self._text_sample()
        if not sample:
            raise InputError(f"{self.path}: no rows to import (the file holds only blank lines)")
        self.has_header, self.column_index, self.columns = self._choose_column(sample, column)

    # ----------------------------------------------------------------- public

    def rows(self) -> Iterator[ImportRow]:
        """Every non-blank data row (not the header), in file order; each call reads the file afresh.

        Raises InputError (naming the file and row) when the file turns out unreadable further on:
        an unclosed quote, a line too long to be a row.
        """
        return _one_by_one(self.blocks())

    def blocks(self) -> Iterator[ImportRow | ImportBlock]:
        """rows(), in file order, with runs of ordinary rows given as ImportBlocks (for the import's fast path)."""
        self._reading, self._read_all = None, False
        return self._xlsx_rows() if self.encoding == "xlsx" else self._text_items()

    @property
    def bytes_read(self) -> int:
        """How far rows() has got, in bytes of the file on disk (for a progress bar against `size`).

        The bytes of the binary file read so far, whatever the encoding: a UTF-16 or Windows-1252
        file is decoded from them, a workbook unzipped. Reading runs ahead of the rows returned by
        at most one block (64 KiB for text). `size` once rows() has read the whole file; never more.
        """
        if self._read_all:
            return self.size
        return min(self._reading.consumed, self.size) if self._reading is not None else 0

    def describe(self) -> str:
        """One line saying how the file is being read, for the import preview."""
        if self.encoding == "xlsx":
            how = f"Excel workbook, sheet {self._sheet!r}"
            if self._sheets > 1:
                how += f" (first of {self._sheets})"
        else:
            how = _ENCODING_NAMES[self.encoding]
            how += f", {DELIMITERS[self.delimiter]}-separated" if self.delimiter else ", single column"
        header = "yes" if self.has_header else "no"
        name = self.columns[self.column_index]
        column = f"{self.column_index + 1}" + (f" ({name})" if self.has_header else "")
        return f"{how}, header row: {header}, address column: {column}"

    # ----------------------------------------------------------- file access

    def _check_is_file(self) -> None:
        try:
            if self.path.is_dir():
                raise InputError(f"{self.path} is a directory, not a file")
            if not self.path.exists():
                raise InputError(f"{self.path}: no such file")
            if not self.path.is_file():
                raise InputError(f"{self.path} is not a regular file")
        except OSError as exc:
            raise InputError(f"{self.path}: cannot be read ({exc.strerror or exc})") from None

    def _open(self) -> _CountedFile:
        try:
            return _CountedFile(self.path)
        except OSError as exc:
            raise InputError(f"{self.path}: cannot be read ({exc.strerror or exc})") from None

    # ---------------------------------------------------------- text files

    def _text_sample(self) -> list[_Record]:
        """Sniff encoding and delimiter from the start of the file; return the first records."""
        with self._open() as handle:
            try:
                prefix = handle.read(SNIFF_BYTES)
            except OSError as exc:
                raise InputError(f"{self.path}: cannot be read ({exc.strerror or exc})") from None
        self.encoding, self._bom = self._sniff_encoding(prefix)

        lines, chars = [], 0
        with self._open() as handle:
            try:
                for line in self._lines(handle):
                    lines.append(line)
                    chars += len(line[0])
                    if chars >= SNIFF_BYTES:
                        break
            except _LineTooLong:
                raise InputError(f"{self.path}: the first line is longer than {MAX_LINE_BYTES // 1024} KiB; "
                                 "this does not look like a list of addresses") from None
        text = "".join(line for line, _ in lines)
        controls = sum(1 for ch in text if ch < " " and ch not in "\t\r\n\f")
        # A stray control character or two (a DOS end-of-file mark) is no reason to refuse a file.
        if "\0" in text or controls > 2 + len(text) // 100:
            raise InputError(f"{self.path}: does not look like a text file (it contains control characters); "
                             "save the list as CSV or .xlsx")
        self.delimiter = _sniff_delimiter(lines)
        return _sample_records(lines, self.delimiter)

    def _sniff_encoding(self, prefix: bytes) -> tuple[str, int]:
        """The encoding and BOM length, judged from the first bytes of the file."""
        if not prefix:
            raise InputError(f"{self.path}: the file is empty")
        if prefix.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
            raise InputError(f"{self.path}: UTF-32 text is not supported; save the list as UTF-8 CSV")
        for bom, encoding in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16-le"),
                              (codecs.BOM_UTF16_BE, "utf-16-be")):
            if prefix.startswith(bom):
                if len(prefix) == len(bom):
                    raise InputError(f"{self.path}: the file is empty (only a byte-order mark)")
                return encoding, len(bom)
        if prefix.startswith(b"PK\x03\x04"):
            raise InputError(f"{self.path}: this is a zip archive, perhaps a spreadsheet (.xlsx, .ods); "
                             "save it as CSV, or give an Excel workbook a .xlsx name")
        if prefix.startswith(b"\xd0\xcf\x11\xe0"):
            raise InputError(f"{self.path}: this is an old Excel (.xls) workbook; save it as .xlsx or CSV")
        if b"\0" in prefix:
            raise InputError(f"{self.path}: contains NUL bytes, so it is binary or UTF-16 without a "
                             "byte-order mark; save the list as CSV (UTF-8) or .xlsx")
        try:
            # final=False: the prefix may end in the middle of a multi-byte character.
            codecs.getincrementaldecoder("utf-8")().decode(prefix, final=False)
        except UnicodeDecodeError:
            return "cp1252", 0
        return "utf-8", 0

    def _lines(self, handle: BinaryIO) -> Iterator[tuple[str, bool]]:
        """Decoded physical lines with their line ends, each with a flag for "read by the fallback"."""
        handle.seek(self._bom)
        if self.encoding.startswith("utf-16"):
            for line in _utf16_lines(handle, self.encoding):
                yield line, False
        elif self.encoding == "cp1252":
            for line in _byte_lines(handle):
                yield line.decode("cp1252", errors="replace"), False
        else:
            for line in _byte_lines(handle):
                try:
                    yield line.decode("utf-8"), False
                except UnicodeDecodeError:
                    yield line.decode("cp1252", errors="replace"), True

    def _text_items(self) -> Iterator[ImportRow | ImportBlock]:
        """blocks() of a text file, reading as _lines and _parse do but at C speed for ordinary rows.

        The csv reader pulls lines straight from C iterators (blocks of whole lines in StringIO);
        UTF-8 is decoded with surrogateescape so that a line the fallback would read as
        Windows-1252 is still found (by its escaped bytes) when its row needs it. Records are
        taken in chunks of BLOCK_ROWS; in a chunk, the runs of ordinary rows (address cell plain
        ASCII with an @) become ImportBlocks with no Python code per row, and a row takes the
        per-row path (_one_row) only when it is blank, the header, short, or not ordinary.
        """
        index, delimiter = self.column_index, self.delimiter
        utf8 = self.encoding in ("utf-8", "utf-8-sig")
        header = [self.has_header]  # still to be skipped; _one_row clears it
        done = 0  # records counted before those in `chunk`
        chunk: list[list[str]] = []
        take = chunk.append

        def end_of_file() -> Iterator[str]:
            # Pulled once the file's lines are used up. At the start of a record the reader makes a
            # blank record of the empty line and pulls again only after we took that record;
            # inside a quoted cell it pulls again at once: the file ended inside the quotes.
            counted = done + len(chunk)
            yield ""
            if done + len(chunk) == counted:
                raise _EndInsideQuotes

        with self._open() as handle:
            self._reading = handle
            handle.seek(self._bom)
            if self.encoding.startswith("utf-16"):
                lines: Iterator[str] = _utf16_lines(handle, self.encoding)
            else:
                lines = chain.from_iterable(_line_blocks(handle, self.encoding))
            reader = csv.reader(chain(lines, end_of_file()), delimiter=delimiter or _NO_DELIMITER, strict=False)
            try:
                for fields in reader:
                    take(fields)
                    if len(chunk) >= BLOCK_ROWS:
                        yield from self._chunk_items(chunk, done + 1, header, utf8)
                        done += len(chunk)
                        chunk.clear()
                self._read_all = True
            except (csv.Error, _LineTooLong, _EndInsideQuotes, OSError) as exc:
                # The rows read before the failing one are given first, as a row-by-row reader would.
                yield from self._chunk_items(chunk, done + 1, header, utf8)
                failing = done + len(chunk) + 1
                if isinstance(exc, csv.Error):
                    raise self._unreadable(failing, f"{exc} (perhaps a quote that is never closed)") from None
                if isinstance(exc, _LineTooLong):
                    raise self._unreadable(failing, f"a line is longer than {MAX_LINE_BYTES // 1024} KiB") from None
                if isinstance(exc, _EndInsideQuotes):
                    raise self._unreadable(failing, _UNCLOSED_QUOTE) from None
                raise InputError(f"{self.path}: cannot be read ({exc.strerror or exc})") from None
            yield from self._chunk_items(chunk, done + 1, header, utf8)

    def _chunk_items(self, chunk: list[list[str]], first: int, header: list[bool],
                     utf8: bool) -> Iterator[ImportRow | ImportBlock]:
        """The items of consecutive records `chunk`, the first of which is row `first`."""
        index, delimiter = self.column_index, self.delimiter
        split_at_nul = delimiter is None and bool(chunk) and max(map(len, chunk)) > 1
        if header[0] or split_at_nul:
            for offset, fields in enumerate(chunk):
                if not header[0] and not split_at_nul:  # the header is behind: the rest in one go
                    yield from self._chunk_items(chunk[offset:], first + offset, header, utf8)
                    return
                row = self._one_row(first + offset, fields, header, utf8)
                if row is not None:
                    yield row
            return
        try:
            raws = list(map(itemgetter(index), chunk))
        except IndexError:  # a blank or short record, which has no @ to count as ordinary
            raws = [fields[index] if index < len(fields) else "" for fields in chunk]
        # The rows that are not ordinary, found by C code where the cells are ASCII on one line each.
        text = "\n".join(raws)
        if text.isascii() and text.count("\n") == len(raws) - 1:
            odd, line, position = [], 0, 0
            for match in _NO_AT_LINE.finditer(text):
                line += text.count("\n", position, match.start())
                position = match.start()
                odd.append(line)
        else:
            odd = [i for i, raw in enumerate(raws) if "@" not in raw or not raw.isascii()]
        start = 0
        for i in odd:
            if i > start:
                yield ImportBlock(first + start, raws[start:i])
            row = self._one_row(first + i, chunk[i], header, utf8)
            if row is not None:
                yield row
            start = i + 1
        if start < len(raws):
            yield ImportBlock(first + start, raws[start:] if start else raws)

    def _one_row(self, number: int, fields: list[str], header: list[bool], utf8: bool) -> ImportRow | None:
        """Row `number` as rows() gives it, or None for a blank row or the header (which it marks skipped)."""
        delimiter = self.delimiter
        try:
            raw = fields[self.column_index]
        except IndexError:
            raw = ""
        # An @ makes the row non-blank and ASCII rules out every decoding question, so such a row
        # is used as it is (unless it is the header, or a single-column file's line that csv split
        # at a NUL).
        if "@" in raw and raw.isascii() and not header[0] and (delimiter or len(fields) == 1):
            return ImportRow(number, raw, None)
        if delimiter is None and len(fields) > 1:
            fields = [_NO_DELIMITER.join(fields)]
        if _is_blank(fields, delimiter):
            return None
        if header[0]:
            header[0] = False
            return None
        return self._odd_row(number, fields, utf8)

    def _odd_row(self, number: int, fields: list[str], utf8: bool) -> ImportRow:
        """_row for a row off the fast path; finds out whether the fallback decoder would have read it."""
        index = self.column_index
        if utf8 and index < len(fields) and not fields[index].isascii() \
                and any(_ESCAPED_BYTE.search(field) for field in fields):
            fields = list(fields)
            fields[index] = _as_fallback_read(fields, index, self.delimiter or _NO_DELIMITER)
            return self._row(number, fields, True)
        return self._row(number, fields, False)

    def _unreadable(self, row: int, reason: str) -> InputError:
        return InputError(f"{self.path}: row {row}: {reason}")

    # ---------------------------------------------------------- workbooks

    def _xlsx_rows(self) -> Iterator[ImportRow]:
        skip_header = self.has_header
        for number, fields, fallback in self._xlsx_records():
            if skip_header:
                skip_header = False
                continue
            yield self._row(number, fields, fallback)
        self._read_all = True

    def _xlsx_sample(self) -> list[_Record]:
        sample = []
        records = self._xlsx_records()
        try:
            for record in records:
                sample.append(record)
                if len(sample) > SAMPLE_ROWS:
                    break
        finally:
            records.close()
        return sample

    def _xlsx_records(self) -> Iterator[_Record]:
        try:
            import openpyxl
        except ImportError:
            raise InputError(f"{self.path}: reading .xlsx needs openpyxl: pip install openpyxl") from None
        # openpyxl reports a broken workbook with many exception types (BadZipFile, KeyError,
        # InvalidFileException, XML errors); all of them mean the same thing to the user.
        # Our own handle, so that bytes_read can count what the zip reader takes from the file.
        handle = self._open()
        self._reading = handle
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # it warns about Excel features it skips, irrelevant here
                book = openpyxl.load_workbook(handle, read_only=True, data_only=True)
        except Exception as exc:
            handle.close()
            raise InputError(f"{self.path}: not a readable .xlsx workbook ({exc})") from None
        try:
            if not book.worksheets:
                raise InputError(f"{self.path}: the workbook has no sheets")
            sheet = book.worksheets[0]
            self._sheet, self._sheets = sheet.title, len(book.worksheets)
            # Read-only sheets fill in missing rows, so enumerate gives the row numbers Excel shows.
            for number, values in enumerate(sheet.iter_rows(values_only=True), start=1):
                fields = ["" if value is None else str(value) for value in values]
                if any(field.strip() for field in fields):
                    yield number, fields, False
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"{self.path}: not a readable .xlsx workbook ({exc})") from None
        finally:
            book.close()
            handle.close()  # a zip archive leaves a file object it was given open

    # ------------------------------------------------------ column choice

    def _choose_column(self, sample: list[_Record], column: str | int | None) -> tuple[bool, int, list[str]]:
        """Decide header yes/no and the address column from the sampled records."""
        first = sample[0][1]
        width = max(len(fields) for _, fields, _ in sample)
        number = name = None
        if isinstance(column, int) and not isinstance(column, bool):
            number = column
        elif isinstance(column, str):
            if not column.strip():
                raise InputError(f"{self.path}: the column name is empty")
            name = column
        elif column is not None:
            raise InputError(f"{self.path}: a column is a name or a number, not {column!r}")

        named = None
        if name is not None:
            # A name wins over a number, so a header cell that happens to read "2" can be chosen.
            matches = [i for i, cell in enumerate(first) if _key(cell) == _key(name)]
            if len(matches) > 1:
                numbers = ", ".join(str(i + 1) for i in matches)
                raise InputError(f"{self.path}: several columns are named {name!r} ({numbers}); "
                                 "choose one with --column NUMBER")
            if matches:
                named = matches[0]
            elif name.strip().isdigit():
                number = int(name)

        in_range = number is not None and 1 <= number <= width
        if named is not None:
            has_header = True  # the name was found in the first row, so that row is the header
        else:
            has_header = _looks_like_header(sample, [number - 1] if in_range else None)
        columns = _column_names(first, width, has_header)
        data = [fields for _, fields, _ in (sample[1:] if has_header else sample)]
        if not data:
            raise InputError(f"{self.path}: only a header row, no addresses to import")
        if named is not None:
            return True, named, columns
        if name is not None and number is None:
            raise InputError(f"{self.path}: no column named {name!r}; {_CHOOSE}" + _column_list(columns, data))
        if number is not None:
            if not in_range:
                raise InputError(f"{self.path}: there is no column {number} (the file has {width}); {_CHOOSE}"
                                 + _column_list(columns, data))
            return has_header, number - 1, columns

        found = _address_columns(data, width)
        if len(found) == 1:
            return has_header, found[0], columns
        if found:
            what = f"{len(found)} columns hold email addresses ({', '.join(str(i + 1) for i in found)})"
        else:
            what = "no column looks like it holds email addresses"
        raise InputError(f"{self.path}: {what}; {_CHOOSE}" + _column_list(columns, data))

    def _row(self, number: int, fields: list[str], fallback: bool) -> ImportRow:
        index = self.column_index
        if index >= len(fields):
            return ImportRow(number, None, f"row has {len(fields)} column(s), the address is in column {index + 1}")
        raw = fields[index]
        if fallback and not raw.isascii():
            return ImportRow(number, raw, "this row is not valid UTF-8 like the rest of the file; read as "
                                          f"Windows-1252 the address would be {raw.strip()!r}; check the file's encoding")
        if "\ufffd" in raw and self.encoding in ("cp1252", "utf-16-le", "utf-16-be"):
            return ImportRow(number, raw, f"the address contains bytes that are not valid "
                                          f"{_ENCODING_NAMES.get(self.encoding, self.encoding)}")
        return ImportRow(number, raw, None)


# ------------------------------------------------------------------- helpers


class _CountedFile(io.BufferedReader):
    """The file opened for reading, counting the distinct bytes read through it (ImportFile.bytes_read).

    Counted at the read calls, as spans of the file, so it works alike for sequential text reading
    and for a zip reader that seeks about and reads some headers twice: a workbook's progress is
    the share of its bytes read so far, never more than the file.
    """

    def __init__(self, path: Path):
        super().__init__(io.FileIO(path, "rb"), buffer_size=_CHUNK)
        self.consumed = 0
        self._spans: list[list[int]] = []  # [start, end) of what was read, sorted, not touching

    def _count(self, start: int, length: int) -> None:
        if not length:
            return
        end = start + length
        spans = self._spans
        if spans and spans[-1][0] <= start <= spans[-1][1]:  # sequential reading: extend the last span
            last = spans[-1]
            if end > last[1]:
                self.consumed += end - last[1]
                last[1] = end
            return
        index = bisect.bisect_left(spans, [start, start])
        low = index - 1 if index and spans[index - 1][1] >= start else index
        high = index
        while high < len(spans) and spans[high][0] <= end:
            high += 1
        merged = spans[low:high]
        new_start = min([start] + [s for s, _ in merged])
        new_end = max([end] + [e for _, e in merged])
        self.consumed += (new_end - new_start) - sum(e - s for s, e in merged)
        spans[low:high] = [[new_start, new_end]]

    def read(self, size: int | None = -1) -> bytes:
        start = self.tell()
        data = super().read(size)
        self._count(start, len(data))
        return data

    def read1(self, size: int = -1) -> bytes:
        start = self.tell()
        data = super().read1(size)
        self._count(start, len(data))
        return data

    def readinto(self, buffer) -> int:
        start = self.tell()
        count = super().readinto(buffer)
        self._count(start, count or 0)
        return count


class _LineTooLong(Exception):
    """A physical line is longer than MAX_LINE_BYTES."""


class _EndInsideQuotes(Exception):
    """The file ended inside a quoted cell."""


class _Unreadable(Exception):
    """The csv text cannot be parsed from this row on."""

    def __init__(self, row: int, reason: str):
        super().__init__(reason)
        self.row, self.reason = row, reason


class _LineFeed:
    """Feeds lines to csv.reader and notes what happened while it read one record.

    csv.reader pulls lines only until a record is complete, so flags set here belong to the
    record it returns next: whether a line came from the fallback decoder, and whether the file
    ended inside the record (which only an unclosed quote can cause).
    """

    __slots__ = ("_lines", "fallback", "exhausted")

    def __init__(self, lines: Iterator[tuple[str, bool]]):
        self._lines = lines
        self.fallback = False
        self.exhausted = False

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        try:
            line, fallback = next(self._lines)
        except StopIteration:
            self.exhausted = True
            raise
        self.fallback |= fallback
        return line


def _one_by_one(items: Iterator[ImportRow | ImportBlock]) -> Iterator[ImportRow]:
    """The rows of blocks() one by one."""
    for item in items:
        if isinstance(item, ImportRow):
            yield item
        else:
            for number, raw in enumerate(item.raws, start=item.first):
                yield ImportRow(number, raw, None)


def _utf16_lines(handle: BinaryIO, encoding: str) -> Iterator[str]:
    """Physical lines of UTF-16 text with their line ends."""
    # UTF-16 cannot be split on single bytes, so the codec does both; newline="" keeps line
    # ends untranslated for csv, which needs them to tell embedded newlines from row ends.
    text = io.TextIOWrapper(handle, encoding=encoding, errors="replace", newline="")
    while line := text.readline(MAX_LINE_BYTES):
        if len(line) >= MAX_LINE_BYTES:
            raise _LineTooLong
        yield line


def _line_blocks(handle: BinaryIO, encoding: str) -> Iterator[io.StringIO]:
    """The lines _byte_lines gives, decoded, in blocks of whole lines that iterate line by line in C.

    The block ends are where _byte_lines would have cut its chunks into lines, so the same lines
    come out and _LineTooLong is raised at the same point. UTF-8 keeps undecodable bytes as
    surrogate escapes (see _ESCAPED_BYTE); Windows-1252 replaces its five unassigned bytes.
    """
    errors = "surrogateescape" if encoding.startswith("utf-8") else "replace"
    codec = "utf-8" if encoding.startswith("utf-8") else encoding
    pending = b""
    while True:
        chunk = handle.read(_CHUNK)
        data = pending + chunk if pending else chunk
        # A final CR may be the first half of a CRLF split across chunks, so it waits for the next one.
        end = len(data) - 1 if chunk and data.endswith(b"\r") else len(data)
        cut = max(data.rfind(b"\n", 0, end), data.rfind(b"\r", 0, end)) + 1
        if cut:
            yield io.StringIO(data[:cut].decode(codec, errors), newline="")
        pending = data[cut:]
        if not chunk:
            if pending:
                yield io.StringIO(pending.decode(codec, errors), newline="")
            return
        if len(pending) > MAX_LINE_BYTES:
            raise _LineTooLong


def _as_fallback_read(fields: list[str], index: int, delimiter: str) -> str:
    """Cell `index` of a surrogate-escaped UTF-8 record as _lines reads it: every physical line of
    the record that is not valid UTF-8 decoded as Windows-1252, the other lines as UTF-8.

    A record spans several lines only through line ends inside quoted cells, which csv keeps in
    the cell, so the cells joined by the delimiter split into the record's lines (less their
    quotes and final line end, which are ASCII and cannot make a line invalid).
    """
    text = delimiter.join(fields)
    start = sum(len(field) + len(delimiter) for field in fields[:index])
    stop = start + len(fields[index])
    pieces, position = [], 0
    for line in io.StringIO(text, newline=""):
        low, high = max(position, start), min(position + len(line), stop)
        if low < high:
            piece = text[low:high]
            if _ESCAPED_BYTE.search(line):
                piece = piece.encode("utf-8", "surrogateescape").decode("cp1252", errors="replace")
            pieces.append(piece)
        position += len(line)
    return "".join(pieces)


def _is_blank(fields: list[str], delimiter: str | None) -> bool:
    """Whether a record is a blank row (counted in row numbers, never yielded)."""
    if delimiter is None:
        # Without a delimiter, a line of bare separators is still what a spreadsheet saves for an empty row.
        return not fields or bool(_SEPARATORS_ONLY.fullmatch(fields[0]))
    return not any(field.strip() for field in fields)


def _byte_lines(handle: BinaryIO) -> Iterator[bytes]:
    """Physical lines split at CRLF, LF or a lone CR (old Mac files), each keeping its line end."""
    pending = b""
    while True:
        chunk = handle.read(_CHUNK)
        data = pending + chunk if pending else chunk
        start = 0
        for match in _EOL.finditer(data):
            if chunk and match.end() == len(data) and data.endswith(b"\r"):
                break  # the CR may be the first half of a CRLF split across chunks
            yield data[start:match.end()]
            start = match.end()
        pending = data[start:]
        if not chunk:
            if pending:
                yield pending
            return
        if len(pending) > MAX_LINE_BYTES:
            raise _LineTooLong


def _parse(lines: Iterator[tuple[str, bool]], delimiter: str | None) -> Iterator[_Record]:
    """Non-blank csv records with spreadsheet row numbers (blank rows count but are not yielded)."""
    feed = _LineFeed(lines)
    reader = csv.reader(feed, delimiter=delimiter or _NO_DELIMITER, strict=False)
    number = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _Unreadable(number + 1, f"{exc} (perhaps a quote that is never closed)") from None
        except _LineTooLong:
            raise _Unreadable(number + 1, f"a line is longer than {MAX_LINE_BYTES // 1024} KiB") from None
        number += 1
        if feed.exhausted:
            raise _Unreadable(number, _UNCLOSED_QUOTE)
        if delimiter is None and len(fields) > 1:
            fields = [_NO_DELIMITER.join(fields)]
        fallback, feed.fallback = feed.fallback, False
        if not _is_blank(fields, delimiter):
            yield number, fields, fallback


def _sample_records(lines: list[tuple[str, bool]], delimiter: str | None) -> list[_Record]:
    """Up to SAMPLE_ROWS + 1 records from the sniffed lines.

    A record cut off by the end of the sample (a quoted cell running on) ends the sample: the
    parser reports it as unreadable, which here only means "not complete yet".
    """
    records: list[_Record] = []
    try:
        for record in _parse(iter(lines), delimiter):
            records.append(record)
            if len(records) > SAMPLE_ROWS:
                break
    except _Unreadable:
        pass  # if the file really is broken there, rows() raises it with its row number
    return records


def _sniff_delimiter(lines: list[tuple[str, bool]]) -> str | None:
    """The candidate that splits the sample into the most consistent number (2+) of columns.

    Quote-aware, because it parses with csv. Ties go to the delimiter that leaves more cells
    that are whole valid addresses, then to more columns: "Smith, John;a@b.dk" splits into two
    columns either way, but only semicolons leave the address whole.
    """
    best, best_score = None, None
    for priority, delimiter in enumerate(DELIMITERS):
        records = [fields for _, fields, _ in _sample_records(lines, delimiter)]
        if not records:
            continue
        counts = Counter(len(fields) for fields in records)
        width, agreeing = max(counts.items(), key=lambda item: (item[1], item[0]))
        if width < 2:
            continue
        addresses = sum(is_valid_address(cell) for fields in records for cell in fields)
        score = (agreeing / len(records), addresses, width, -priority)
        if best_score is None or score > best_score:
            best, best_score = delimiter, score
    return best


def _looks_like_header(sample: list[_Record], columns: list[int] | None) -> bool:
    """Whether the first row is a header: it holds no address, in any language.

    A first row without a valid address is still data when an address column has an '@' there
    (an invalid address, which must be reported rather than swallowed as a header). A headerless
    file whose first address cell has no '@' at all cannot be told from one with a header.
    """
    first = sample[0][1]
    if any(is_valid_address(cell) for cell in first):
        return False
    if columns is None:
        rest = [fields for _, fields, _ in sample[1:]]
        columns = _address_columns(rest, max((len(f) for f in rest), default=0))
        if not columns:
            # Nothing to go by but the row itself; a number is far likelier data than a heading.
            return not any(_NUMBER.fullmatch(cell.strip()) for cell in first)
    return not any(index < len(first) and "@" in first[index] for index in columns)


def _address_columns(data: list[list[str]], width: int) -> list[int]:
    """Columns in which most non-empty sample values contain an '@' and at least one is a valid address."""
    found = []
    for index in range(width):
        values = [fields[index].strip() for fields in data if index < len(fields) and fields[index].strip()]
        with_at = sum("@" in value for value in values)
        if with_at * 2 > len(values) and any(is_valid_address(value) for value in values):
            found.append(index)
    return found


def _column_names(first: list[str], width: int, has_header: bool) -> list[str]:
    names = []
    for index in range(width):
        cell = first[index].strip() if has_header and index < len(first) else ""
        names.append(cell or f"column {index + 1}")
    return names


def _column_list(columns: list[str], data: Iterable[list[str]]) -> str:
    """The columns, numbered, with the first non-empty value of each as a sample."""
    data = list(data)
    lines = [" Columns:"]
    for index, name in enumerate(columns):
        sample = next((fields[index].strip() for fields in data if index < len(fields) and fields[index].strip()), "")
        if len(sample) > 40:
            sample = sample[:39] + "…"
        lines.append(f"  {index + 1}. {name}: sample {sample!r}" if sample else f"  {index + 1}. {name}: (empty)")
    return "\n".join(lines)


def _key(name: str) -> str:
    """A column name as matched: case-insensitive, white space ignored."""
    return "".join(name.split()).casefold()
