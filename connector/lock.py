"""One process at a time syncs a store: an exclusive lock file beside the database's real path.

The lock is taken on `<real path>.lock`, where the real path has symlinks and `..` resolved, so
a second daemon that reaches the same database through a symlink or another spelling of the path
meets the same lock. Every consumer (run, sync, reconcile, restore, status) builds its StoreLock
from the configured path and so resolves it the same way.

The holder writes one line into the lock file: its pid, when it took the lock (UTC, ISO) and the
command, so that `status` can say which daemon runs and since when.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from state.errors import ConfigError, StoreError
from state.models import utc_now


@dataclass(frozen=True)
class Holder:
    """Who holds a store's lock, as it wrote itself into the lock file."""

    pid: int | None
    started_at: str | None
    command: str | None


def real_store_path(store_path: Path) -> Path:
    """The store's path with symlinks and `..` resolved (the file need not exist yet)."""
    return Path(os.path.realpath(store_path))


class StoreLock:
    """An exclusive, non-blocking lock on `<real store path>.lock`, released when the process ends."""

    def __init__(self, store_path: Path, command: str = "run"):
        self.store_path = store_path
        real = real_store_path(store_path)
        self.path = real.with_name(real.name + ".lock")
        self.command = command
        self._fd: int | None = None

    def acquire(self) -> "StoreLock":
        """Take the lock; StoreError if another process holds it, ConfigError if the lock file cannot be made."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot create the store's lock file {self.path}: {exc.strerror or exc}; "
                              "check [store] path and that its folder exists and is writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse(os.pread(fd, 200, 0))
            os.close(fd)
            raise StoreError(f"another optout-sync process (pid {holder.pid or 'unknown'}) is already syncing "
                             f"the store {self.store_path}; stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {utc_now()} {self.command}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def holder(self) -> Holder | None:
        """Who holds the lock now (checked without taking it and without creating anything); None if nobody."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _parse(os.pread(fd, 200, 0))
        finally:
            os.close(fd)
        return None

    def is_held_elsewhere(self) -> bool:
        """True when another process holds the lock (checked without taking it)."""
        return self.holder() is not None


def _parse(raw: bytes) -> Holder:
    # Older versions wrote the pid alone.
    parts = raw.decode(errors="replace").split()
    pid = int(parts[0]) if parts and parts[0].isdigit() else None
    return Holder(pid, parts[1] if len(parts) > 1 else None, parts[2] if len(parts) > 2 else None)
