"""`optout-sync backup` and `restore`: a consistent, private copy of the store, and putting one back.

A backup uses SQLite's online backup API, which copies one read snapshot while the daemon and an
import go on writing (WAL readers do not block writers). The copy is made in a private temporary
file beside the destination (created 0600 before anything is written), turned into a single
self-contained file (journal mode DELETE), checked with `PRAGMA integrity_check`, synced to disk
and only then given its name.

A restore refuses while any process holds the store's lock (a running daemon would go on with the
store it opened). It checks that the file is an optout-sync store, copies it beside the store,
syncs it, keeps the replaced store under a dated name (a hard link, so there is always a store at
the path) and renames the copy into place after removing the old store's -wal and -shm files,
which must never be applied to another database.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from state.errors import InputError, RefusedError, StoreError
from state.schema import SCHEMA_VERSION

from .lock import StoreLock, real_store_path
from .settings import Settings
from .store_guard import lost_marker, prepare_store_folder, require_store
from .store_identity import connect_read_only

_COMPANIONS = ("-wal", "-shm")


@dataclass(frozen=True)
class StoreFacts:
    """What a verified store file holds."""

    schema_version: int
    store_id: str
    created_at: str | None
    suppressions: int
    events: int


@dataclass(frozen=True)
class BackupReport:
    """A finished backup: where it is and what it holds."""

    path: Path
    store: Path
    facts: StoreFacts


@dataclass(frozen=True)
class RestoreReport:
    """A finished restore: the store, the file it came from, and where the replaced store was kept."""

    store: Path
    source: Path
    facts: StoreFacts
    kept_previous: Path | None


def _refuse_on_postgresql(settings: Settings, command: str, instead: str) -> None:
    # A SQLite file copy and its checks mean nothing for a database PostgreSQL holds.
    if settings.store.postgresql:
        raise RefusedError(f"`{command}` copies a SQLite store file; the store is on PostgreSQL: {instead}")


def backup(settings: Settings, destination: Path, *, force: bool = False) -> BackupReport:
    """Copy the configured store to `destination` (0600), consistently, while it is in use.

    InputError for an unusable destination, RefusedError for an existing one without `force`,
    StoreError if the copy fails its integrity check (the destination is then not written).
    RefusedError on a PostgreSQL store: pg_dump backs that up.
    """
    _refuse_on_postgresql(settings, "backup", "back it up with pg_dump (pg_dump -Fc -f FILE DBNAME)")
    store_path = settings.store.path
    require_store(store_path)
    destination = Path(destination)
    folder = destination.absolute().parent
    if not folder.is_dir():
        raise InputError(f"cannot write the backup {destination}: the folder {folder} does not exist")
    if destination.is_dir():
        raise InputError(f"cannot write the backup {destination}: it is a folder")
    if destination.exists() and real_store_path(destination) == real_store_path(store_path):
        raise InputError(f"the backup {destination} is the store itself; choose another file")
    if destination.exists() and not force:
        raise RefusedError(f"{destination} already exists and was not overwritten; use --force to replace it")
    temp = None
    try:
        temp = _private_temp(folder, destination.name)
        source = sqlite3.connect(f"{real_store_path(store_path).as_uri()}?mode=rw", uri=True,
                                 timeout=settings.store.busy_timeout)
        try:
            facts = _copy(source, temp)
        finally:
            source.close()
        if force:
            os.replace(temp, destination)
        else:
            try:
                os.link(temp, destination)  # fails if someone created it meanwhile: never clobber
            except FileExistsError:
                raise RefusedError(f"{destination} already exists and was not overwritten; use --force to "
                                   "replace it") from None
            os.unlink(temp)
        _sync_folder(folder)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot back up the store {store_path} to {destination}: {exc}") from None
    except OSError as exc:
        raise InputError(f"cannot write the backup {destination}: {exc.strerror or exc}") from None
    finally:
        if temp is not None:
            _remove(temp)
    return BackupReport(destination, store_path, facts)


def verify_store_file(path: Path) -> StoreFacts:
    """The facts of an optout-sync store file; InputError naming the file and the problem otherwise.

    Opens it read-only without creating anything beside it, and checks integrity, a known schema
    version and the store's identity row.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        conn = connect_read_only(path, timeout=5.0)
        try:
            return _facts(conn)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise InputError(f"{path} is not an optout-sync store: {exc}") from None


