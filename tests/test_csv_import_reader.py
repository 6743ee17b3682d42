"""The import file reader: the corpus of awkward files, its error messages, and streaming properties.

Counts are compared with expected.json, which was worked out by hand from make_corpus.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from connector.csv_import import SNIFF_BYTES, ImportFile, ImportRow
from state.addresses import InvalidAddress, normalise_address
from state.errors import InputError

CORPUS = Path(__file__).parent / "data" / "import"
EXPECTED = {name: value for name, value in json.loads((CORPUS / "expected.json").read_text("utf-8")).items()
            if not name.startswith("_")}
HAS_OPENPYXL = importlib.util.find_spec("openpyxl") is not None


def tally(import_file: ImportFile) -> dict:
    """Count a file the way the import preview does: normalise each raw value."""
    rows = valid = 0
    unique: set[str] = set()
    rejected_rows = []
    for row in import_file.rows():
        rows += 1
        if row.problem is None and row.raw is not None:
            try:
                unique.add(normalise_address(row.raw))
            except InvalidAddress:
                pass
            else:
                valid += 1
                continue
        rejected_rows.append(row.number)
    return {"rows": rows, "valid": valid, "unique": len(unique), "duplicates": valid - len(unique),
            "rejected": len(rejected_rows), "rejected_rows": rejected_rows}


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def error_of(path: Path, column: str | int | None = None) -> str:
    with pytest.raises(InputError) as caught:
        ImportFile(path, column)
    return str(caught.value)


# ------------------------------------------------------------------ corpus


def test_every_corpus_file_has_an_expectation():
    files = {p.name for p in CORPUS.iterdir() if p.suffix not in (".py", ".json")}
    assert files == set(EXPECTED)
    assert len(files) >= 14


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file_reads_to_the_expected_counts(name):
    expected = EXPECTED[name]
    path = CORPUS / name
    if path.suffix == ".xlsx" and not HAS_OPENPYXL:
        assert "reading .xlsx needs openpyxl: pip install openpyxl" in error_of(path)
        return
    if expected["column"] == "ambiguous":
        assert "--column" in error_of(path)
        import_file = ImportFile(path, expected["column_option"])
        assert import_file.column_index == expected["column_index"]
    else:
        import_file = ImportFile(path)
        assert import_file.column_index == expected["column"]
    assert import_file.encoding == expected["encoding"]
    assert import_file.delimiter == expected["delimiter"]
    assert import_file.has_header == expected["has_header"]
    counts = tally(import_file)
    assert counts == {key: expected[key] for key in counts}
    assert counts["valid"] + counts["rejected"] == counts["rows"]


def test_rows_can_be_read_more_than_once():
    import_file = ImportFile(CORPUS / "danish_header.csv")
    assert list(import_file.rows()) == list(import_file.rows())


def test_describe_is_one_line_naming_encoding_delimiter_header_and_column():
    text = ImportFile(CORPUS / "danish_header.csv").describe()
    assert text == "UTF-8, semicolon-separated, header row: yes, address column: 2 (E-mailadresse)"
    assert ImportFile(CORPUS / "bare_addresses.txt").describe() == \
        "UTF-8, single column, header row: no, address column: 1"


# ----------------------------------------------------------- row numbers


def test_row_numbers_count_a_multiline_record_once():
    rows = list(ImportFile(CORPUS / "quoted_multiline.csv").rows())
    assert [(row.number, row.raw) for row in rows] == [
        (2, "jens@example.dk"), (3, "pat.obrien@example.ie"), (4, "multi@example.com"), (5, "plain@example.com")]


def test_row_numbers_count_blank_lines_and_short_rows_say_why():
    rows = list(ImportFile(CORPUS / "blank_and_short.csv").rows())
    assert [row.number for row in rows] == [2, 4, 5, 7, 10, 11]
    short = rows[2]
    assert short == ImportRow(5, None, "row has 1 column(s), the address is in column 2")
    assert rows[4] == ImportRow(10, "", None)  # an empty cell is for the address check to reject


def test_crlf_inside_a_quoted_cell_does_not_start_a_row(tmp_path):
    path = write(tmp_path, "a.csv", 'Note,Email\r\n"two\r\nlines",a@example.com\r\n\r\nb,b@example.com\r\n')
    assert [(r.number, r.raw) for r in ImportFile(path).rows()] == [(2, "a@example.com"), (4, "b@example.com")]


# ------------------------------------------------------------ --column


def test_column_by_name_ignores_case_and_spaces():
    assert ImportFile(CORPUS / "danish_header.csv", " e-MAIL adresse ").column_index == 1
    assert ImportFile(CORPUS / "two_address_columns.csv", "Email").column_index == 1


def test_column_by_number_as_int_or_string():
    for column in (3, "3", " 3 "):
        import_file = ImportFile(CORPUS / "two_address_columns.csv", column)
        assert import_file.column_index == 2
        assert [row.raw for row in import_file.rows()] == ["boss@example.com", "boss@example.com", ""]


def test_column_by_number_in_a_file_without_header():
    import_file = ImportFile(CORPUS / "no_header.csv", 2)
    assert not import_file.has_header
    assert [row.raw for row in import_file.rows()] == ["Kim", "Lars", "Maja", "Nobody"]
    assert import_file.columns == ["column 1", "column 2", "column 3"]


def test_trailing_empty_header_cells_are_named_by_number():
    import_file = ImportFile(CORPUS / "excel_trailing_columns.csv")
    assert import_file.columns == ["First name", "Last name", "Email", "column 4", "column 5", "column 6"]


# ---------------------------------------------------------------- errors


def test_ambiguous_columns_list_every_column_with_a_sample():
    path = CORPUS / "two_address_columns.csv"
    message = error_of(path)
    assert str(path) in message
    assert "2 columns hold email addresses (2, 3)" in message
    assert "--column" in message
    assert "1. Name: sample 'Ann'" in message
    assert "2. Email: sample 'ann@example.com'" in message
    assert "3. Manager email: sample 'boss@example.com'" in message


def test_no_address_column_lists_columns_by_number_without_header(tmp_path):
    path = write(tmp_path, "names.csv", "Ann,1\nBen,2\n")
    message = error_of(path)
    assert "no column looks like it holds email addresses" in message
    assert "1. column 1: sample 'Ann'" in message and "2. column 2: sample '1'" in message


def test_unknown_column_name_names_the_file_and_lists_columns():
    path = CORPUS / "danish_header.csv"
    message = error_of(path, "Email")
    assert message.startswith(f"{path}: no column named 'Email'")
    assert "1. Navn: sample 'Jens Jensen'" in message
    assert "2. E-mailadresse: sample 'jens@example.dk'" in message
    assert "3. Tilmeldt: sample 'ja'" in message


@pytest.mark.parametrize("column", [0, 4, "4", -1])
def test_column_number_out_of_range(column):
    path = CORPUS / "danish_header.csv"
    message = error_of(path, column)
    assert message.startswith(f"{path}: there is no column {int(column)} (the file has 3)")
    assert "2. E-mailadresse: sample 'jens@example.dk'" in message


def test_missing_file_and_directory(tmp_path):
    assert error_of(tmp_path / "nope.csv") == f"{tmp_path / 'nope.csv'}: no such file"
    assert error_of(tmp_path) == f"{tmp_path} is a directory, not a file"


@pytest.mark.parametrize("data, expected", [
    (b"", "the file is empty"),
    (b"\xef\xbb\xbf", "the file is empty (only a byte-order mark)"),
    (b"\r\n\n  \n,,\n", "only blank lines"),
    (b"E-mailadresse;Navn\n", "only a header row"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "NUL bytes"),
    (bytes(range(256)) * 4, "NUL bytes"),
    (b"PK\x03\x04\x14\x00\x06\x00", "zip archive"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "old Excel (.xls)"),
    (b"\x01\x02\x03\x04\x05\x06 a@example.com\n", "does not look like a text file"),
])
def test_unusable_files_raise_input_error_naming_the_file(tmp_path, data, expected):
    path = write(tmp_path, "list.csv", data)
    message = error_of(path)
    assert message.startswith(str(path))
    assert expected in message


def test_a_header_alone_is_refused_even_when_the_column_is_named(tmp_path):
    path = write(tmp_path, "a.csv", "Navn;E-mailadresse\r\n\r\n")
    assert error_of(path, "E-mailadresse") == f"{path}: only a header row, no addresses to import"


def test_a_name_shared_by_two_columns_asks_for_a_number(tmp_path):
    path = write(tmp_path, "a.csv", "Email,Email\na@example.com,b@example.com\n")
    assert error_of(path, "email") == \
        f"{path}: several columns are named 'email' (1, 2); choose one with --column NUMBER"


def test_workbook_reads_its_first_sheet_only():
    path = CORPUS / "workbook.xlsx"
    if not HAS_OPENPYXL:
        assert "pip install openpyxl" in error_of(path)
        return
    import_file = ImportFile(path)
    assert import_file.describe() == \
        "Excel workbook, sheet 'Opt-outs' (first of 2), header row: yes, address column: 2 (E-mail)"
    assert "nobody@example.com" not in [row.raw for row in import_file.rows()]


def test_unclosed_quote_is_reported_with_its_row(tmp_path):
    path = write(tmp_path, "a.csv", 'Name,Email\nAnn,ann@example.com\n"Ben,ben@example.com\nCy,cy@example.com\n')
    import_file = ImportFile(path)
    with pytest.raises(InputError) as caught:
        list(import_file.rows())
    assert str(caught.value).startswith(f"{path}: row 3: a quoted cell starts in this row")


def test_xlsx_without_openpyxl_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "openpyxl", None)  # makes `import openpyxl` fail
    path = CORPUS / "workbook.xlsx"
    assert error_of(path) == f"{path}: reading .xlsx needs openpyxl: pip install openpyxl"


def test_a_text_file_named_xlsx_is_not_a_workbook(tmp_path):
    path = write(tmp_path, "list.xlsx", "Email\na@example.com\n")
    message = error_of(path)
    expected = "not a readable .xlsx workbook" if HAS_OPENPYXL else "pip install openpyxl"
    assert message.startswith(str(path)) and expected in message


# ------------------------------------------------- late encoding problems


def ascii_rows(count: int) -> bytes:
    return b"".join(b"Person %d;person%d@example.com\r\n" % (i, i) for i in range(count))


def test_late_windows_1252_row_keeps_an_ascii_address_and_rejects_a_non_ascii_one(tmp_path):
    head = b"Navn;Email\r\n" + ascii_rows(3000)
    assert len(head) > SNIFF_BYTES  # the first accented letter comes after the sniffed prefix
    data = head + "Åse Ærø;ase@example.dk\r\n".encode("cp1252") + "Jørgen;jørgen@example.dk\r\n".encode("cp1252")
    import_file = ImportFile(write(tmp_path, "late.csv", data))
    assert import_file.encoding == "utf-8"
    last = list(import_file.rows())[-3:]
    assert last[0] == ImportRow(3001, "person2999@example.com", None)
    assert last[1] == ImportRow(3002, "ase@example.dk", None)
    assert last[2].number == 3003 and last[2].raw == "jørgen@example.dk"
    assert "not valid UTF-8" in last[2].problem and "'jørgen@example.dk'" in last[2].problem


def test_undecodable_windows_1252_byte_in_an_address_is_a_problem(tmp_path):
    path = write(tmp_path, "a.csv", "Navn;Email\nSøren;søren@example.dk\n".encode("cp1252")
                 + b"Bad;bad\x81@example.dk\n")
    rows = list(ImportFile(path).rows())
    assert rows[0] == ImportRow(2, "søren@example.dk", None)
    assert rows[1].number == 3 and rows[1].problem == "the address contains bytes that are not valid Windows-1252"


# ------------------------------------------------------------ properties

JUNK_UNICODE = "abcxyzABC019 .-_@,;|\t\"'\r\næøåÉß€山🙂"
# Windows-1252 letters from 0xC0 up only, so written text is never accidentally valid UTF-8.
JUNK_CP1252 = "abcxyzABC019 .-_@,;|\t\"'\r\næøåÉßÜ"
ENCODINGS = {"utf-8": JUNK_UNICODE, "utf-8-sig": JUNK_UNICODE, "utf-16": JUNK_UNICODE,
             "utf-16-be-bom": JUNK_UNICODE, "cp1252": JUNK_CP1252}
ADDRESSES = st.builds("{}@{}.{}".format, st.text("abcdefghij0123456789._+-", min_size=1, max_size=8),
                      st.text("abcdefghij0123456789-", min_size=1, max_size=8), st.sampled_from(["dk", "com", "org"]))


def encode(text: str, encoding: str) -> bytes:
    if encoding == "utf-16-be-bom":
        return b"\xfe\xff" + text.encode("utf-16-be")
    return text.encode(encoding)  # utf-16 and utf-8-sig write their own BOM


def csv_line(fields: list[str], delimiter: str, quote_all: bool, newline: str) -> str:
    """A row the way spreadsheets write it: quotes doubled, a cell quoted when it must be (or always)."""
    def cell(value: str) -> str:
        if quote_all or any(ch in value for ch in (delimiter, '"', "\r", "\n")):
            return '"' + value.replace('"', '""') + '"'
        return value
    return delimiter.join(cell(value) for value in fields) + newline


@st.composite
def import_files(draw):
    encoding = draw(st.sampled_from(sorted(ENCODINGS)))
    junk = st.text(ENCODINGS[encoding], max_size=10)
    delimiter = draw(st.sampled_from([",", ";", "\t", "|"]))
    quote_all = draw(st.booleans())
    newline = draw(st.sampled_from(["\r\n", "\n", "\r"]))
    entries = draw(st.lists(st.one_of(
        st.none(),  # a blank line
        st.tuples(junk, st.one_of(ADDRESSES, junk), junk)), max_size=25))
    return encoding, delimiter, quote_all, newline, entries


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(import_files())
def test_reader_returns_exactly_what_was_written_with_spreadsheet_row_numbers(spec):
    encoding, delimiter, quote_all, newline, entries = spec
    text = csv_line(["Name", "Email", "Note"], delimiter, quote_all, newline)
    expected = []
    for number, entry in enumerate(entries, start=2):
        if entry is None:
            text += newline
            continue
        text += csv_line(list(entry), delimiter, quote_all, newline)
        if any(value.strip() for value in entry):  # a row of blank cells is a blank row
            expected.append((number, entry[1]))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "list.csv"
        path.write_bytes(encode(text, encoding))
        if not expected:
            assert "only a header row" in error_of(path, "email")
            return
        import_file = ImportFile(path, "email")
        assert import_file.delimiter == delimiter
        rows = list(import_file.rows())
    assert [(row.number, row.raw) for row in rows] == expected
    assert all(row.problem is None for row in rows)


# ------------------------------------------------------------ bounded memory


def test_reading_rows_takes_bounded_memory(tmp_path):
    path = tmp_path / "big.csv"
    count = 200_000
    with open(path, "wb") as handle:
        handle.write(b"Name,Email,Note\r\n")
        for start in range(0, count, 10_000):
            handle.write(b"".join(b"Person number %d,person%d@example.com,imported from the old list\r\n" % (i, i)
                                  for i in range(start, start + 10_000)))
    size = os.path.getsize(path)
    bound = 4 * 1024 * 1024
    assert size > 2 * bound  # holding the file in memory would break the bound
    import_file = ImportFile(path)
    tracemalloc.start()
    try:
        rows = last = 0
        for row in import_file.rows():
            rows += 1
            last = row.number
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (rows, last) == (count, count + 1)
    assert peak < bound
