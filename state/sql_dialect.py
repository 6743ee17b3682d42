"""The few SQL expressions that differ between the store's backends (SQLite, PostgreSQL).

Store SQL shared by both (the echo rule, above all) is written once against a Dialect, so the two
stores cannot drift apart in meaning. Details columns are JSON text on both backends (see
state/pg_schema.py); times are the store's canonical ISO text (state.models.to_utc_iso).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dialect:
    """SQL spellings of one backend."""

    name: str

    def json_text(self, column: str, key: str) -> str:
        """The text at top-level `key` of the JSON text in `column` (NULL if absent or column NULL)."""
        if self.name == "sqlite":
            return f"json_extract({column}, '$.{key}')"
        # COLLATE "C": compared with the store's text columns by code point, as SQLite does.
        return f"(({column})::jsonb ->> '{key}') COLLATE \"C\""

    def json_array_has(self, column: str, key: str, value_sql: str) -> str:
        """True when the JSON array at `key` of `column` holds the text `value_sql`."""
        if self.name == "sqlite":
            return f"EXISTS (SELECT 1 FROM json_each({column}, '$.{key}') f WHERE f.value = {value_sql})"
        return (f"EXISTS (SELECT 1 FROM jsonb_array_elements_text(({column})::jsonb -> '{key}') f(value)"
                f" WHERE f.value COLLATE \"C\" = {value_sql})")

    def greatest(self, a: str, b: str) -> str:
        """The larger of two non-NULL values (SQLite's two-argument max)."""
        return f"max({a}, {b})" if self.name == "sqlite" else f"GREATEST({a}, {b})"

    def group_concat(self, expr: str, separator: str) -> str:
        """The aggregate joining `expr`'s texts with `separator`, sorted (SQLite: as its input is ordered)."""
        if self.name == "sqlite":
            return f"group_concat({expr}, '{separator}')"
        return f"string_agg({expr}, '{separator}' ORDER BY {expr})"

    def placeholders(self, sql: str) -> str:
        """`sql` written with SQLite's `?` placeholders, in this backend's driver's style (psycopg: %s).

        For SQL handed to a backend's own method that takes its driver's style (suppress_selected).
        The shared SQL holds no literal '?' or '%' (the contract suites run it on both backends).
        """
        if self.name == "sqlite":
            return sql
        return sql.replace("%", "%%").replace("?", "%s")

    def shift_time(self, column: str, seconds: int) -> str:
        """A stored ISO time moved by `seconds`, as the store's ISO text (NULL stays NULL)."""
        if self.name == "sqlite":
            return f"shift_time({column}, {seconds})"  # a Python function the SQLite Store registers
        # The store's form: 2026-03-01T10:30:00.000000+00:00, so that it compares as text with stored times.
        return (f"to_char((({column})::timestamptz + interval '{int(seconds)} seconds') AT TIME ZONE 'UTC',"
                " 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')")

    def same(self, a: str, b: str) -> str:
        """True when `a` and `b` are equal or both NULL (SQLite's IS)."""
        return f"{a} IS {b}" if self.name == "sqlite" else f"{a} IS NOT DISTINCT FROM {b}"

    def insert_or_ignore(self, into: str) -> str:
        """An INSERT of `into` (table, columns and values or SELECT) that skips rows a unique key holds already."""
        if self.name == "sqlite":
            return f"INSERT OR IGNORE INTO {into}"
        return f"INSERT INTO {into} ON CONFLICT DO NOTHING"

    def insertion_order(self) -> str:
        """The column that orders `staged` and `snapshots` rows as they were inserted."""
        return "rowid" if self.name == "sqlite" else "row_order"

    def temp_table(self, name: str) -> str:
        """A temp table's name qualified by the connection's temp schema."""
        return f"temp.{name}" if self.name == "sqlite" else f"pg_temp.{name}"

    def seconds_between(self, later: str, earlier: str) -> str:
        """Seconds from stored ISO time `earlier` to `later`, as a float (NULL if either is NULL)."""
        if self.name == "sqlite":
            return f"(julianday({later}) - julianday({earlier})) * 86400.0"
        return f"EXTRACT(EPOCH FROM (({later})::timestamptz - ({earlier})::timestamptz))::float8"

    def latest_per(self, key: str, latest: str, columns: str, from_where: str) -> str:
        """Per `key`, the row whose `latest` is greatest: (key, latest, columns), ordered by key.

        SQLite takes bare columns from the row that holds max(); PostgreSQL says so with DISTINCT ON
        (ties: the earlier seq, the row SQLite's scan meets first).
        """
        if self.name == "sqlite":
            return f"SELECT {key}, max({latest}), {columns} {from_where} GROUP BY {key} ORDER BY {key}"
        return (f"SELECT DISTINCT ON ({key}) {key}, {latest}, {columns} {from_where}"
                f" ORDER BY {key}, {latest} DESC, e.seq")


SQLITE = Dialect("sqlite")
POSTGRESQL = Dialect("postgresql")
