"""The SQLite suppression store: suppressions, event log, checkpoints, staging, failures, runs.

Every write happens inside one transaction per page or batch, and a source's
read cursor is saved in the same transaction as the opt-outs it describes.
One Store object is one connection; give each thread its own.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import sqlite3
from datetime import datetime, timedelta
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from . import failpoint
from .errors import ConfigError, InputError, RefusedError, StoreError
from .event_columns import checked_event_columns
from .models import (
    ALREADY,
    APPLIED,
    ORIGIN_RANK,
    PERMANENT,
    REASON_RANK,
    TRANSIENT,
    ApplyResult,
    OptOut,
    Page,
    Rejected,
    to_utc_iso,
    utc_now,
)
from . import resubscribes
from .schema import migrate
from .sql_dialect import SQLITE, Dialect


def _rank_sql(column: str, ranks: dict[str, int]) -> str:
    cases = " ".join(f"WHEN '{key}' THEN {value}" for key, value in ranks.items())
    return f"(CASE {column} {cases} ELSE -1 END)"


def _stronger_sql(new: str, old: str) -> str:
    """SQL that is true when opt-out `new` binds more strongly than stored `old`.

    A user-made opt-out never replaces one the recipient or a system made: that
    would turn an opt-out nobody may lift into one a user may lift.
    """
    nr, orr = _rank_sql(f"{new}.reason", REASON_RANK), _rank_sql(f"{old}.reason", REASON_RANK)
    no, oo = _rank_sql(f"{new}.origin", ORIGIN_RANK), _rank_sql(f"{old}.origin", ORIGIN_RANK)
    return (
        f"({new}.origin != 'user' OR {old}.origin = 'user') "
        f"AND ({nr} > {orr} OR ({nr} = {orr} AND {no} > {oo}))"
    )


def canonical_time(text: str | None) -> str | None:
    """ISO-8601 text in the store's one UTC form, so that times compare correctly as text.

    Unparseable text counts as unknown (None): the opt-out is kept, its date is not. A lower-case
    "t" or "z" is read as "T" or "Z" (RFC 3339 section 5.6); Python 3.11 reads "Z" as UTC itself.
    """
    if not text:
        return None
    try:
        return to_utc_iso(datetime.fromisoformat(text.upper()))
    except ValueError:
        return None


PAGE_SIZE = 16384
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024

# A vendor's clock may run ahead of ours: an observation this close after our apply is still its echo.
ECHO_SKEW_SECONDS = 600


def _shift_time(text: str | None, seconds: float) -> str | None:
    """SQL function: an ISO time moved by `seconds`, in the store's text form."""
    if not text:
        return None
    return to_utc_iso(datetime.fromisoformat(text) + timedelta(seconds=seconds))


def _echo_sql(table: str, source_sql: str, dialect: Dialect = SQLITE) -> str:
    """SQL that is true when a row of `table` is a sink reporting back what this daemon applied to it.

    Such an echo must neither create a suppression (an unmapped topic sent as all-email comes
    back as an all-email opt-out; an all-email opt-out written to every topic stream comes back
    once per stream) nor change who made one (a user's import comes back from some vendors as a
    recipient unsubscribe). An echo is only what we sent: the scope we sent or one our write
    fanned out to, a reason no more binding than the one we sent or the one the sink records our
    write as (an unsubscribe unless the adapter said otherwise, and nothing where the sink held
    it already, since then we wrote nothing), and undated or dated no later than our apply. A
    more binding reason is news whatever its date: a complaint the sink held before our apply.
    """
    d = dialect
    incoming_rank = _rank_sql(f"{table}.reason", REASON_RANK)
    held_rank = _rank_sql(f"COALESCE({d.json_text('a.details', 'held_as')}, 'unsubscribed')", REASON_RANK)
    # The source is bound once, in a one-row table, so that callers pass it as one parameter.
    return (f"EXISTS (SELECT 1 FROM (SELECT {source_sql} AS name) src WHERE"
            f" EXISTS (SELECT 1 FROM events a WHERE a.address = {table}.address AND a.kind = 'applied'"
            f" AND a.target = src.name"
            f" AND (COALESCE({d.json_text('a.details', 'sent_scope')}, a.scope) = {table}.scope"
            f" OR {d.json_array_has('a.details', 'fanned_out', f'{table}.scope')})"
            f" AND {incoming_rank} <= " + d.greatest(_rank_sql('a.reason', REASON_RANK),
                                                     f"CASE WHEN COALESCE({d.json_text('a.details', 'outcome')},"
                                                     f" 'applied') = 'applied' THEN {held_rank} ELSE -1 END") +
            f" AND ({table}.occurred_at IS NULL"
            f" OR {table}.occurred_at <= {d.shift_time('a.recorded_at', ECHO_SKEW_SECONDS)}))"
            # A write whose record a kill lost is known only by its in-flight mark; pulls run
            # before the re-send, so its read-back must be recognised by the mark (same scope only,
            # and never a more binding reason than an unsubscribe or the one we sent).
            f" OR EXISTS (SELECT 1 FROM inflight m JOIN events e ON e.seq = m.seq"
            f" WHERE m.adapter = src.name AND e.address = {table}.address AND e.scope = {table}.scope"
            f" AND {incoming_rank} <= "
            + d.greatest(_rank_sql('e.reason', REASON_RANK), str(REASON_RANK['unsubscribed'])) +
            f" AND ({table}.occurred_at IS NULL"
            f" OR {table}.occurred_at <= {d.shift_time('m.marked_at', ECHO_SKEW_SECONDS)})))")


def _holds_nul(item) -> bool:
    return "\x00" in item.address or "\x00" in item.scope


def _without_nul(adapter: str, page: Page) -> Page:
    """The page without the items whose address or scope holds a NUL character; those are rejected rows.

    PostgreSQL text cannot hold NUL, so both backends reject such an item alike rather than fail the
    whole page (no adapter yields one: a NUL makes an address invalid). The value shows it as \\x00.
    """
    if not any(map(_holds_nul, itertools.chain(page.optouts, page.notices, page.resubscribes))):
        return page
    rejected = list(page.rejected)
    kept: dict[str, list] = {}
    for kind, items in (("opt-out", page.optouts), ("notice", page.notices), ("re-subscribe", page.resubscribes)):
        kept[kind] = []
        for number, item in enumerate(items, 1):
            if _holds_nul(item):
                rejected.append(Rejected(f"{adapter}: {kind} {number} of a page",
                                         f"{item.address} {item.scope}".replace("\x00", "\\x00"),
                                         "NUL character in the address or scope"))
            else:
                kept[kind].append(item)
    return replace(page, optouts=kept["opt-out"], rejected=rejected, notices=kept["notice"],
                   resubscribes=kept["re-subscribe"])


