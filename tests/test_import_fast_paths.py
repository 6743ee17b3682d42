"""The fast paths of import: the C-level row reader, the short ASCII address check, the staging thread.

Each must give exactly what the plain path gives; the reader is compared with the line-by-line
parser it replaced for rows() (which still reads the sniffed prefix).
"""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from connector import csv_import
from connector.csv_import import (_CHUNK, MAX_LINE_BYTES, SNIFF_BYTES, ImportBlock, ImportFile, ImportRow, _parse,
                                  _Unreadable)
from state import addresses
from state.errors import InputError, RefusedError
from state.imports import CHUNK, run_import
from state.models import Rejected
from state.store import Store

# ------------------------------------------------------------------ reader


def padding(rows: int, delimiter: bytes = b";") -> bytes:
    """Plain rows, so that what follows lies beyond the sniffed prefix."""
    return b"".join(b"Person %d%bperson%d@example.com\r\n" % (i, delimiter, i) for i in range(rows))


PAST_SNIFF = SNIFF_BYTES // 20  # rows of padding() that fill the sniffed prefix


def line_by_line_rows(import_file: ImportFile) -> list[ImportRow]:
    """rows() as the line-by-line parser reads them (the reader before the fast path)."""
    rows, skip_header = [], import_file.has_header
    with import_file._open() as handle:
        try:
            for number, fields, fallback in _parse(import_file._lines(handle), import_file.delimiter):
                if skip_header:
                    skip_header = False
                    continue
                rows.append(import_file._row(number, fields, fallback))
        except _Unreadable as exc:
            raise InputError(f"{import_file.path}: row {exc.row}: {exc.reason}") from None
    return rows


def outcome(read, import_file: ImportFile):
    try:
        return read(import_file)
    except InputError as exc:
        return str(exc)


CELLS = [b"a@b.dk", b"Q@X.io", b"j\xc3\xb8rgen@ex.dk", b"j\xf8rgen@ex.dk", b"x\x81y@z.dk", b"plain",
         b"\xc3\xa9t\xc3\xa9", b"", b" ", b"\xc3", b"\xed\xb2\x80@x.dk", b"a\x00b@c.dk", b"\x01", b",", b";"]


