"""`optout-sync store copy`: move a store from SQLite to PostgreSQL, or back, and prove the copy equal.

The source is held for the whole copy, and the copy refused while a daemon holds it: a SQLite
store through its lock file (connector/lock.py), which no daemon can then take; a PostgreSQL store
when any adapter lease is live (connector/leases.py), and then through the event log's append lock
(state/pg_events.py) held as a session lock, so no writer commits while the copy reads. Either
way the copy reads one snapshot.

The destination must hold no data: a SQLite file that does not exist yet, or a PostgreSQL database
that is empty or holds an optout-sync store with nothing in it but its identity (what a first
connection migrates). Nothing is ever merged.

Verification: per table the row count and a SHA-256 over its rows, computed the same way on both
sides (state/store_copy.py); the event log's is printed. A copy that differs is never left looking
like a good one: PostgreSQL loads and verifies in one transaction, rolled back on a difference
(the database is left as an empty store); SQLite builds the copy in a temporary file beside the
destination, verified before it gets its name, and removed on a difference.

A PostgreSQL URL may hold a password: no message here shows it (state/pg_errors.py).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from state import pg_events, pg_schema, store_copy
from state.errors import InputError, RefusedError, StoreError
from state.pg_errors import BAD_URL, describe
from state.schema import SCHEMA_VERSION
from state.store import Store
from state.store_copy import CopyMismatch, TableFacts  # noqa: F401  (re-exported for callers)

from .backup import _sync_folder
from .lock import StoreLock

# How long a PostgreSQL source's writers (import, lift, a webhook receiver) may keep the append lock
# before the copy gives up waiting for it.
APPEND_LOCK_WAIT = 15.0


@dataclass(frozen=True)
class CopyReport:
    """A verified copy: both stores named (never a password), the schema version, each table's facts."""

    source: str
    destination: str
    schema_version: int
    tables: dict[str, TableFacts]

    @property
    def events_sha256(self) -> str:
        """The event log's checksum, equal on both sides."""
        return self.tables["events"].sha256


def is_postgresql(location: str | os.PathLike) -> bool:
    """True for a PostgreSQL URL, False for a SQLite file path."""
    return str(location).startswith(("postgresql://", "postgres://"))


