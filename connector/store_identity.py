"""Is the file at the store's path still the store this daemon opened?

A store deleted, moved or replaced under a running daemon must stop it: its open connections
would go on writing into a file nobody will read again, and a fresh connection would open (or
create) another store and re-read every source into it. The daemon captures the file's device and
inode and the store's id (store_meta.store_id) when it starts and compares them at every cycle.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from state.store import Store


@dataclass(frozen=True)
class StoreIdentity:
    """The store file a daemon opened: its path, device, inode and store id."""

    path: Path
    device: int
    inode: int
    store_id: str | None

    @classmethod
    def of(cls, path: Path, store: Store) -> "StoreIdentity":
        """The identity of the store open on `store` at `path` (stat follows a symlink to the file)."""
        info = os.stat(path)
        return cls(path, info.st_dev, info.st_ino, store.store_id())

    def problem(self) -> str | None:
        """None while the file at the path is the same store; else one sentence saying what changed.

        Cheap enough for every cycle: one stat, and one read-only connection that reads one row.
        A store briefly locked by a writer is not a mismatch.
        """
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return f"the store {self.path} was deleted or moved while the daemon ran"
        except OSError as exc:
            return f"the store {self.path} can no longer be reached: {exc.strerror or exc}"
        if (info.st_dev, info.st_ino) != (self.device, self.inode):
            return f"the store {self.path} was replaced by another file while the daemon ran"
        try:
            found = read_store_id(self.path)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return None
            return f"the store {self.path} can no longer be read: {exc}"
        except sqlite3.DatabaseError as exc:
            return f"the store {self.path} is no longer a database: {exc}"
        if found != self.store_id:
            return (f"the store {self.path} was replaced by another store (id {found or 'none'}, "
                    f"not {self.store_id}) while the daemon ran")
        return None


def connect_read_only(path: Path, timeout: float = 0.2) -> sqlite3.Connection:
    """A read-only connection to an existing database that creates no file beside it.

    A read-only connection to a WAL database creates its -wal and -shm files when they are
    missing. They are missing only when no connection is open (the last one removes them),
    and then nothing can change under the reader, so SQLite may treat the file as immutable.
    """
    real = Path(os.path.realpath(path))
    uri = real.as_uri()
    if real.with_name(real.name + "-wal").exists():
        return sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=timeout)
    return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, timeout=timeout)


def read_store_id(path: Path) -> str | None:
    """The store_id of the database at `path`, read on a read-only connection that creates nothing."""
    conn = connect_read_only(path)
    try:
        try:
            row = conn.execute("SELECT value FROM store_meta WHERE key = 'store_id'").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
        return row[0] if row else None
    finally:
        conn.close()


def _companions(path: Path) -> dict[Path, tuple[int, int]]:
    """The -wal and -shm files beside `path` (symlinks followed) that exist now, with (device, inode)."""
    real = Path(os.path.realpath(path))
    found = {}
    for suffix in ("-wal", "-shm"):
        companion = real.with_name(real.name + suffix)
        try:
            info = os.stat(companion)
        except OSError:
            continue
        found[companion] = (info.st_dev, info.st_ino)
    return found


def companion_inodes(path: Path) -> set[tuple[int, int]]:
    """(device, inode) of the -wal and -shm files beside `path` that exist now."""
    return set(_companions(path).values())


def set_aside_own_wal(path: Path, also: set[tuple[int, int]] = frozenset()) -> list[Path]:
    """Rename the -wal and -shm beside `path` out of the way if they are this store's; the new names.

    They are this store's when this process has them open, or when they are the files seen
    beside the store while it was still intact (`also`): SQLite need not hold them open.

    When the store was deleted, moved or replaced, the WAL at its path still belongs to the file
    this daemon opened. SQLite would replay it into whatever database is next opened at that
    path (a replacement store, or a new one), mixing in the old store's pages. Renamed, it can
    neither do that nor be lost.
    """
    ours = _open_inodes() | set(also)
    moved = []
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    for companion, inode in _companions(path).items():
        if inode in ours:
            target = companion.with_name(f"{companion.name}.orphan-{stamp}")
            try:
                os.rename(companion, target)
                moved.append(target)
            except OSError:
                pass
    return moved


def _open_inodes() -> set[tuple[int, int]]:
    """(device, inode) of every file this process has open (Linux /proc; empty elsewhere)."""
    found = set()
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        try:
            info = os.fstat(int(name))
        except (OSError, ValueError):
            continue  # closed meanwhile
        found.add((info.st_dev, info.st_ino))
    return found