def _details_json(details: dict | None) -> str | None:
    return json.dumps(details, separators=(",", ":")) if details else None


def _details_from(text: str | None) -> dict | None:
    return json.loads(text) if text else None


@dataclass(slots=True)
class Checkpoint:
    """Where an adapter stands: its read cursor, push watermark, pause state and last successes."""

    adapter: str
    read_cursor: str | None
    cursor_at: str | None
    applied_seq: int
    last_reconcile_at: str | None
    last_success_at: str | None
    reconcile_requested: bool
    paused: bool
    paused_at: str | None


@dataclass(slots=True)
class IngestCounts:
    """What one page did to the store."""

    read: int = 0
    staged: int = 0
    changed: int = 0
    ignored_lifted: int = 0
    ignored_echoes: int = 0
    rejected: int = 0
    held: int = 0          # read, and already suppressed for that scope (`changed` are among them)
    released: int = 0      # opt-outs a recipient's own re-subscribe released or lifted (state.resubscribes)

    def add(self, other: "IngestCounts") -> None:
        self.released += other.released
        self.read += other.read
        self.held += other.held
        self.staged += other.staged
        self.changed += other.changed
        self.ignored_lifted += other.ignored_lifted
        self.ignored_echoes += other.ignored_echoes
        self.rejected += other.rejected


@dataclass(slots=True)
class PendingEvent:
    """A suppression event not yet applied to a given sink, with the opt-out as it stands now."""

    seq: int
    optout: OptOut
    source: str
    recorded_at: str


@dataclass(slots=True)
class PushOutcome:
    """One item of a push batch as the store records it.

    `result` is None for an item that was skipped (unmapped topic), with `message` saying why.
    """

    seq: int
    optout: OptOut
    result: ApplyResult | None
    message: str = ""


_OPTOUT_COLUMNS = "address, scope, reason, origin, occurred_at, details"

# Rows in one multi-row INSERT (state.store.Store._insert_rows); fewer where SQLite allows fewer values.
_ROWS_PER_INSERT = 500


_OUTCOME_JSON = {outcome: json.dumps({"outcome": outcome}) for outcome in (APPLIED, ALREADY, PERMANENT, TRANSIENT)}


def _outcome_json(item: "PushOutcome") -> str:
    """An apply's outcome, and what the echo rule needs where the sink got something else.

    That is the scope it was sent as, the reason the sink records it as, and the further scopes
    the write reached.
    """
    result = item.result
    if (result.optout.scope == item.optout.scope and result.outcome in _OUTCOME_JSON
            and result.held_as is None and not result.fanned_out):
        return _OUTCOME_JSON[result.outcome]  # the common case, without a json.dumps per item
    details: dict = {"outcome": result.outcome}
    if result.optout.scope != item.optout.scope:
        details["sent_scope"] = result.optout.scope
    if result.held_as is not None:
        details["held_as"] = result.held_as
    if result.fanned_out:
        details["fanned_out"] = sorted(set(result.fanned_out))
    return json.dumps(details)


# The columns of _push_rows' event rows, in order.
PUSH_EVENT_COLUMNS = ("recorded_at", "kind", "address", "scope", "reason", "origin", "target", "ref_seq",
                      "message", "details")


def _push_rows(adapter: str, outcomes: list["PushOutcome"], resent: set[int] | frozenset[int],
               now: str) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """What record_push writes for a batch: event rows, (now, adapter, seq) of failures to resolve, failure rows.

    Event rows are values of PUSH_EVENT_COLUMNS.
    """
    events, resolved, failures = [], [], []
    for item in outcomes:
        if item.seq in resent and item.result is not None and item.result.outcome == ALREADY:
            item = replace(item, result=replace(
                item.result, outcome=APPLIED,
                message="applied by a send interrupted before its outcome was recorded"))
        o = item.optout
        if item.result is None:
            events.append((now, "skipped", o.address, o.scope, o.reason, o.origin, adapter,
                           item.seq, item.message, None))
            failures.append((adapter, "unmapped", o.address, o.scope, item.seq, item.message, now, now))
        elif item.result.ok:
            # The outcome tells a sink that already held it from one we put it in: a lift
            # may only be propagated to the second kind.
            message = item.result.message or ("already held" if item.result.outcome == ALREADY else "")
            events.append((now, "applied", o.address, o.scope, o.reason, o.origin, adapter,
                           item.seq, message, _outcome_json(item)))
            resolved.append((now, adapter, item.seq))
        else:
            events.append((now, "failed", o.address, o.scope, o.reason, o.origin, adapter,
                           item.seq, f"{item.result.outcome}: {item.result.message}", _outcome_json(item)))
            failures.append((adapter, item.result.outcome, o.address, o.scope, item.seq,
                             item.result.message, now, now))
    return events, resolved, failures