def read_url_file(path: Path, option: str) -> str:
    """The URL held in a secret file (its first line); InputError naming the file otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{option} {path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{option} {path}: is a folder, not a file holding a URL") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{option} {path}: cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    lines = text.strip().splitlines()
    if not lines or not lines[0].strip():
        raise InputError(f"{option} {path}: the file is empty; put the store's URL in it")
    return lines[0].strip()


def copy_store(source: str | os.PathLike, destination: str | os.PathLike, *,
               after_load: Callable[[object], None] | None = None) -> CopyReport:
    """Copy the store at `source` to `destination` (one a SQLite path, the other a PostgreSQL URL); verify it.

    RefusedError while a daemon holds the source or when the destination holds data; InputError
    for a bad location; CopyMismatch (a StoreError) when the verification finds a difference, the
    copy then rolled back or removed. `after_load` (for tests) runs on the destination's connection
    between the load and the verification.
    """
    _check_backends(source, destination)
    if is_postgresql(destination):
        _parse_url(str(destination))  # a bad URL is found before the source is touched
        with _sqlite_source(Path(source)) as src:
            return _copy_to_pg(src, str(destination), after_load)
    _check_new_file(Path(destination))
    with _pg_source(str(source)) as src:
        return _copy_to_sqlite(src, Path(destination), after_load)


def verify_copy(source: str | os.PathLike, destination: str | os.PathLike) -> CopyReport:
    """Compare two existing stores (one SQLite, one PostgreSQL) table by table; CopyMismatch if they differ.

    Takes no lock: compare stores no daemon writes to.
    """
    _check_backends(source, destination)
    sqlite_side, pg_side = (source, destination) if is_postgresql(destination) else (destination, source)
    path, url = Path(sqlite_side), str(pg_side)
    _require_file(path)
    with _open_sqlite(path) as lite, _read_snapshot_sqlite(lite) as lite_tables:
        specs = store_copy.table_specs(lite.conn)
        lite_facts = store_copy.fingerprint(lite_tables, specs)
        with _open_pg(url) as conn:
            where = _pg_name(conn)
            _require_pg_store(conn, url, where)
            store_copy.check_pg_tables(conn, specs)
            with _pg_errors(url, f"cannot read the store {where}"), _read_snapshot_pg(conn):
                pg_facts = store_copy.fingerprint(store_copy.PgTables(conn, url, where), specs)
    ours, theirs = (lite_facts, pg_facts) if sqlite_side == source else (pg_facts, lite_facts)
    source_name, copy_name = (str(path), where) if sqlite_side == source else (where, str(path))
    found = store_copy.differences(ours, theirs)
    if found:
        raise CopyMismatch(f"the copy {copy_name} does not match its source {source_name}: {'; '.join(found)}", found)
    return CopyReport(source_name, copy_name, SCHEMA_VERSION, ours)


# -- the locations ------------------------------------------------------------------


def _check_backends(source, destination) -> None:
    if is_postgresql(source) == is_postgresql(destination):
        if is_postgresql(source):
            raise InputError("both the source and the destination are PostgreSQL; store copy moves a store between "
                             "SQLite and PostgreSQL (use pg_dump to copy one PostgreSQL database to another)")
        raise InputError(f"both the source and the destination ({destination}) are SQLite files; store copy moves "
                         "a store between SQLite and PostgreSQL (use optout-sync backup to copy a SQLite store)")


def _parse_url(url: str) -> None:
    """InputError(BAD_URL) unless libpq can read the URL (parsing only: nothing connects)."""
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError as exc:
        raise StoreError(f"a PostgreSQL store needs psycopg 3, which cannot be imported: {exc}") from None
    try:
        port = conninfo_to_dict(url).get("port") or ""
    except Exception:  # noqa: BLE001 - libpq's parse errors quote the URL, password and all
        raise InputError(BAD_URL) from None
    if not all(part.isdigit() or not part for part in str(port).split(",")):
        raise InputError(BAD_URL)  # else found only when connecting, as a runtime failure


def _require_file(path: Path) -> None:
    try:
        if path.is_file():
            return
    except OSError:
        pass
    raise InputError(f"no store at {path}: no such file")


def _check_new_file(path: Path) -> None:
    folder = path.absolute().parent
    if not folder.is_dir():
        raise InputError(f"cannot write the copy {path}: the folder {folder} does not exist")
    if path.exists() or path.is_symlink():
        raise RefusedError(f"{path} already exists; store copy writes a new store file and never merges into or "
                           "replaces one: give a path that does not exist")


# -- SQLite ------------------------------------------------------------------------


@contextmanager
def _open_sqlite(path: Path, *, create: bool = False) -> Iterator[Store]:
    store = Store(path, create=create)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def _read_snapshot_sqlite(store: Store) -> Iterator[store_copy.SqliteTables]:
    """One read transaction: every read inside it sees the same snapshot (WAL)."""
    store.conn.execute("BEGIN")
    try:
        yield store_copy.SqliteTables(store.conn, str(store.path))
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the store {store.path}: {exc}") from None
    finally:
        if store.conn.in_transaction:
            store.conn.execute("ROLLBACK")


@contextmanager
def _sqlite_source(path: Path) -> Iterator[Store]:
    """The SQLite source, opened under its lock (RefusedError while a daemon holds it)."""
    _require_file(path)
    lock = StoreLock(path, command="store copy")
    try:
        lock.acquire()
    except StoreError:
        holder = lock.holder()
        who = (f"pid {holder.pid or 'unknown'}, `{holder.command or 'run'}`"
               + (f" since {holder.started_at}" if holder.started_at else "")) if holder else "another process"
        raise RefusedError(f"the store {path} is in use by optout-sync ({who}); stop it before copying the "
                           "store") from None
    try:
        with _open_sqlite(path) as store:
            yield store
    finally:
        lock.release()


def _copy_to_sqlite(src: "_PgSource", destination: Path, after_load) -> CopyReport:
    folder = destination.absolute().parent
    temp = folder / f".{destination.name}.store-copy-{os.getpid()}"
    _remove_sqlite_files(temp)
    try:
        try:
            with _open_sqlite(temp, create=True) as store:
                specs = store_copy.table_specs(store.conn)
                with _pg_errors(src.url, f"cannot read the store {src.where}"):
                    store_copy.check_pg_tables(src.conn, specs)
                    source_facts = store_copy.fingerprint(src.tables, specs)
                    store.conn.execute("BEGIN IMMEDIATE")
                    store_copy.SqliteTables(store.conn, str(destination)).load(specs, src.tables)
                    store.conn.execute("COMMIT")
                if after_load:
                    after_load(store.conn)
                # A single self-contained file before it gets its name: no -wal beside it.
                store.conn.execute("PRAGMA journal_mode = DELETE")
            with _open_sqlite(temp) as copy, _read_snapshot_sqlite(copy) as copy_tables:
                copy_facts = store_copy.fingerprint(copy_tables, specs)
            _refuse_differences(source_facts, copy_facts, src.where, destination,
                                "the copy was removed; nothing was written at " + str(destination))
            try:
                os.link(temp, destination)  # never clobber a file made meanwhile
            except FileExistsError:
                raise RefusedError(f"{destination} was created by someone else during the copy; it was left as it "
                                   "is and the copy removed") from None
            _sync_folder(folder)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write the copy {destination}: {exc}") from None
        except OSError as exc:
            raise InputError(f"cannot write the copy {destination}: {exc.strerror or exc}") from None
    finally:
        _remove_sqlite_files(temp)
    return CopyReport(src.where, str(destination), SCHEMA_VERSION, source_facts)


def _remove_sqlite_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.unlink(path.with_name(path.name + suffix))
        except FileNotFoundError:
            pass


# -- PostgreSQL ----------------------------------------------------------------------


@contextmanager
def _pg_errors(url: str, doing: str) -> Iterator[None]:
    """psycopg errors as StoreError: what was being done, and the server's first line, password masked."""
    import psycopg

    try:
        yield
    except psycopg.Error as exc:
        raise StoreError(f"{doing}: {describe(exc, url)}") from None


