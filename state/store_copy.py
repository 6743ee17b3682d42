"""Copying a store's tables between SQLite and PostgreSQL, and proving the copy equal (`store copy`).

Every table of state/schema.py is copied row for row, with its own key values: the event log keeps
every seq (sinks' watermarks and failures' ref_seq point at them), failures and runs keep their
ids, and the rowid by which SQLite reads `staged` and `snapshots` in insertion order travels as
PostgreSQL's `row_order` and back. The schema version is not copied as a row: each side's own
migrations build it, and the two versions must be equal (state/pg_schema.py numbers its versions
as SQLite's). PostgreSQL's own tables (pg_schema.POSTGRESQL_ONLY_TABLES) are not copied.

Rows stream: a table is read with a cursor (a server-side one on PostgreSQL) and written as it is
read, by COPY on PostgreSQL and executemany in batches on SQLite; no table is held in memory.

The proof (`fingerprint`): per table, the number of rows and a SHA-256 over every row in primary key
order, each value written with its type (`_encoded`), so that both backends give the same digest
for the same rows. Text compares by code point on both (SQLite's BINARY collation of UTF-8,
PostgreSQL's "C"), so primary key order is the same on both sides.

Identifiers in the SQL built here come from code (COPIED_TABLES) or from the SQLite side's own
catalogue checked against it, and each is checked to be a plain lower-case name before use.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import pg_schema
from .errors import StoreError

if TYPE_CHECKING:
    import psycopg

# Every table of state/schema.py, parents before the tables whose foreign keys point at them
# (snapshot_contacts -> snapshots). tests/test_store_copy.py checks this against both schemas.
COPIED_TABLES = ("store_meta", "suppressions", "events", "checkpoints", "staged", "lifts", "failures", "runs",
                 "snapshots", "snapshot_contacts", "inflight", "adapter_memory", "releases", "removals_due",
                 "webhook_receipts")

# Tables a fresh store holds rows in before anything happened: its identity. A destination whose
# other tables are empty holds no data (a freshly migrated database), and these rows are replaced.
IDENTITY_TABLES = ("store_meta",)

BATCH = 5000  # rows per SQLite executemany and per PostgreSQL cursor fetch

_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")  # \Z, not $: "$" would take a name ending in a line break


class CopyMismatch(StoreError):
    """The copy's tables differ from the source's: `differences` names each table and how."""

    def __init__(self, message: str, differences: list[str]):
        super().__init__(message)
        self.differences = differences


@dataclass(frozen=True)
class TableSpec:
    """One copied table: its SQLite columns in order, its primary key, and PostgreSQL's rowid column."""

    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    pg_rowid: str | None  # the explicit column PostgreSQL keeps for SQLite's implicit rowid

    def pg_columns(self) -> tuple[str, ...]:
        return self.columns + ((self.pg_rowid,) if self.pg_rowid else ())

    def sqlite_columns(self) -> tuple[str, ...]:
        return self.columns + (("rowid",) if self.pg_rowid else ())


@dataclass(frozen=True)
class TableFacts:
    """A table's row count and the SHA-256 of its rows (hex)."""

    rows: int
    sha256: str


def _name(text: str) -> str:
    if not _NAME.match(text):
        raise StoreError(f"store copy met an unexpected name in the store's schema: {text!r}")
    return f'"{text}"'


def _names(names: Iterable[str]) -> str:
    return ", ".join(_name(n) if n != "rowid" else "rowid" for n in names)