class Store:
    """The local suppression store on one SQLite connection."""

    # The SQL spellings of this backend (state/sql_dialect.py); PgStore shares methods written against it.
    dialect: Dialect = SQLITE

    def __init__(self, path: str | os.PathLike[str], busy_timeout: float = 30.0, *, create: bool = True):
        """Open the store at `path`; with `create=False` a missing file is a StoreError, never a new store."""
        if failpoint.ERROR:
            raise ConfigError(failpoint.ERROR)
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        try:
            if create:
                _create_private_file(self.path)
                target, uri = self.path, False
            else:
                # mode=rw: SQLite itself refuses to create the file, so a store deleted after a check
                # is not silently re-created.
                target, uri = f"{self.path.absolute().as_uri()}?mode=rw", True
            # A long import holds the write lock for seconds; other writers wait rather than fail.
            conn = sqlite3.connect(target, isolation_level=None, timeout=busy_timeout,
                                   check_same_thread=False, uri=uri)
            # Larger pages for a new store: a million-row import writes about 20 % faster. SQLite
            # ignores this for an existing store (its page size is fixed once it holds a table).
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA temp_store = FILE")
            # After a checkpoint resets the WAL, SQLite truncates it to this size: a million-row import
            # must not leave a WAL of its high-water mark (787 MB) behind for good.
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
            conn.create_function("shift_time", 2, _shift_time, deterministic=True)
            migrate(conn)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the store {self.path}: {exc}") from exc
        self.conn = conn
        self._depth = 0
        self._temp_ready = False

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def store_id(self) -> str | None:
        """The store's identity (written by migration 4), or None for a database without one."""
        row = self.conn.execute("SELECT value FROM store_meta WHERE key = 'store_id'").fetchone()
        return row[0] if row else None

    def truncate_wal(self, busy_ms: int = 100) -> bool:
        """Checkpoint the whole WAL into the database and truncate it to zero bytes; True if it did.

        Waits at most `busy_ms` for readers and writers (a checkpoint that waits blocks new
        writers), then gives up: SQLITE_BUSY or an incomplete checkpoint is False, not an error.
        """
        self.conn.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
        try:
            busy, _log, _done = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            return busy == 0
        except sqlite3.OperationalError:
            return False
        finally:
            self.conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- transactions ---------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction; nested calls become savepoints of the outer one."""
        depth = self._depth
        name = f"sp{depth}"
        try:
            self.conn.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT {name}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to the store {self.path}: {exc}") from exc
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            # Temp tables this transaction made go with it; the next use makes them again.
            self._temp_ready = False
            if depth == 0:
                self.conn.execute("ROLLBACK")
            else:
                self.conn.execute(f"ROLLBACK TO {name}")
                self.conn.execute(f"RELEASE {name}")
            raise
        self._depth -= 1
        # Test-only crash point (state/failpoint.py): off unless OPTOUT_SYNC_FAILPOINT is set.
        number = failpoint.before_commit() if failpoint.ARMED and depth == 0 else 0
        try:
            self.conn.execute("COMMIT" if depth == 0 else f"RELEASE {name}")
        except sqlite3.Error as exc:
            if depth == 0:
                self._temp_ready = False
                self.conn.execute("ROLLBACK")
            raise StoreError(f"cannot write to the store {self.path}: {exc}") from exc
        if number:
            failpoint.after_commit(number)

    @contextmanager
    def rolled_back(self) -> Iterator[None]:
        """Run writes that are always undone at the end (dry runs)."""

        class _Undo(Exception):
            pass

        try:
            with self.transaction():
                yield
                raise _Undo
        except _Undo:
            pass

    def _write(self, sql: str, params: Iterable = ()) -> sqlite3.Cursor:
        try:
            return self.conn.execute(sql, params)
        except sqlite3.OperationalError as exc:
            raise StoreError(f"cannot write to the store {self.path}: {exc}") from exc

    def _append_events(self, columns: tuple[str, ...], rows: list[tuple]) -> None:
        """Append event rows (values of `columns`, in order) in the current transaction."""
        columns = checked_event_columns(columns)
        self._insert_rows(f"INSERT INTO events ({', '.join(columns)})", len(columns), rows)

    def _insert_rows(self, insert: str, width: int, rows: list[tuple]) -> None:
        """Run `insert` ("INSERT INTO table (columns)") for `rows` of `width` values each, in order.

        Many rows go in one statement: executemany binds and steps a statement per row, which
        costs twice as much a row (300,000 events of ten columns: 0.95 s against 0.49 s).
        """
        per = max(1, min(_ROWS_PER_INSERT, self.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width))
        row = f"({', '.join('?' * width)})"
        whole = len(rows) - len(rows) % per
        if whole:
            full = f"{insert} VALUES {', '.join([row] * per)}"
            for start in range(0, whole, per):
                self.conn.execute(full, list(itertools.chain.from_iterable(rows[start:start + per])))
        if whole < len(rows):
            self.conn.execute(f"{insert} VALUES {', '.join([row] * (len(rows) - whole))}",
                              list(itertools.chain.from_iterable(rows[whole:])))

    def append_event(self, event: Mapping[str, object]) -> int:
        """Append one event (column name -> value) in the current transaction; its seq."""
        columns = checked_event_columns(event)
        return self._write(f"INSERT INTO events ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                           tuple(event.values())).lastrowid

    def _ensure_temp_tables(self) -> None:
        if self._temp_ready:
            return
        self.conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS incoming ("
            " address TEXT NOT NULL, scope TEXT NOT NULL, reason TEXT NOT NULL,"
            " origin TEXT NOT NULL, occurred_at TEXT, details TEXT,"
            " PRIMARY KEY (address, scope))"
        )
        self.conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS source_set ("
            " address TEXT NOT NULL, scope TEXT NOT NULL, reason TEXT NOT NULL,"
            " origin TEXT NOT NULL, occurred_at TEXT, details TEXT,"
            " PRIMARY KEY (address, scope)) WITHOUT ROWID"
        )
        self._temp_ready = True  # pragma: no mutate (unset, the IF NOT EXISTS statements run again and do nothing)

    # -- checkpoints ----------------------------------------------------------

    def checkpoint(self, adapter: str) -> Checkpoint:
        """The checkpoint of an adapter (a fresh one if it never ran)."""
        row = self.conn.execute(
            "SELECT adapter, read_cursor, cursor_at, applied_seq, last_reconcile_at,"
            " last_success_at, reconcile_requested, paused, paused_at FROM checkpoints WHERE adapter = ?",
            (adapter,),
        ).fetchone()
        if row is None:
            return Checkpoint(adapter, None, None, 0, None, None, False, False, None)
        return Checkpoint(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]), bool(row[7]), row[8])

    def _ensure_checkpoint(self, adapter: str) -> None:
        self._write("INSERT OR IGNORE INTO checkpoints (adapter) VALUES (?)", (adapter,))

    def set_checkpoint(self, adapter: str, **fields) -> None:
        """Update named checkpoint fields of an adapter."""
        allowed = {"read_cursor", "cursor_at", "applied_seq", "last_reconcile_at",
                   "last_success_at", "reconcile_requested", "paused", "paused_at"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown checkpoint fields {sorted(unknown)}")
        with self.transaction():
            self._ensure_checkpoint(adapter)
            assignments = ", ".join(f"{name} = ?" for name in fields)
            self._write(f"UPDATE checkpoints SET {assignments} WHERE adapter = ?",
                        [*fields.values(), adapter])

    # -- ingest ---------------------------------------------------------------

    def ingest_page(self, adapter: str, page: Page, *, save_cursor: bool = True,
                    resubscribe_policy: str = "local") -> IngestCounts:
        """Stage a page's new opt-outs, record stronger reasons, rejections, notices and re-subscribes.

        With `save_cursor`, the page's cursor is saved in the same transaction, so a
        crash keeps both or neither. `resubscribe_policy` is the adapter's `recipient_resubscribe`.
        An item whose address or scope holds NUL is a rejected row (_without_nul).
        """
        page = _without_nul(adapter, page)
        counts = IngestCounts(read=len(page.optouts), rejected=len(page.rejected))
        now = utc_now()
        with self.transaction():
            self._ensure_temp_tables()
            self._ensure_checkpoint(adapter)
            self._write("DELETE FROM incoming")
            self._load_incoming(page.optouts)
            counts.ignored_lifted = self._drop_lifted("incoming")  # pragma: no mutate (SQL name: any case)
            counts.ignored_echoes = self._write(
                f"DELETE FROM incoming WHERE {_echo_sql('incoming', '?')}", (adapter,)).rowcount
            counts.held = self.conn.execute(
                "SELECT count(*) FROM incoming i WHERE EXISTS"
                " (SELECT 1 FROM suppressions s WHERE s.address = i.address AND s.scope = i.scope)").fetchone()[0]
            counts.changed = self._record_stronger(
                now, "incoming", "?", select_params=(adapter,),  # pragma: no mutate (SQL name: any case)
            )
            counts.staged = self._stage(
                "FROM incoming i WHERE NOT EXISTS"
                " (SELECT 1 FROM suppressions s WHERE s.address = i.address AND s.scope = i.scope)",
                (adapter, now))
            resubscribes.end_releases(self, "incoming", adapter, now)  # pragma: no mutate (SQL name: any case)
            if page.resubscribes:
                done = resubscribes.record(self, adapter, page.resubscribes, resubscribe_policy, now, page.optouts)
                counts.released = done.released + done.lifted
            if page.rejected:
                self.conn.executemany(
                    "INSERT INTO failures (adapter, kind, location, address, value, message, first_at, last_at)"
                    " VALUES (?, 'rejected', ?, NULL, ?, ?, ?, ?)",
                    [(adapter, r.where, r.value, r.reason, now, now) for r in page.rejected],
                )
            if page.notices:
                self._append_events(
                    ("recorded_at", "kind", "address", "scope", "reason", "origin", "source", "occurred_at",
                     "message", "details"),
                    [(now, "observed", n.address, n.scope, n.reason, n.origin, adapter, n.occurred_at,
                      (n.details or {}).get("message", "seen at source; no suppression removed"),
                      _details_json(n.details)) for n in page.notices],
                )
            if save_cursor and page.cursor is not None:
                self._write("UPDATE checkpoints SET read_cursor = ?, cursor_at = ? WHERE adapter = ?",
                            (page.cursor, now, adapter))
        return counts

    def _load_incoming(self, optouts: list[OptOut], table: str = "incoming") -> None:  # pragma: no mutate (name case)
        # Within one page (or one full read) the strongest observation of an (address, scope) wins.
        upsert = (" ON CONFLICT (address, scope) DO UPDATE SET reason = excluded.reason,"
                  " origin = excluded.origin, occurred_at = excluded.occurred_at, details = excluded.details"
                  f" WHERE {_stronger_sql('excluded', table)}")
        rows = [(o.address, o.scope, o.reason, o.origin, o.occurred_at and canonical_time(o.occurred_at),
                 o.details) for o in optouts]
        # The whole page goes in as one JSON array through json_each: one C-level encode and one
        # statement instead of a bound statement per row (a third less time on a 1M-row full read).
        payload = json.dumps(rows, separators=(",", ":"))
        if "\\u0000" not in payload:  # ->> would cut a text at a NUL character
            self._write(
                f"INSERT INTO {table} ({_OPTOUT_COLUMNS}) SELECT j.value ->> 0, j.value ->> 1,"
                " j.value ->> 2, j.value ->> 3, j.value ->> 4, json_extract(j.value, '$[5]')"
                f" FROM json_each(?) j WHERE true{upsert}", (payload,))
            return
        self.conn.executemany(f"INSERT INTO {table} ({_OPTOUT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?){upsert}",
                              [(*row[:5], _details_json(row[5])) for row in rows])

    def _stage(self, from_where_sql: str, params: tuple) -> int:
        """Stage the rows a `FROM ... WHERE ...` (alias i) gives; the number of new staged rows.

        An opt-out staged earlier in the same cycle is replaced by a more binding one
        (a spam complaint read after an unsubscribe of the same address).
        """
        before = self.conn.execute("SELECT count(*) FROM staged WHERE adapter = ?", (params[0],)).fetchone()[0]
        self._write(
            f"INSERT INTO staged ({_OPTOUT_COLUMNS}, adapter, staged_at)"
            f" SELECT {', '.join('i.' + c for c in _OPTOUT_COLUMNS.split(', '))}, ?, ? {from_where_sql}"
            " ON CONFLICT (adapter, address, scope) DO UPDATE SET reason = excluded.reason,"
            " origin = excluded.origin, occurred_at = excluded.occurred_at, details = excluded.details"
            f" WHERE {_stronger_sql('excluded', 'staged')}",
            params)
        return self.conn.execute("SELECT count(*) FROM staged WHERE adapter = ?", (params[0],)).fetchone()[0] - before

    def _drop_lifted(self, table: str) -> int:
        # A lifted opt-out returns only through an opt-out dated after the lift.
        return self._write(
            f"DELETE FROM {table} WHERE EXISTS (SELECT 1 FROM lifts l WHERE l.address = {table}.address"
            f" AND l.scope = {table}.scope AND ({table}.occurred_at IS NULL"
            f" OR {table}.occurred_at <= l.lifted_at))"
        ).rowcount

    def _record_stronger(self, now: str, table: str, source_sql: str, extra_where: str = "",
                         select_params: tuple = (), update_params: tuple = ()) -> int:
        """Raise stored reasons/origins that rows of `table` (alias n) bind more strongly; log each change."""
        condition = f"{_stronger_sql('n', 's')} {extra_where}"
        changed = self._write(
            "INSERT INTO events (recorded_at, kind, address, scope, reason, origin, source, occurred_at,"
            f" message, details) SELECT ?, 'changed', n.address, n.scope, n.reason, n.origin, {source_sql},"
            " n.occurred_at, 'was ' || s.reason || ' by ' || s.origin, n.details"
            f" FROM {table} n JOIN suppressions s ON s.address = n.address AND s.scope = n.scope"
            f" WHERE {condition}",
            (now, *select_params),
        ).rowcount
        if changed:
            self._write(
                "UPDATE suppressions SET reason = n.reason, origin = n.origin,"
                f" details = COALESCE(n.details, suppressions.details) FROM {table} n"
                " WHERE n.address = suppressions.address AND n.scope = suppressions.scope"
                f" AND {_stronger_sql('n', 'suppressions')} {extra_where}",
                update_params,
            )
        return changed

    def staged_optouts(self, adapter: str, limit: int | None = None) -> list[OptOut]:
        """The new opt-outs from this adapter that wait in staging, in the order they were staged
        (the first `limit` of them, or all)."""
        return [OptOut(address, scope, reason, origin, occurred_at, _details_from(details))
                for address, scope, reason, origin, occurred_at, details in self.conn.execute(
                    f"SELECT {_OPTOUT_COLUMNS} FROM staged WHERE adapter = ? ORDER BY rowid LIMIT ?",
                    (adapter, -1 if limit is None else limit))]

    def staged_count(self, adapter: str) -> int:
        """How many new opt-outs from this adapter wait in staging."""
        return self.conn.execute("SELECT count(*) FROM staged WHERE adapter = ?", (adapter,)).fetchone()[0]

    def promote(self, adapter: str, *, legal_basis: str | None = None,
                explanation: str | None = None) -> int:
        """Turn an adapter's staged opt-outs into suppressions, one 'suppressed' event each."""
        now = utc_now()
        with self.transaction():
            self._drop_lifted("staged")
            # Staged rows that another source suppressed meanwhile may still strengthen it.
            self._record_stronger(now, "staged", "n.adapter", "AND n.adapter = ?", (adapter,), (adapter,))
            added = self.suppress_selected(
                "SELECT ?, 'suppressed', st.address, st.scope, st.reason, st.origin, st.adapter,"
                " st.occurred_at, ?, ?, st.details FROM staged st WHERE st.adapter = ? AND NOT EXISTS"
                " (SELECT 1 FROM suppressions s WHERE s.address = st.address AND s.scope = st.scope)"
                " ORDER BY st.rowid",
                (now, legal_basis, explanation, adapter))
            self._write("DELETE FROM staged WHERE adapter = ?", (adapter,))
        return added

    def suppress_selected(self, select_sql: str, params: Iterable = ()) -> int:
        """Add a 'suppressed' event and a suppression for each row a SELECT gives; how many.

        The SELECT yields (recorded_at, kind, address, scope, reason, origin, source,
        occurred_at, legal_basis, explanation, details) for (address, scope) pairs not yet
        suppressed. Call it inside a transaction.
        """
        before = self.conn.execute("SELECT COALESCE(max(seq), 0) FROM events").fetchone()[0]
        added = self._write(
            "INSERT INTO events (recorded_at, kind, address, scope, reason, origin, source,"
            " occurred_at, legal_basis, explanation, details) " + select_sql, params).rowcount
        self._write(
            "INSERT INTO suppressions (address, scope, reason, origin, source, occurred_at,"
            " recorded_at, details, seq)"
            " SELECT address, scope, reason, origin, source, occurred_at, recorded_at, details, seq"
            " FROM events WHERE seq > ? AND kind = 'suppressed'", (before,))
        return added

    def pause(self, adapter: str) -> None:
        """Hold an adapter's staged opt-outs for a person's approval."""
        self.set_checkpoint(adapter, paused=1, paused_at=utc_now())

    def unpause(self, adapter: str) -> None:
        """Release the guard pause of an adapter."""
        self.set_checkpoint(adapter, paused=0, paused_at=None)

    # -- push -----------------------------------------------------------------

    def pending_events(self, adapter: str, after_seq: int, limit: int) -> tuple[list[PendingEvent], int]:
        """Up to `limit` suppression events after `after_seq` that this sink still needs.

        Left out: events whose suppression was since lifted or replaced, events that
        came from this adapter (no echo), and events already applied to it. Returns
        the events and the highest seq examined, so the watermark can move past the
        events that were left out.
        """
        # One statement: `done` marks events already applied to this sink (events_by_ref index).
        rows = self.conn.execute(
            "SELECT e.seq, e.source, e.recorded_at, s.address, s.scope, s.reason, s.origin,"
            " s.occurred_at, s.details, EXISTS (SELECT 1 FROM events a WHERE a.ref_seq = e.seq"
            " AND a.target = ? AND a.kind = 'applied')"
            # Released here by the recipient's own re-subscribe: never re-applied here.
            " OR EXISTS (SELECT 1 FROM releases r WHERE r.address = s.address AND r.scope = s.scope"
            " AND r.adapter = ?) AS done"
            " FROM events e LEFT JOIN suppressions s ON s.seq = e.seq"
            " WHERE e.kind = 'suppressed' AND e.seq > ? ORDER BY e.seq LIMIT ?",
            (adapter, adapter, after_seq, limit),
        ).fetchall()
        if not rows:
            return [], after_seq
        # An import's rows share one details text: decoded once per text, not once per row.
        details_of = functools.lru_cache(maxsize=256)(_details_from)  # pragma: no mutate (memory only)
        pending = [
            PendingEvent(seq, OptOut(address, scope, reason, origin, occurred_at, details and details_of(details)),
                         source, recorded_at)
            for seq, source, recorded_at, address, scope, reason, origin, occurred_at, details, done in rows
            if address is not None and source != adapter and not done
        ]
        return pending, rows[-1][0]

    def mark_inflight(self, adapter: str, seqs: list[int]) -> set[int]:
        """Record, committed, that these events are about to be sent to a sink (just before the call).

        Should the process die before the outcomes are recorded, the marks say the sink
        may hold them through us. Returns the seqs a dead process had marked already:
        give them to `record_push` as `resent`.
        """
        payload = json.dumps(seqs)
        with self.transaction():
            earlier = {row[0] for row in self.conn.execute(
                "SELECT seq FROM inflight WHERE adapter = ? AND seq IN (SELECT value FROM json_each(?))",
                (adapter, payload))}
            # An earlier mark keeps its time (OR IGNORE): it is the same send, repeated.
            self._write("INSERT OR IGNORE INTO inflight (adapter, seq, marked_at)"
                        " SELECT ?, value, ? FROM json_each(?)", (adapter, utc_now(), payload))
        return earlier

    def clear_inflight(self, adapter: str, seqs: list[int]) -> None:
        """Drop the marks of a send the process saw fail as a whole (nothing to record)."""
        with self.transaction():
            self._write("DELETE FROM inflight WHERE adapter = ? AND seq IN (SELECT value FROM json_each(?))",
                        (adapter, json.dumps(seqs)))

    def record_push(self, adapter: str, outcomes: list[PushOutcome], watermark: int | None,
                    resent: set[int] | frozenset[int] = frozenset()) -> None:
        """Record per-item outcomes of one push batch and move the watermark, in one transaction.

        The batch's in-flight marks go in the same transaction. An "already" for a seq in
        `resent` (marked by a send whose process died) is recorded as our apply: that send put it there.
        """
        now = utc_now()
        events, resolved, failures = _push_rows(adapter, outcomes, resent, now)
        with self.transaction():
            self._ensure_checkpoint(adapter)
            # Bound values, many rows a statement; not one JSON array through json_each as ingest
            # does: with ten columns, SQLite 3.40's ->> parses each row's array once per column,
            # which measured twice as slow as even a statement per row.
            self._append_events(PUSH_EVENT_COLUMNS, events)
            self.conn.executemany(
                "INSERT INTO failures (adapter, kind, address, scope, ref_seq, message, first_at, last_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (adapter, ref_seq) WHERE ref_seq IS NOT NULL"
                " DO UPDATE SET kind = excluded.kind, message = excluded.message, last_at = excluded.last_at,"
                " attempts = attempts + 1, resolved_at = NULL, dismissed_reason = NULL", failures)
            if resolved and self.conn.execute(  # pragma: no mutate (a saving: an UPDATE of no rows changes nothing)
                    "SELECT 1 FROM failures WHERE adapter = ? AND ref_seq IS NOT NULL AND resolved_at IS NULL"
                    " LIMIT 1", (adapter,)).fetchone():
                self.conn.executemany(
                    "UPDATE failures SET resolved_at = ? WHERE adapter = ? AND ref_seq = ? AND resolved_at IS NULL",
                    resolved)
            if outcomes:
                self._write("DELETE FROM inflight WHERE adapter = ? AND seq IN (SELECT value FROM json_each(?))",
                            (adapter, json.dumps([item.seq for item in outcomes])))
            if watermark is not None:
                self._write("UPDATE checkpoints SET applied_seq = max(applied_seq, ?) WHERE adapter = ?",
                            (watermark, adapter))

    def record_applied(self, adapter: str, results: list[tuple[int, OptOut, ApplyResult]],
                       resent: set[int] | frozenset[int] = frozenset()) -> None:
        """Record outcomes of a reconcile re-apply (no watermark change): (seq, stored opt-out, result)."""
        self.record_push(adapter, [PushOutcome(seq, optout, r) for seq, optout, r in results], None, resent)

    def pending_summary(self, adapter: str, applied_seq: int) -> tuple[int, str | None]:
        """How many suppression events this sink still needs, and when the oldest was recorded."""
        row = self.conn.execute(
            "SELECT count(*), min(e.recorded_at) FROM events e JOIN suppressions s ON s.seq = e.seq"
            " WHERE e.kind = 'suppressed' AND e.seq > ? AND e.source != ? AND NOT EXISTS"
            " (SELECT 1 FROM events a WHERE a.ref_seq = e.seq AND a.target = ? AND a.kind = 'applied')"
            " AND NOT EXISTS (SELECT 1 FROM releases r WHERE r.address = s.address AND r.scope = s.scope"
            " AND r.adapter = ?)",
            (applied_seq, adapter, adapter, adapter),
        ).fetchone()
        return row[0], row[1]

    # -- reconcile ------------------------------------------------------------

    def begin_source_set(self) -> None:
        """Empty the temp table that holds a source's full set during a reconcile."""
        self._ensure_temp_tables()
        self._write("DELETE FROM source_set")

    def add_to_source_set(self, optouts: list[OptOut]) -> None:
        """Add a page of a source's full read to the reconcile temp table (one transaction).

        Rows holding NUL are left out, as ingest rejects them (_without_nul).
        """
        with self.transaction():
            self._load_incoming([o for o in optouts if not _holds_nul(o)], "source_set")

    def stage_from_source_set(self, adapter: str) -> IngestCounts:
        """Stage what the full read holds and the store lacks; record stronger reasons it shows.

        Rows of a lifted (address, scope) dated at or before the lift, or undated, are left out.
        """
        now = utc_now()
        counts = IngestCounts()
        with self.transaction():
            self._ensure_checkpoint(adapter)
            not_echo = f"AND NOT {_echo_sql('n', '?')}"
            counts.changed = self._record_stronger(now, "source_set", "?", not_echo, (adapter, adapter),
                                                   (adapter,))
            resubscribes.end_releases(self, "source_set", adapter, now)
            counts.staged = self._stage(
                "FROM source_set i WHERE NOT EXISTS"
                " (SELECT 1 FROM suppressions s WHERE s.address = i.address AND s.scope = i.scope)"
                " AND NOT EXISTS (SELECT 1 FROM lifts l WHERE l.address = i.address AND l.scope = i.scope"
                f" AND (i.occurred_at IS NULL OR i.occurred_at <= l.lifted_at)) AND NOT {_echo_sql('i', '?')}",
                (adapter, now, adapter))
        return counts

    def begin_merge_missing(self) -> None:
        """Empty source_set and the temp table of seqs a merge diff (state/merge_diff.py) found missing."""
        self.begin_source_set()
        self._write("CREATE TEMP TABLE IF NOT EXISTS merge_missing (seq INTEGER PRIMARY KEY)")
        self._write("DELETE FROM merge_missing")

    def add_merge_missing(self, seqs: list[int]) -> None:
        """Record seqs of suppressions a merge diff found missing at a sink (one transaction)."""
        with self.transaction():
            self._write("INSERT OR IGNORE INTO merge_missing SELECT value FROM json_each(?)", (json.dumps(seqs),))

    def suppression_keys(self, page: int) -> Iterator[list[tuple[int, str, str]]]:
        """Every suppression's (seq, address, scope), by address and scope, in pages of the primary key.

        A page holds whole addresses (every scope of each), and is read to the end at once, so
        no read snapshot is held between pages.
        """
        after = ""
        while True:
            rows = self.conn.execute(
                "SELECT seq, address, scope FROM suppressions WHERE address > ?"
                " ORDER BY address, scope LIMIT ?", (after, page)).fetchall()
            if not rows:
                return
            if len(rows) == page:
                # The last address may go on past the page: it comes whole with the next one.
                whole = [row for row in rows if row[1] != rows[-1][1]]
                if not whole:
                    whole = self.conn.execute("SELECT seq, address, scope FROM suppressions WHERE address = ?"
                                              " ORDER BY scope", (rows[-1][1],)).fetchall()
                rows = whole
            after = rows[-1][1]
            yield rows

    def missing_at_source(self, scopes: set[str], unmapped_as_global: bool,
                          batch: int, adapter: str | None = None, *,
                          merged: bool = False) -> Iterator[list[tuple[int, OptOut]]]:
        """Stream, in batches, suppressions the sink should hold but its full read lacked.

        A suppression of a scope the sink cannot represent is expected there as a
        global one when `unmapped_as_global`, and not at all otherwise. One the recipient
        re-subscribed to at the sink `adapter` (a release) is not expected there. With `merged`,
        only those a merge diff found missing (temp.merge_missing) are candidates;
        source_set then holds just the read's rows that came out of order.
        """
        self._ensure_temp_tables()
        self._sink_scopes(scopes | {"*"})
        expected = ("CASE WHEN s.scope IN (SELECT scope FROM sink_scopes) THEN s.scope"
                    + (" ELSE '*' END" if unmapped_as_global else " END"))
        last = ("", "")
        # A batch can be a vendor's whole batch limit, so its rows are built straight from the
        # cursor and repeated texts (scope, reason, origin) are shared rather than copied per row.
        shared: dict[str, str] = {}
        shared_details = functools.lru_cache(maxsize=256)(_details_from)
        while True:
            cursor = self.conn.execute(
                f"SELECT s.seq, {', '.join('s.' + c for c in _OPTOUT_COLUMNS.split(', '))}"
                f" FROM suppressions s WHERE (s.address, s.scope) > (?, ?)"
                + (f" AND s.seq IN (SELECT seq FROM {self.dialect.temp_table('merge_missing')})" if merged else "") +
                f" AND {expected} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM source_set t"
                f" WHERE t.address = s.address AND t.scope = {expected})"
                " AND NOT EXISTS (SELECT 1 FROM releases r WHERE r.address = s.address AND r.scope = s.scope"
                " AND r.adapter = ?) ORDER BY s.address, s.scope LIMIT ?",
                (*last, adapter, batch),
            )
            rows = [(seq, OptOut(address, shared.setdefault(scope, scope), shared.setdefault(reason, reason),
                                 shared.setdefault(origin, origin), occurred_at and shared.setdefault(
                                     occurred_at, occurred_at), details and shared_details(details)))
                    for seq, address, scope, reason, origin, occurred_at, details in cursor]
            if len(shared) > 10_000:  # texts of one import repeat; others need not stay shared
                shared.clear()
                shared_details.cache_clear()
            if not rows:
                return
            last = (rows[-1][1].address, rows[-1][1].scope)
            yield rows
            del rows  # not held while the next batch is read

    def _sink_scopes(self, scopes: set[str]) -> None:
        """Fill the temp table sink_scopes with the scopes a sink represents (missing_at_source)."""
        self._write("DROP TABLE IF EXISTS temp.sink_scopes")
        self._write("CREATE TEMP TABLE sink_scopes (scope TEXT PRIMARY KEY)")
        self.conn.executemany("INSERT OR IGNORE INTO sink_scopes VALUES (?)", [(s,) for s in scopes])

    # -- runs and failures ----------------------------------------------------

    def record_run(self, adapter: str, phase: str, started_at: str, duration_ms: int, *,
                   pulled: int = 0, staged: int = 0, pushed: int = 0, failed: int = 0,
                   rejected: int = 0, paused: bool = False, error: BaseException | None = None) -> None:
        """Append one row to the runs table; a success also moves last_success_at."""
        now = utc_now()
        with self.transaction():
            self._ensure_checkpoint(adapter)
            self._write(
                "INSERT INTO runs (adapter, phase, started_at, finished_at, duration_ms, pulled, staged,"
                " pushed, failed, rejected, paused, error_class, error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (adapter, phase, started_at, now, duration_ms, pulled, staged, pushed, failed, rejected,
                 int(paused), type(error).__name__ if error else None, str(error) if error else None),
            )
            if error is None:
                self._write("UPDATE checkpoints SET last_success_at = ? WHERE adapter = ?", (now, adapter))

    def last_run(self, adapter: str) -> dict | None:
        """The newest runs row of an adapter, as a dict."""
        cursor = self.conn.execute("SELECT * FROM runs WHERE adapter = ? ORDER BY id DESC LIMIT 1", (adapter,))
        row = cursor.fetchone()
        return dict(zip([c[0] for c in cursor.description], row)) if row else None

    def failures(self, adapter: str | None = None, include_resolved: bool = False) -> Iterator[dict]:
        """Open failures (rejected input, refused or parked applies, unmapped topics), oldest first."""
        where, params = [], []
        if adapter:
            where.append("adapter = ?")
            params.append(adapter)
        if not include_resolved:
            where.append("resolved_at IS NULL")
        sql = ("SELECT id, adapter, kind, address, scope, ref_seq, location, value, message, first_at, last_at,"
               " attempts, resolved_at, dismissed_reason FROM failures")
        if where:
            sql += " WHERE " + " AND ".join(where)
        cursor = self.conn.execute(sql + " ORDER BY id", params)
        names = [c[0] for c in cursor.description]
        for row in cursor:
            yield dict(zip(names, row))

    def dismiss_failures(self, ids: list[int], reason: str, by: str) -> list[dict]:
        """Close open failures by id with a reason, one audit event each; the rows as they were.

        All or nothing: an id that is unknown or already closed raises InputError naming it,
        and a parked apply (retried every cycle, it closes itself) raises RefusedError.
        """
        reason = reason.strip()
        if not reason:
            raise InputError("a reason is required to dismiss a failure")
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            raise InputError("name at least one failure id to dismiss")
        now = utc_now()
        with self.transaction():
            rows = {row["id"]: row for row in self._failures_by_id(wanted)}
            unknown = [str(i) for i in wanted if i not in rows]
            if unknown:
                raise InputError(f"no failure with id {', '.join(unknown)}; nothing was dismissed "
                                 "(optout-sync failures lists the open ones)")
            closed = [str(i) for i in wanted if rows[i]["resolved_at"] is not None]
            if closed:
                raise InputError(f"failure {', '.join(closed)} is already closed; nothing was dismissed")
            parked = [str(i) for i in wanted if rows[i]["kind"] == TRANSIENT]
            if parked:
                raise RefusedError(f"failure {', '.join(parked)} is a parked apply, retried every cycle until it "
                                   "succeeds; nothing was dismissed")
            self.conn.executemany(
                "UPDATE failures SET resolved_at = ?, dismissed_reason = ? WHERE id = ?",
                [(now, reason, i) for i in wanted])
            self._append_events(
                ("recorded_at", "kind", "address", "scope", "target", "message", "details"),
                [(now, "failure_dismissed", rows[i]["address"] or "", rows[i]["scope"] or "", rows[i]["adapter"], reason,
                  _details_json({"failure_id": i, "failure_kind": rows[i]["kind"], "by": by,
                                 "location": rows[i]["location"]}))
                 for i in wanted])
        return [rows[i] for i in wanted]

    def _failures_by_id(self, ids: list[int]) -> Iterator[dict]:
        # One lookup per id: a person names a handful, and the SQL stays a constant.
        for failure_id in ids:
            cursor = self.conn.execute("SELECT * FROM failures WHERE id = ?", (failure_id,))
            row = cursor.fetchone()
            if row is not None:
                yield dict(zip([c[0] for c in cursor.description], row))

    def failure_count(self, adapter: str) -> int:
        """How many open failures an adapter has."""
        return self.conn.execute(
            "SELECT count(*) FROM failures WHERE adapter = ? AND resolved_at IS NULL", (adapter,)
        ).fetchone()[0]

    # -- adapter memory -----------------------------------------------------------

    def adapter_memory(self, adapter: str) -> dict[str, str]:
        """What an adapter learnt about its vendor and asked to keep (key -> value)."""
        return dict(self.conn.execute("SELECT key, value FROM adapter_memory WHERE adapter = ?", (adapter,)))

    def save_adapter_memory(self, adapter: str, changes: dict[str, str | None]) -> None:
        """Store changed memory values of an adapter in one transaction; a None value forgets its key."""
        now = utc_now()
        with self.transaction():
            for key, value in changes.items():
                if value is None:
                    self._write("DELETE FROM adapter_memory WHERE adapter = ? AND key = ?", (adapter, key))
                else:
                    self._write("INSERT INTO adapter_memory (adapter, key, value, updated_at) VALUES (?,?,?,?)"
                                " ON CONFLICT (adapter, key) DO UPDATE SET value = excluded.value,"
                                " updated_at = excluded.updated_at", (adapter, key, value, now))

    # -- reads for people -------------------------------------------------------

    def iter_suppressions(self, *, reasons: list[str] | None = None, scope: str | None = None,
                          source: str | None = None, since: str | None = None,
                          until: str | None = None, count: bool = False) -> Iterator[tuple]:
        """Stream (address, scope, reason, origin, source, occurred_at or '', released at) rows, by address.

        `since` (inclusive) and `until` (exclusive) compare with when the opt-out
        happened, or, where the source did not say, when it was recorded. With
        `count`, one row: the number of matching suppressions.
        """
        sql, params = self._suppressions_sql(reasons, scope, source, since, until, count)
        # The cursor itself is the iterator, so a caller can hand it to C code (csv.writerows).
        return self.conn.execute(sql, params)

    def _suppressions_sql(self, reasons: list[str] | None, scope: str | None, source: str | None,
                          since: str | None, until: str | None, count: bool) -> tuple[str, list]:
        """iter_suppressions' query and its parameters (`?` placeholders)."""
        where, params = [], []
        if reasons:
            where.append(f"reason IN ({','.join('?' * len(reasons))})")
            params += reasons
        for column, value in (("scope", scope), ("source", source)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since:
            where.append("COALESCE(occurred_at, recorded_at) >= ?")
            params.append(since)
        if until:
            where.append("COALESCE(occurred_at, recorded_at) < ?")
            params.append(until)
        # An unknown occurred_at is '' (as a CSV shows it), so every cell of a row is text.
        # Where the recipient's own re-subscribe released it (state.resubscribes), ';'-separated; the
        # lookup per row costs a third more time, so a store without releases skips it.
        released = (f" COALESCE((SELECT {self.dialect.group_concat('x.adapter', ';')} FROM (SELECT r.adapter"
                    " FROM releases r WHERE r.address = suppressions.address AND r.scope = suppressions.scope"
                    " ORDER BY r.adapter) x), '')" if self.conn.execute("SELECT 1 FROM releases LIMIT 1").fetchone() else " ''")
        columns = "count(*)" if count else f"address, scope, reason, origin, source, COALESCE(occurred_at, ''),{released}"
        sql = f"SELECT {columns} FROM suppressions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return (sql if count else sql + " ORDER BY address, scope"), params

    def suppression(self, address: str, scope: str = "*") -> dict | None:
        """The stored suppression of (address, scope), or None."""
        cursor = self.conn.execute("SELECT * FROM suppressions WHERE address = ? AND scope = ?", (address, scope))
        row = cursor.fetchone()
        return dict(zip([c[0] for c in cursor.description], row)) if row else None

    def count_suppressions(self) -> int:
        """How many (address, scope) pairs are suppressed."""
        return self.conn.execute("SELECT count(*) FROM suppressions").fetchone()[0]

    def events_for(self, address: str) -> list[dict]:
        """Every event of one address, oldest first."""
        cursor = self.conn.execute("SELECT * FROM events WHERE address = ? ORDER BY seq", (address,))
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row)) for row in cursor]

    def events_after(self, after_seq: int, limit: int) -> list[dict]:
        """At most `limit` events with seq > `after_seq`, oldest first, every column.

        A range of the primary key, read to the end at once: the read snapshot ends with the
        call, so a reader paging through a large log never holds back the daemon's WAL checkpoints.
        """
        cursor = self.conn.execute("SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit))
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def last_event_seq(self) -> int:
        """The highest seq in the event log, 0 when it is empty."""
        return self.conn.execute("SELECT COALESCE(max(seq), 0) FROM events").fetchone()[0]


def _create_private_file(path: Path) -> None:
    """Create the database file with mode 0600 before SQLite opens it (SQLite would use the umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # A -wal or -shm without its database is left from a deleted store: SQLite would replay
        # that WAL into the new file.
        for suffix in ("-wal", "-shm"):
            try:
                os.unlink(path.with_name(path.name + suffix))
            except FileNotFoundError:
                pass
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    # SQLite gives its -wal and -shm files the mode of the database file.