@contextmanager
def _open_pg(url: str) -> Iterator:
    """An autocommit connection to `url`; InputError(BAD_URL) or StoreError, never the password."""
    _parse_url(url)
    import psycopg

    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.ProgrammingError:
        raise InputError(BAD_URL) from None
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to PostgreSQL: {describe(exc, url)}") from None
    try:
        yield conn
    finally:
        conn.close()


def _pg_name(conn) -> str:
    # Named by database and host only: the URL may hold a password.
    return f"PostgreSQL database {conn.info.dbname} on {conn.info.host}"


def _require_pg_store(conn, url: str, where: str) -> None:
    with _pg_errors(url, f"cannot read the store {where}"):
        version = pg_schema.current_version(conn)
    if version == 0:
        raise InputError(f"{where} holds no optout-sync store")
    if version != SCHEMA_VERSION:
        with _pg_errors(url, f"cannot migrate the store {where}"):
            pg_schema.migrate(conn)  # StoreError for a store newer than this program


def _refuse_live_leases(url: str, where: str, role: str) -> None:
    from .leases import PgLeases

    leases = PgLeases(url)
    try:
        holders = leases.holders()
    finally:
        leases.close()
    if holders:
        adapter, holder = sorted(holders.items())[0]
        more = f" and {len(holders) - 1} more adapters" if len(holders) > 1 else ""
        raise RefusedError(f"the {role} {where} is in use: daemon {holder.daemon_id} holds adapter {adapter}"
                           f"{f' since {holder.since}' if holder.since else ''}{more}; stop every daemon on it "
                           "before copying the store")