def restore(settings: Settings, source: Path) -> RestoreReport:
    """Replace the configured store by the store file `source`, unless a process holds the store.

    RefusedError while a daemon (or another syncing command) holds the store's lock; InputError
    if `source` is not a sound optout-sync store; ConfigError for an unusable store folder. May
    create the store (and its folder, as `run` does). RefusedError on a PostgreSQL store.
    """
    _refuse_on_postgresql(settings, "restore", "restore it with pg_restore from a pg_dump archive")
    source = Path(source)
    verify_store_file(source)
    store_path = settings.store.path
    lock = StoreLock(store_path, command="restore")
    _refuse_if_held(lock, store_path)
    prepare_store_folder(store_path, restoring=True)
    try:
        lock.acquire()
    except StoreError:
        _refuse_if_held(lock, store_path)
        raise
    try:
        real = real_store_path(store_path)
        if real == real_store_path(source):
            raise InputError(f"{source} is the store itself; nothing to restore")
        temp = None
        try:
            temp = _private_temp(real.parent, real.name)
            reader = connect_read_only(source, timeout=5.0)
            try:
                facts = _copy(reader, temp)
            finally:
                reader.close()
            kept = _keep_previous(real)
            # The old store's WAL belongs to the old file: applied to the restored one it would corrupt it.
            for suffix in _COMPANIONS:
                _remove(real.with_name(real.name + suffix))
            os.replace(temp, real)
            _sync_folder(real.parent)
            _remove(lost_marker(store_path))  # a store is back: the daemon may start again
        except sqlite3.Error as exc:
            raise StoreError(f"cannot restore {source} into the store {store_path}: {exc}") from None
        except OSError as exc:
            raise StoreError(f"cannot restore {source} into the store {store_path}: {exc.strerror or exc}") from None
        finally:
            if temp is not None:
                _remove(temp)
    finally:
        lock.release()
    return RestoreReport(store_path, source, facts, kept)


def _refuse_if_held(lock: StoreLock, store_path: Path) -> None:
    holder = lock.holder()
    if holder is not None:
        what = "the daemon" if holder.command in (None, "run") else f"`optout-sync {holder.command}`"
        raise RefusedError(f"{what} (pid {holder.pid or 'unknown'}) holds the store {store_path}; stop it before "
                           "restoring; nothing was changed")


def _copy(source: sqlite3.Connection, temp: Path) -> StoreFacts:
    """Copy `source` into the (empty, private) file `temp` as one self-contained, checked, synced file."""
    target = sqlite3.connect(temp, isolation_level=None)
    try:
        source.backup(target)  # all pages in one step: one consistent read snapshot of the source
        target.execute("PRAGMA journal_mode = DELETE")  # the copy must not need a -wal beside it
        facts = _facts(target)
    finally:
        target.close()
    with open(temp, "rb") as handle:
        os.fsync(handle.fileno())
    return facts


def _facts(conn: sqlite3.Connection) -> StoreFacts:
    problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
    if problems != ["ok"]:
        raise sqlite3.DatabaseError(f"integrity check failed: {'; '.join(problems[:3])}")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        raise sqlite3.DatabaseError("it has no optout-sync schema")
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(f"its schema version {version} is newer than this program's "
                                    f"{SCHEMA_VERSION}; upgrade optout-sync")
    try:
        meta = dict(conn.execute("SELECT key, value FROM store_meta"))
    except sqlite3.OperationalError:
        raise sqlite3.DatabaseError("it has no store identity (store_meta)") from None
    if "store_id" not in meta:
        raise sqlite3.DatabaseError("it has no store id")
    suppressions = conn.execute("SELECT count(*) FROM suppressions").fetchone()[0]
    events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    return StoreFacts(version, meta["store_id"], meta.get("created_at"), suppressions, events)


def _keep_previous(real: Path) -> Path | None:
    """Fold the old store's WAL into it and keep it under a dated name (a hard link); its path, or None."""
    if not real.exists():
        return None
    conn = sqlite3.connect(f"{real.as_uri()}?mode=rw", uri=True, timeout=5.0)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    kept = real.with_name(f"{real.name}.before-restore-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}")
    os.link(real, kept)
    return kept


def _private_temp(folder: Path, name: str) -> Path:
    """A new, empty file only this user can read, beside where the result goes."""
    temp = folder / f".{name}.{os.getpid()}.tmp"
    _remove(temp)
    fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    os.chmod(temp, 0o600)  # whatever the umask
    return temp


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
