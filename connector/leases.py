"""Which daemon drives which adapter: one lease per adapter, the same interface on both backends.

A daemon drives an adapter only while it holds that adapter's lease; it asks `held()` before each
cycle and batch and stops driving what it no longer holds.

PostgreSQL (`PgLeases`): a session advisory lock per adapter (`pg_try_advisory_lock` on a stable
64-bit key from the adapter's name), taken on a connection kept for leases alone. The lock lives
exactly as long as that connection's backend: a daemon that dies or loses its connection loses
every lease at once, with nothing to expire or clean up, and another daemon's next
`try_acquire` gets it. Beside the lock the holder writes a `leases` row (daemon id, host, pid,
since, its backend's pid) for `status`; `holders()` reports a row only while that backend still
holds the lock (pg_locks), so a dead holder's row is never shown. The lease connection must reach
PostgreSQL directly or through a session-mode pooler (a transaction-mode pooler would hand the
lock's session to another client). Server-side TCP keepalives, set from `dead_after`, make the
server notice a holder whose host vanished without closing its connection.

SQLite (`FileLeases`): the store's lock file (connector/lock.py) already lets one process sync a
store, so one daemon holds every adapter: the first `try_acquire` takes the file lock, and
`holders()` reports its holder for every configured adapter.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from state.errors import StoreError, TransientError
from state.models import utc_now
from state.pg_errors import BAD_URL, describe

from .lock import StoreLock

# Keys of adapters' leases are derived under this prefix, so they never meet the store's own advisory
# locks (state/pg_schema.py, state/pg_events.py) but by a 2**-64 chance.
_KEY_PREFIX = b"optout-sync lease\x00"


class LeaseLost(TransientError):
    """A write was refused: this process no longer holds the lease of the adapter it writes for."""


def lease_key(adapter: str) -> int:
    """The advisory lock key of an adapter's lease: the first 8 bytes of a SHA-256, as a signed bigint."""
    digest = hashlib.sha256(_KEY_PREFIX + adapter.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def default_daemon_id() -> str:
    """This daemon's name in `status`: host/pid."""
    return f"{socket.gethostname()}/{os.getpid()}"


@dataclass(frozen=True)
class LeaseHolder:
    """Who drives an adapter: the daemon's id, its host and pid, and since when (the store's UTC text)."""

    daemon_id: str
    host: str
    pid: int | None
    since: str | None


def _serialized(method):
    # One lease connection serves the daemon's threads: one call on it at a time.
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with self._mutex:
            return method(self, *args, **kwargs)
    return call


class PgLeases:
    """Adapter leases as session advisory locks on a dedicated PostgreSQL connection (thread-safe)."""

    def __init__(self, url: str, *, daemon_id: str | None = None, dead_after: float = 60.0,
                 connect_timeout: float = 10.0):
        """`dead_after`: about how many seconds the server takes to notice a holder's host vanished."""
        self.url = url
        self.daemon_id = daemon_id or default_daemon_id()
        self.host = socket.gethostname()
        self.dead_after = dead_after
        self.connect_timeout = connect_timeout
        self._conn = None
        self._held: set[str] = set()
        self._mutex = threading.RLock()

    # -- the connection ------------------------------------------------------

    def _connect(self):
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        # Over TCP, a holder whose host or network vanished is found out on both sides within
        # about dead_after: the server probes an idle client every quarter of it and drops it after
        # three unanswered probes (its locks end then); the holder's own connection gives up
        # sooner, after half of it (tcp_user_timeout, keepalives), so it stops driving before
        # another daemon can take over. A unix socket needs none of this (and ignores it).
        probe = max(1, int(self.dead_after / 4))
        half_ms = max(1000, int(self.dead_after * 500))
        settings = (f"-c tcp_keepalives_idle={probe} -c tcp_keepalives_interval={probe} -c tcp_keepalives_count=3"
                    f" -c tcp_user_timeout={half_ms} -c application_name=optout-sync-leases")
        try:
            given = conninfo_to_dict(self.url).get("options") or ""
        except psycopg.Error:
            raise StoreError(BAD_URL) from None  # libpq's parse errors quote the URL, password and all
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout)),
                                   options=f"{given} {settings}".strip(), keepalives=1, keepalives_idle=probe,
                                   keepalives_interval=probe, keepalives_count=1, tcp_user_timeout=half_ms)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to the store's PostgreSQL for adapter leases: "
                             f"{describe(exc, self.url)}") from None
        self._held.clear()  # a new session holds nothing
        self._conn = conn
        return conn

    def _lost(self) -> None:
        """The lease connection failed: every lease went with it; close it so none can linger."""
        self._held.clear()
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection; nothing more to do
                pass
            self._conn = None

    @property
    def backend_pid(self) -> int | None:
        """The server process of the lease connection (None before the first acquire)."""
        return self._conn.info.backend_pid if self._conn is not None and not self._conn.closed else None

    # -- the interface -------------------------------------------------------

    @_serialized
    def try_acquire(self, adapter: str) -> bool:
        """Take the adapter's lease if nobody holds it; True if this daemon holds it now."""
        import psycopg

        if adapter in self.held():
            return True  # never lock twice: advisory locks stack, and one unlock would not release
        key = lease_key(adapter)
        for attempt in (1, 2):  # a dropped connection is re-made once
            conn = self._conn if self._conn is not None and not self._conn.closed else self._connect()
            try:
                if not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
                    return False
                try:
                    conn.execute(
                        "INSERT INTO leases (adapter, lock_key, daemon_id, host, pid, backend_pid, since)"
                        " VALUES (%s, %s, %s, %s, %s, pg_backend_pid(), %s) ON CONFLICT (adapter) DO UPDATE SET"
                        " lock_key = excluded.lock_key, daemon_id = excluded.daemon_id, host = excluded.host,"
                        " pid = excluded.pid, backend_pid = excluded.backend_pid, since = excluded.since",
                        (adapter, key, self.daemon_id, self.host, os.getpid(), utc_now()))
                except psycopg.OperationalError:
                    raise
                except psycopg.Error as exc:
                    # Never keep a lease that status cannot show, nor one this object does not know of.
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
                    raise StoreError(f"cannot record the lease of {adapter}: {describe(exc, self.url)}; "
                                     "is the store's schema migrated?") from None
                self._held.add(adapter)
                return True
            except psycopg.OperationalError as exc:
                self._lost()  # the session, and any lock it had just taken, are gone
                if attempt == 2:
                    raise StoreError(f"lost the store's PostgreSQL connection while taking the lease of "
                                     f"{adapter}: {describe(exc, self.url)}") from None
        return False  # not reached

    @_serialized
    def release(self, adapter: str) -> None:
        """Give up the adapter's lease (another daemon may take it at once); nothing if not held."""
        import psycopg

        if adapter not in self._held or self._conn is None:
            self._held.discard(adapter)
            return
        self._held.discard(adapter)
        try:
            # The lock first: a row left behind is stale and never reported; a lock left behind would
            # keep the adapter from every other daemon. A new holder's row has another backend_pid.
            self._conn.execute("SELECT pg_advisory_unlock(%s)", (lease_key(adapter),))
            self._conn.execute("DELETE FROM leases WHERE adapter = %s AND backend_pid = pg_backend_pid()",
                               (adapter,))
        except psycopg.OperationalError:
            self._lost()
        except psycopg.Error:
            pass  # the row only: stale, and holders() does not show it

    @_serialized
    def held(self) -> set[str]:
        """The adapters this daemon holds now, as the server sees it; empty once the connection is lost."""
        import psycopg

        if not self._held or self._conn is None:
            return set()
        try:
            keys = {row[0] for row in self._conn.execute(
                "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks WHERE locktype = 'advisory'"
                " AND granted AND objsubid = 1 AND pid = pg_backend_pid()")}
        except psycopg.Error:
            self._lost()
            return set()
        # pg_locks shows the key's two 32-bit halves; put together as a bigint they are the signed key.
        self._held = {a for a in self._held if lease_key(a) in keys}
        return set(self._held)

    @_serialized
    def holders(self) -> dict[str, LeaseHolder]:
        """Every adapter some live daemon holds, with that daemon; rows of dead holders are left out."""
        import psycopg

        conn = self._conn if self._conn is not None and not self._conn.closed else None
        try:
            conn = conn or psycopg.connect(self.url, autocommit=True,
                                           connect_timeout=max(1, int(self.connect_timeout)))
        except psycopg.ProgrammingError:
            raise StoreError(BAD_URL) from None
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to the store's PostgreSQL: {describe(exc, self.url)}") from None
        try:
            rows = conn.execute(
                "SELECT l.adapter, l.daemon_id, l.host, l.pid, l.since FROM leases l WHERE EXISTS"
                " (SELECT 1 FROM pg_locks k WHERE k.locktype = 'advisory' AND k.granted AND k.objsubid = 1"
                " AND k.pid = l.backend_pid"
                " AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND k.classid::bigint = (l.lock_key >> 32) & 4294967295"
                " AND k.objid::bigint = l.lock_key & 4294967295)"
                " ORDER BY l.adapter").fetchall()
        except psycopg.Error as exc:
            raise StoreError(f"cannot read the adapters' leases: {describe(exc, self.url)}") from None
        finally:
            if conn is not self._conn:
                conn.close()
        return {adapter: LeaseHolder(daemon_id, host, pid, since) for adapter, daemon_id, host, pid, since in rows}

    @_serialized
    def close(self) -> None:
        """Close the lease connection: every lease held ends with it."""
        self._lost()

    def fence(self, adapters: Iterable[str]):
        """A check for a PgStore's write transactions (`PgStore.fence`): LeaseLost unless this daemon holds them all.

        It runs on the store's own connection, inside the transaction, after the append lock:
        the lease connection's backend must still hold every named adapter's key in pg_locks.
        A daemon whose lease was lost (its connection dropped, another daemon took the adapter)
        therefore commits nothing more for it; its transaction rolls back. A new holder's writes
        wait for the append lock, so they come after anything the old holder committed.
        """
        names = sorted(set(adapters))
        keys = [lease_key(a) for a in names]

        def check(conn) -> None:
            backend = self.backend_pid  # None once the lease connection is gone
            # How many of the keys the lease backend holds in this database (pg_locks shows each
            # key's two 32-bit halves; put together as a bigint they are the signed key).
            held = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
                " AND pid = %s AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND ((classid::bigint << 32) | objid::bigint) = ANY(%s::bigint[])",
                (backend, keys)).fetchone()[0] if backend is not None else 0
            if held != len(keys):
                raise LeaseLost(f"this process no longer holds the lease of {', '.join(names)}; "
                                "the write was not committed (another daemon drives it now, or will)")
        return check