@dataclass
class _PgSource:
    conn: object
    url: str
    where: str
    tables: store_copy.PgTables


@contextmanager
def _read_snapshot_pg(conn) -> Iterator[None]:
    """One REPEATABLE READ, read-only transaction: every read inside it sees the same snapshot."""
    import psycopg

    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    try:
        with conn.transaction():
            yield
    finally:
        if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            conn.isolation_level = None
            conn.read_only = None


@contextmanager
def _pg_source(url: str) -> Iterator[_PgSource]:
    """The PostgreSQL source: refused while a daemon holds a lease; its writers held off; one snapshot."""
    with _open_pg(url) as conn:
        where = _pg_name(conn)
        _require_pg_store(conn, url, where)
        _refuse_live_leases(url, where, "store")
        with _pg_errors(url, f"cannot read the store {where}"):
            _hold_append_lock(conn, where)
            with _read_snapshot_pg(conn):
                yield _PgSource(conn, url, where, store_copy.PgTables(conn, url, where))


def _hold_append_lock(conn, where: str) -> None:
    """Take the event log's append lock as a session lock: no writer commits until the connection closes."""
    deadline = time.monotonic() + APPEND_LOCK_WAIT
    while not conn.execute("SELECT pg_try_advisory_lock(%s)", (pg_events.APPEND_LOCK_KEY,)).fetchone()[0]:
        if time.monotonic() > deadline:
            raise RefusedError(f"a writer (import, lift or a webhook receiver) kept writing to the store {where} for "
                               f"{APPEND_LOCK_WAIT:.0f} s; try again when it has finished")
        time.sleep(0.2)


def _copy_to_pg(src: Store, url: str, after_load) -> CopyReport:
    with _open_pg(url) as conn:
        where = _pg_name(conn)
        with _pg_errors(url, f"cannot use the destination {where}"):
            if pg_schema.current_version(conn) == 0:
                _refuse_foreign_tables(conn, where)
            else:
                _refuse_live_leases(url, where, "destination")
        with _pg_errors(url, f"cannot create the store's schema in {where}"):
            pg_schema.migrate(conn)
        with _read_snapshot_sqlite(src) as source_tables:
            specs = store_copy.table_specs(src.conn)
            with _pg_errors(url, f"cannot read the destination {where}"):
                store_copy.check_pg_tables(conn, specs)
            source_facts = store_copy.fingerprint(source_tables, specs)
            destination = store_copy.PgTables(conn, url, where)
            with _pg_errors(url, f"cannot copy the store into {where}"), conn.transaction():
                # Every writer of a PostgreSQL store takes this lock first: none writes during the load.
                pg_events.take_append_lock(conn)
                held = destination.holdings(specs)
                if held:
                    raise RefusedError(f"{where} already holds a store with data ("
                                       + ", ".join(f"{n} {t}" for t, n in held.items())
                                       + "); store copy never merges: give an empty database")
                destination.load(specs, source_tables)
                if after_load:
                    after_load(conn)
                copy_facts = store_copy.fingerprint(destination, specs)
                _refuse_differences(source_facts, copy_facts, str(src.path), where,
                                    "the copy was rolled back; the destination holds no data")
    return CopyReport(str(src.path), where, SCHEMA_VERSION, source_facts)


def _refuse_foreign_tables(conn, where: str) -> None:
    tables = [row[0] for row in conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        " ORDER BY table_name")]
    if tables:
        raise RefusedError(f"{where} already holds tables ({', '.join(tables[:5])}{', ...' if len(tables) > 5 else ''})"
                           " and no optout-sync store; store copy never merges: give an empty database")


def _refuse_differences(source: dict, copy: dict, source_name, copy_name, outcome: str) -> None:
    found = store_copy.differences(source, copy)
    if found:
        raise CopyMismatch(f"the copy does not match its source {source_name}: {'; '.join(found)}; {outcome}", found)
