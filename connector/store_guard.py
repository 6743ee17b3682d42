"""The store's place on disk must be private: a folder others can write is refused, a too-open file is made 0600.

Opt-outs are personal data and a legal record. A folder every local user can write lets anyone
delete, swap or plant the database (or its -wal, -shm and .lock files) before this daemon opens it;
that is refused rather than warned about, with the fix in the message. A store file that group or
others can read (a restored backup, a copy) is set back to 0600, with a warning.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from state.errors import ConfigError, StoreError

_COMPANIONS = ("", "-wal", "-shm")


def check_store_location(path: Path) -> list[str]:
    """StoreError if the store's folder is world-writable; else warnings for files it made private."""
    folder = path.parent
    try:
        mode = folder.stat().st_mode
    except FileNotFoundError:
        return []  # the store creates it (with the process umask) when it first opens
    except OSError as exc:
        raise StoreError(f"cannot check the store's folder {folder}: {exc.strerror or exc}") from None
    if mode & stat.S_IWOTH:
        raise StoreError(
            f"the store's folder {folder} is writable by every user (mode {oct(stat.S_IMODE(mode))}): anyone on "
            f"this machine could replace or delete the opt-out store. Run 'chmod o-w {folder}' or set [store] "
            "path to a private folder")
    warnings = []
    for suffix in _COMPANIONS:
        file = path.with_name(path.name + suffix)
        try:
            file_mode = stat.S_IMODE(file.stat().st_mode)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreError(f"cannot check the store file {file}: {exc.strerror or exc}") from None
        if file_mode & 0o077:
            try:
                os.chmod(file, 0o600)
            except OSError as exc:
                raise StoreError(f"the store file {file} is open to group or others (mode {oct(file_mode)}) and "
                                 f"cannot be made private: {exc.strerror or exc}") from None
            warnings.append(f"the store file {file} was open to group or others (mode {oct(file_mode)}); "
                            "it is now 0600")
    return warnings


STORE_PATH_HINT = "check [store] path or OPTOUT_SYNC_STORE__PATH"


def require_store(path: Path) -> None:
    """ConfigError unless a store file exists at `path`: only run, sync, import and restore create one.

    A mistyped path must not quietly become a new, empty store that answers "no opt-out recorded".
    """
    try:
        if path.is_file():
            return
    except OSError:
        pass
    raise ConfigError(f"no store at {path}; {STORE_PATH_HINT} (only run, sync, import and restore create "
                      "a store)")


def lost_marker(path: Path) -> Path:
    """The file a daemon leaves beside the store's path when the store was deleted or replaced under it."""
    return path.with_name(path.name + ".lost")


def mark_store_lost(path: Path, message: str) -> Path | None:
    """Leave the lost-store marker (mode 0600) with `message`; its path, or None if it cannot be written."""
    marker = lost_marker(path)
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(message + "\n")
    except OSError:
        return None
    return marker


def prepare_store_folder(path: Path, *, restoring: bool = False) -> bool:
    """Make sure a creating command can use the store's folder; True if it created the folder.

    Refused while a lost-store marker is there (unless `restoring`). The store's immediate
    folder is created (mode 0700) only when its parent exists, so that a
    fresh clone's `data/` works while a deeper missing path (a typo) is an error. A folder that
    is a file, or one this user cannot write, is a ConfigError naming the path.
    """
    folder = path.parent
    created = False
    marker = lost_marker(path)
    if not restoring and marker.exists():
        # A restarted daemon (systemd, Docker) must not start over with an empty or foreign store.
        raise ConfigError(f"the store {path} was deleted or replaced while a daemon ran (see {marker}); restore "
                          f"a backup with `optout-sync restore FILE`, or delete {marker} to go on with the "
                          "store now at that path (or a new, empty one)")
    if not folder.exists() and not folder.is_symlink():
        if not folder.parent.is_dir():
            raise ConfigError(f"the store's folder {folder} does not exist, nor does its parent {folder.parent}; "
                              f"{STORE_PATH_HINT} (only the store's own folder is created)")
        try:
            folder.mkdir(mode=0o700)
            created = True
        except OSError as exc:
            raise ConfigError(f"cannot create the store's folder {folder}: {exc.strerror or exc}") from None
    if not folder.is_dir():
        raise ConfigError(f"the store's folder {folder} is not a folder; {STORE_PATH_HINT}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"the store's folder {folder} is not writable by this user; fix its permissions or "
                          f"{STORE_PATH_HINT}")
    if path.exists() and not path.is_file():
        raise ConfigError(f"the store path {path} is not a file; {STORE_PATH_HINT}")
    return created
