"""Export's fast path against csv.writer, over generated cells: the bytes must be the same.

`_write_rows` joins chunks in C when no cell needs quoting; these properties hold it to what
csv.writer(out, lineterminator="\\n") writes for any cells: commas, quotes, CR and LF, empty
strings, NULL and non-text cells, non-ASCII, and a NUL (which SQLite's `||` and csv.writer keep).
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector import operator
from connector.settings import validate_settings
from state.store import Store

# Text csv.writer writes as it is (NUL and non-ASCII included), and what makes it quote or take
# its own path. A row is mostly plain, as real rows are, so that whole chunks take the fast path,
# with at most one odd thing put into it: the fast path must notice that one thing.
PLAIN = st.text(st.sampled_from([" ", ";", "@", "a", "Z", "0", "é", "\u2028", "😀", "\0"]), max_size=5)
ODD = st.sampled_from([",", '"', "\n", "\r", "\r\n", None, 3])
ANY = st.sampled_from([",", '"', "\n", "\r", "\0", " ", ";", "@", "a", "é", "😀"])
TEXT = st.one_of(PLAIN, st.text(ANY, max_size=6))


@st.composite
def rows(draw) -> list:
    """A row of 7 cells: plain text, with at most one odd character or non-text cell."""
    row = draw(st.lists(PLAIN, min_size=7, max_size=7))
    odd = draw(st.one_of(st.none(), st.tuples(st.integers(0, 6), ODD, st.integers(0, 5))))
    if odd is not None:
        cell, thing, at = odd
        row[cell] = thing if not isinstance(thing, str) else row[cell][:at] + thing + row[cell][at:]
    return row


def csv_writer_text(table: list) -> str:
    """What csv.writer writes for `table`, with the export's line ending."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(table)
    return out.getvalue()


@settings(max_examples=300, deadline=None)
@given(generated=st.lists(rows(), max_size=12), chunk=st.integers(1, 5))
def test_write_rows_writes_what_csv_writer_writes(generated, chunk):
    out = io.StringIO()
    with mock.patch.object(operator, "_EXPORT_CHUNK", chunk):
        written = operator._write_rows(csv.writer(out, lineterminator="\n"), out, iter(generated), 7)
    assert written == len(generated)
    assert out.getvalue() == csv_writer_text(generated)


# A stored suppression's cells, each of which may be any text (a store written by hand or by an
# older version); occurred_at may be NULL, which export shows as ''.
STORED = st.tuples(TEXT.filter(bool), TEXT.filter(bool), TEXT, TEXT, TEXT, st.one_of(st.none(), TEXT),
                   st.lists(TEXT.filter(bool), max_size=2, unique=True))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stored=st.lists(STORED, max_size=8, unique_by=lambda s: (s[0], s[1])))
def test_export_of_a_store_writes_what_csv_writer_writes(stored):
    with tempfile.TemporaryDirectory() as folder:
        settings_ = validate_settings({"store": {"path": "store.db"}}, Path(folder) / "settings.toml")
        with Store(settings_.store.path) as store:
            for seq, (address, scope, reason, origin, source, occurred, released) in enumerate(stored):
                store.conn.execute(
                    "INSERT INTO suppressions (address, scope, reason, origin, source, occurred_at, recorded_at,"
                    " seq) VALUES (?, ?, ?, ?, ?, ?, '2026-01-01T00:00:00+00:00', ?)",
                    (address, scope, reason, origin, source, occurred, seq))
                for adapter in released:
                    store.conn.execute(
                        "INSERT INTO releases (address, scope, adapter, resubscribed_at, released_at, seq)"
                        " VALUES (?, ?, ?, '2026-01-02T00:00:00+00:00', '2026-01-02T00:00:00+00:00', ?)",
                        (address, scope, adapter, seq))
            store.conn.commit()
        out = io.StringIO()
        assert operator.export(settings_, out) == len(stored)
    # Expected from the generated data alone: by address then scope (SQLite's BINARY order is
    # UTF-8 byte order, which is code point order), released adapters sorted and ';'-joined.
    expected = [operator.EXPORT_HEADER] + [
        [address, scope, reason, origin, source, occurred or "", ";".join(sorted(released))]
        for address, scope, reason, origin, source, occurred, released in sorted(stored, key=lambda s: s[:2])]
    assert out.getvalue() == csv_writer_text(expected)