def table_specs(conn: sqlite3.Connection) -> list[TableSpec]:
    """The copied tables as the SQLite store on `conn` defines them; StoreError if they are not COPIED_TABLES."""
    found = {row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'")}
    if found != set(COPIED_TABLES):
        unknown, missing = sorted(found - set(COPIED_TABLES)), sorted(set(COPIED_TABLES) - found)
        raise StoreError("store copy does not know this store's tables"
                         + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                         + (f"; missing: {', '.join(missing)}" if missing else "")
                         + "; is it a store of this version of optout-sync?")
    specs = []
    for table in COPIED_TABLES:
        info = conn.execute("SELECT name, pk FROM pragma_table_info(?) ORDER BY cid", (table,)).fetchall()
        columns = tuple(name for name, _ in info)
        key = tuple(name for name, pk in sorted((r for r in info if r[1]), key=lambda r: r[1]))
        for column in columns:
            _name(column)
        specs.append(TableSpec(table, columns, key, pg_schema.IMPLICIT_ROWID_COLUMNS.get(table)))
    return specs


# pragma: no mutate start (PostgreSQL only: the mutation run's tests have no server)
def check_pg_tables(conn: psycopg.Connection, specs: list[TableSpec]) -> None:
    """StoreError unless the PostgreSQL store on `conn` has exactly these tables and columns (and its own)."""
    rows = conn.execute("SELECT table_name, column_name FROM information_schema.columns"
                        " WHERE table_schema = current_schema()").fetchall()
    columns: dict[str, set[str]] = {}
    for table, column in rows:
        columns.setdefault(table, set()).add(column)
    for spec in specs:
        if columns.get(spec.name) != set(spec.pg_columns()):
            raise StoreError(f"the PostgreSQL store's table {spec.name} does not have the SQLite store's columns "
                             f"({', '.join(sorted(columns.get(spec.name, ())) or 'no such table')}; expected "
                             f"{', '.join(sorted(spec.pg_columns()))})")
    extra = sorted(set(columns) - set(COPIED_TABLES) - set(pg_schema.POSTGRESQL_ONLY_TABLES))
    if extra:
        raise StoreError(f"the PostgreSQL database holds tables that are not an optout-sync store's: {', '.join(extra)}")
# pragma: no mutate end


# -- the two backends ----------------------------------------------------------


class _Tables:
    """What both backends' table readers share: counting the rows a store holds."""

    conn: sqlite3.Connection | psycopg.Connection

    def holdings(self, specs: list[TableSpec]) -> dict[str, int]:
        """Rows per table that holds any, leaving out the identity tables."""
        found = {}
        for spec in specs:
            if spec.name not in IDENTITY_TABLES:
                count = self.conn.execute(f"SELECT count(*) FROM {_name(spec.name)}").fetchone()[0]
                if count:
                    found[spec.name] = count
        return found


class SqliteTables(_Tables):
    """The copied tables of a SQLite store, on its connection (autocommit mode, as Store opens it)."""

    def __init__(self, conn: sqlite3.Connection, where: str):
        self.conn = conn
        self.where = where

    def rows(self, spec: TableSpec) -> Iterator[tuple]:
        """Every row of the table in primary key order, in spec.sqlite_columns() order."""
        cur = self.conn.execute(f"SELECT {_names(spec.sqlite_columns())} FROM {_name(spec.name)}"
                                f" ORDER BY {_names(spec.key)}")
        while batch := cur.fetchmany(BATCH):
            yield from batch

    def load(self, specs: list[TableSpec], source: "PgTables") -> None:
        """Write every table's rows from `source` in one transaction (the caller's); identity rows replaced."""
        for spec in specs:
            if spec.name in IDENTITY_TABLES:
                self.conn.execute(f"DELETE FROM {_name(spec.name)}")
            insert = (f"INSERT INTO {_name(spec.name)} ({_names(spec.sqlite_columns())})"
                      f" VALUES ({', '.join('?' * len(spec.sqlite_columns()))})")
            rows = source.rows(spec)
            while batch := list(itertools.islice(rows, BATCH)):
                self.conn.executemany(insert, batch)


# pragma: no mutate start (PostgreSQL only, as check_pg_tables above)
class PgTables(_Tables):
    """The copied tables of a PostgreSQL store, on a psycopg connection (errors name no password)."""

    def __init__(self, conn: psycopg.Connection, url: str, where: str):
        self.conn = conn
        self.url = url
        self.where = where

    def rows(self, spec: TableSpec) -> Iterator[tuple]:
        """Every row of the table in primary key order, in spec.pg_columns() order (a server-side cursor).

        Needs an open transaction (a named cursor lives in one).
        """
        with self.conn.cursor(name=f"store_copy_{spec.name}") as cur:
            cur.itersize = BATCH
            cur.execute(f"SELECT {_names(spec.pg_columns())} FROM {_name(spec.name)} ORDER BY {_names(spec.key)}")
            yield from cur

    def load(self, specs: list[TableSpec], source: SqliteTables) -> None:
        """COPY every table's rows from `source` in the caller's transaction; identity rows replaced.

        COPY writes the given values also into GENERATED ALWAYS identity columns (events.seq,
        row_order); the identities' sequences are then moved past them, so appends continue.
        """
        for spec in specs:
            if spec.name in IDENTITY_TABLES:
                self.conn.execute(f"DELETE FROM {_name(spec.name)}")
            with self.conn.cursor() as cur, \
                    cur.copy(f"COPY {_name(spec.name)} ({_names(spec.pg_columns())}) FROM STDIN") as copy:
                for row in source.rows(spec):
                    copy.write_row(row)
        pg_schema.reset_identities(self.conn)
# pragma: no mutate end


# -- the proof -------------------------------------------------------------------


def _encoded(value) -> bytes:
    # Typed and length-prefixed: NULL, 5 and '5' differ, and no two rows run into each other.
    if value is None:
        return b"N"
    if isinstance(value, bool):
        return b"I%d" % int(value)
    if isinstance(value, int):
        return b"I%d" % value
    if isinstance(value, float):
        return b"F" + repr(value).encode()
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        return b"T%d:" % len(data) + data
    data = bytes(value)
    return b"B%d:" % len(data) + data


def digest(rows: Iterable[tuple]) -> TableFacts:
    """The count and SHA-256 of rows, streaming: the same for the same values on either backend."""
    sha = hashlib.sha256()
    count = 0
    for row in rows:
        sha.update(b"|".join(map(_encoded, row)) + b"\n")
        count += 1
    return TableFacts(count, sha.hexdigest())


def fingerprint(tables: SqliteTables | PgTables, specs: list[TableSpec],
                progress: Callable[[str], None] | None = None) -> dict[str, TableFacts]:
    """Per copied table, its row count and digest, in COPIED_TABLES order (one snapshot: the caller's transaction)."""
    facts = {}
    for spec in specs:
        if progress:
            progress(spec.name)
        facts[spec.name] = digest(tables.rows(spec))
    return facts


def differences(source: dict[str, TableFacts], copy: dict[str, TableFacts]) -> list[str]:
    """One line per table whose count or digest differs between the source and the copy."""
    lines = []
    for table, facts in source.items():
        other = copy.get(table)
        if other is None:
            lines.append(f"{table}: missing in the copy")
        elif other.rows != facts.rows:
            lines.append(f"{table}: {other.rows} rows in the copy, {facts.rows} in the source")
        elif other.sha256 != facts.sha256:
            lines.append(f"{table}: same row count ({facts.rows}) but the checksum differs "
                         f"(copy {other.sha256[:16]}..., source {facts.sha256[:16]}...)")
    return lines