@st.composite
def awkward_files(draw):
    """Byte files: clean or not-quite UTF-8, quoted cells across lines, NULs, blank rows, open quotes."""
    delimiter = draw(st.sampled_from([b",", b";", None]))
    newline = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    columns = draw(st.integers(1, 3)) if delimiter else 1

    def cell():
        parts = draw(st.lists(st.sampled_from(CELLS), min_size=1, max_size=2))
        if draw(st.booleans()):
            return b'"' + draw(st.sampled_from([b"\n", b"\r\n", b"\r", b'""'])).join(parts) + b'"'
        return b"".join(parts).replace(b'"', b"")

    lines = [(delimiter or b",").join([b"Email"] + [b"c%d" % i for i in range(1, columns)])]
    # Sometimes enough plain rows first that the awkward ones lie beyond the sniffed prefix.
    for i in range(draw(st.sampled_from([0, PAST_SNIFF]))):
        lines.append(delimiter.join([b"person%d@example.com" % i] + [b"x"] * (columns - 1)) if delimiter
                     else b"person%d@example.com" % i)
    for _ in range(draw(st.integers(1, 12))):
        lines.append(b"" if draw(st.integers(0, 9)) == 0 else (delimiter or b"").join(cell() for _ in range(columns)))
    data = newline.join(lines) + draw(st.sampled_from([newline, b""]))
    if draw(st.integers(0, 9)) == 0:
        data += b'x,"open' + newline + b"end"
    return data, draw(st.sampled_from(["email", 1, 2, None]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(awkward_files())
def test_rows_are_what_the_line_by_line_parser_reads(spec):
    data, column = spec
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "list.csv"
        path.write_bytes(data)
        try:
            import_file = ImportFile(path, column)
        except InputError:
            return  # refused while sniffing, which both readers share
        assert outcome(lambda f: list(f.rows()), import_file) == outcome(line_by_line_rows, import_file)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(awkward_files(), st.sampled_from([1, 2, 3, 7]))
def test_rows_read_in_small_blocks_are_what_the_line_by_line_parser_reads(spec, block_rows):
    # Chunks this small put every kind of row (header, blank, short, odd, the end of the file or
    # an open quote) at a chunk's start, middle and end.
    data, column = spec
    with tempfile.TemporaryDirectory() as folder, mock.patch.object(csv_import, "BLOCK_ROWS", block_rows):
        path = Path(folder) / "list.csv"
        path.write_bytes(data)
        try:
            import_file = ImportFile(path, column)
        except InputError:
            return
        assert outcome(lambda f: list(f.rows()), import_file) == outcome(line_by_line_rows, import_file)
        blocks = outcome(lambda f: list(f.blocks()), import_file)
        if not isinstance(blocks, str):  # a block holds consecutive ordinary rows only
            for block in blocks:
                if isinstance(block, ImportBlock):
                    assert block.raws and all("@" in raw and raw.isascii() for raw in block.raws)


def test_a_late_undecodable_line_is_read_as_windows_1252_only_where_the_cell_lies_on_it(tmp_path):
    # The address cell spans two lines; only the first is not UTF-8, so only that part is reread.
    data = b"Name;Email\r\n" + padding(PAST_SNIFF) + b'Bad\x81;"j\xc3\xb8\nrgen@ex.dk"\r\nok;ok@example.com\r\n'
    path = tmp_path / "late.csv"
    path.write_bytes(data)
    rows = list(ImportFile(path).rows())
    bad, ok = rows[-2:]
    assert bad.raw == "j\xc3\xb8\nrgen@ex.dk"
    assert "not valid UTF-8" in bad.problem
    assert ok == ImportRow(bad.number + 1, "ok@example.com", None)
    assert rows == line_by_line_rows(ImportFile(path))


def test_a_crlf_split_across_read_chunks_ends_one_row(tmp_path):
    head = b"Name;Email\r\n" + padding(PAST_SNIFF)
    row = b"Filler;filler@example.com;"
    filler = _CHUNK * 2 - 1 - len(head) - len(row)  # the CR becomes the last byte of the second chunk
    data = head + row + b"x" * filler + b"\r\nlast;last@example.com\r\n"
    assert data[_CHUNK * 2 - 1:_CHUNK * 2 + 1] == b"\r\n"
    path = tmp_path / "split.csv"
    path.write_bytes(data)
    rows = list(ImportFile(path).rows())
    assert [(r.number, r.raw) for r in rows[-2:]] == [(PAST_SNIFF + 2, "filler@example.com"),
                                                    (PAST_SNIFF + 3, "last@example.com")]


def test_a_long_line_after_the_sniffed_prefix_is_reported_with_its_row(tmp_path):
    path = tmp_path / "long.csv"
    path.write_bytes(b"Name;Email\r\n" + padding(PAST_SNIFF) + b"a;" * MAX_LINE_BYTES + b"\r\n")
    with pytest.raises(InputError) as caught:
        list(ImportFile(path).rows())
    assert str(caught.value) == f"{path}: row {PAST_SNIFF + 2}: a line is longer than 1024 KiB"


def test_a_nul_in_a_single_column_file_stays_in_the_cell(tmp_path):
    path = tmp_path / "single.txt"
    path.write_bytes(b"".join(b"user%d@example.com\n" % i for i in range(PAST_SNIFF)) + b"a\x00b@example.com\n")
    import_file = ImportFile(path)
    assert import_file.delimiter is None
    assert list(import_file.rows())[-1] == ImportRow(PAST_SNIFF + 1, "a\x00b@example.com", None)


@pytest.mark.parametrize("tail", [b'Cy,cy@example.com,"note\n', b'Cy,cy@example.com,"note', b'"Cy,cy@example.com\n'])
def test_an_unclosed_quote_in_the_last_row_is_reported_not_read(tmp_path, tail):
    path = tmp_path / "open.csv"
    path.write_bytes(b"Name,Email,Note\nAnn,ann@example.com,\n" + tail)
    import_file = ImportFile(path)
    read = []
    with pytest.raises(InputError) as caught:
        read.extend(import_file.rows())
    assert str(caught.value).startswith(f"{path}: row 3: a quoted cell starts in this row")
    assert [row.raw for row in read] == ["ann@example.com"]


def test_a_header_with_an_at_sign_is_still_the_header(tmp_path):
    path = tmp_path / "header.csv"
    path.write_bytes(b"Name,E-mail (name@domain)\nAnn,ann@example.com\n")
    import_file = ImportFile(path, "E-mail (name@domain)")
    assert [(row.number, row.raw) for row in import_file.rows()] == [(2, "ann@example.com")]


# -------------------------------------------------------------- addresses

ASCII_ADDRESS_PARTS = "abz09_-.@+!'`{|}~ ()A"


def full_check(address: str) -> bool:
    """The check without the short ASCII shortcut."""
    if len(address) > addresses.MAX_ADDRESS or not addresses._ADDRESS.fullmatch(address):
        return False
    local, _, domain = address.rpartition("@")
    return len(local) <= addresses.MAX_LOCAL and len(domain) <= 253


@given(st.text(ASCII_ADDRESS_PARTS, max_size=addresses._SHORT + 2)
       | st.from_regex(r"[a-z0-9_.+-]{1,12}@[a-z0-9-]{1,40}(\.[a-z0-9-]{1,12}){1,3}", fullmatch=True)
       # near the local-part and label length limits, which the short check relies on not reaching
       | st.from_regex(r"[a-z]{55,70}@[a-z]\.[a-z]{1,2}|a@[a-z]{58,68}\.[a-z]", fullmatch=True))
def test_the_short_ascii_check_agrees_with_the_full_one(text):
    address = text.strip().lower()
    if len(address) <= addresses._SHORT:
        assert bool(addresses._SHORT_ASCII.fullmatch(address)) == full_check(address)


@given(st.lists(st.text(ASCII_ADDRESS_PARTS + "\n\tÉé", max_size=addresses._SHORT + 2)
                | st.from_regex(r" ?[A-Za-z0-9_.+-]{1,12}@[a-z0-9-]{1,40}(\.[a-z0-9-]{1,12}){1,3} ?", fullmatch=True),
                max_size=12))
def test_a_block_is_normalised_as_each_address_alone(raws):
    got = addresses.normalise_block(raws)
    assert len(got) == len(raws)
    for raw, address in zip(raws, got):
        expected = raw.strip().lower()
        # None exactly where the short ASCII check does not take the text (normalise_address judges it).
        short = len(expected) <= addresses._SHORT and addresses._SHORT_ASCII.fullmatch(expected)
        assert address == (expected if short else None)
        if address is not None:
            assert address == addresses.normalise_address(raw)


@pytest.mark.parametrize("raw, valid", [
    ("a" * 50 + "@" + "b" * 60 + ".com", True),  # longer than the short check takes
    ("Jørgen@Bücher.de", True),                  # not ASCII
    ("ann@example-.com", False), ("ann@ex_ample.com", False), ("ann.@example.com", False), ("ann@example.c-", False),
])
def test_addresses_the_short_check_does_not_take_get_the_full_one(raw, valid):
    assert addresses.is_valid_address(raw) is valid


# -------------------------------------------------------------- staging


def apply(store: Store, items, confirm=None):
    return run_import(store, items, scope="*", reason="imported", confirm=confirm, source="import")


def test_staging_counts_across_many_batches(tmp_path):
    items = [f"u{i % (CHUNK + 7)}@x.io" for i in range(3 * CHUNK)] + [Rejected("row 1", "bad", "invalid")]
    with Store(tmp_path / "store.db") as store:
        preview = apply(store, iter(items), confirm=CHUNK + 7)
        assert (preview.rows_read, preview.valid, preview.unique, preview.new, preview.rejected_count) == (
            3 * CHUNK + 1, 3 * CHUNK, CHUNK + 7, CHUNK + 7, 1)
        assert store.count_suppressions() == CHUNK + 7


def test_a_failing_insert_on_the_staging_thread_ends_the_import_and_changes_nothing(tmp_path):
    # A lone surrogate cannot be sent to SQLite; normalise_address never lets one through.
    items = [f"u{i}@x.io" for i in range(2 * CHUNK)] + ["\ud800@x.io"] + [f"v{i}@x.io" for i in range(2 * CHUNK)]
    with Store(tmp_path / "store.db") as store:
        with pytest.raises(UnicodeEncodeError):
            apply(store, iter(items), confirm=4 * CHUNK + 1)
        assert store.count_suppressions() == 0


def test_a_refused_count_leaves_no_event_behind(tmp_path):
    with Store(tmp_path / "store.db") as store:
        apply(store, ["a@x.io"], confirm=1)
        with pytest.raises(RefusedError, match="would add 2 new opt-outs, not 3"):
            apply(store, ["a@x.io", "b@x.io", "c@x.io"], confirm=3)
        assert store.count_suppressions() == 1
        assert store.conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1
        preview = apply(store, ["a@x.io", "b@x.io", "c@x.io"], confirm=2)
        assert (preview.already_suppressed, preview.new, preview.applied) == (1, 2, True)


def test_text_with_a_nul_is_staged_whole(tmp_path):
    # SQLite's JSON reader would cut it at the NUL; such a batch is staged row by row instead.
    with Store(tmp_path / "store.db") as store:
        preview = apply(store, ["a\x00b@x.io", "a@x.io"], confirm=2)
        assert (preview.unique, preview.new) == (2, 2)
        assert store.suppression("a\x00b@x.io") is not None


# -------------------------------------------------------------- import of blocks

MIXED_ROWS = ["n,Ann@Example.com", "", "n,broken", "n,bob@x.io", "n,a@b", ",", "n,Jørgen@Bücher.de", "n,ann@example.com",
              'n,"two\nlines@x.io"', "n," + "l" * 60 + "@Example.com", "n,  carl@x.io ", "n,no at sign", "n,dora@x.io"]


@pytest.mark.parametrize("block_rows", [1, 3, 5, csv_import.BLOCK_ROWS])
def test_an_import_in_blocks_counts_and_rejects_as_row_by_row(tmp_path, block_rows):
    from connector import operator
    from connector.settings import load_settings

    from .conftest import write_settings

    settings = load_settings(write_settings(tmp_path, []), environ={})
    listing = tmp_path / "list.csv"
    listing.write_text("name,email\n" + "\n".join(MIXED_ROWS * 3) + "\n", encoding="utf-8")
    # What the rows give one by one, as import did before blocks.
    expected_rejected, valid = [], []
    for row in ImportFile(listing).rows():
        try:
            valid.append(addresses.normalise_address(row.raw))
        except addresses.InvalidAddress as exc:
            expected_rejected.append([str(row.number), row.raw, f"invalid address {row.raw.strip()!r}: {exc}"])
    out = tmp_path / "rejected.csv"
    with mock.patch.object(csv_import, "BLOCK_ROWS", block_rows):
        _, preview = operator.import_file(settings, listing, rejected_out=out, confirm=len(set(valid)))
    assert (preview.rows_read, preview.valid, preview.unique) == (len(valid) + len(expected_rejected), len(valid),
                                                                 len(set(valid)))
    assert preview.applied and preview.new == len(set(valid)) == 6
    assert list(csv.reader(out.open(encoding="utf-8")))[1:] == expected_rejected
    assert [r.row for r in preview.rejected_sample] == [int(r[0]) for r in expected_rejected]
    with Store(settings.store.path) as store:
        stored = [row[0] for row in store.conn.execute("SELECT address FROM suppressions ORDER BY seq")]
    assert stored == sorted(set(valid))