class FileLeases:
    """Adapter leases on a SQLite store: the store's lock file makes one daemon hold every adapter."""

    def __init__(self, store_path: Path, adapters: Iterable[str], *, command: str = "run"):
        self.adapters = list(adapters)
        self._lock = StoreLock(store_path, command=command)
        self._locked = False
        self._held: set[str] = set()
        self.daemon_id = default_daemon_id()

    def try_acquire(self, adapter: str) -> bool:
        """True if this daemon holds the store's lock (taken now if free); False if another does."""
        if not self._locked:
            try:
                self._lock.acquire()
            except StoreError:
                return False  # another process syncs this store; ConfigError (no lock file) propagates
            self._locked = True
        self._held.add(adapter)
        return True

    def release(self, adapter: str) -> None:
        """Give up one adapter; the store's lock is let go with the last one."""
        self._held.discard(adapter)
        if not self._held and self._locked:
            self._lock.release()
            self._locked = False

    def held(self) -> set[str]:
        """The adapters this daemon holds."""
        return set(self._held) if self._locked else set()

    def holders(self) -> dict[str, LeaseHolder]:
        """Every configured adapter with the process holding the store's lock; empty when nobody does."""
        host = socket.gethostname()  # flock is local: the holder runs on this host
        other = self._lock.holder()  # also this process, as its lock file says (its own flock conflicts)
        if other is None:
            return {}
        holder = LeaseHolder(f"{host}/{other.pid}", host, other.pid, other.started_at)
        return {a: holder for a in self.adapters}

    def close(self) -> None:
        """Release the store's lock and every adapter."""
        self._held.clear()
        if self._locked:
            self._lock.release()
            self._locked = False
