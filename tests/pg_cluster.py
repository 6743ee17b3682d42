"""A throwaway PostgreSQL cluster for the tests: initdb in a temporary folder, a unix socket only.

The cluster listens on no TCP port (listen_addresses = ''), only on a socket in its own folder,
with trust authentication for the superuser initdb makes (`optout`). It runs without fsync: it
is thrown away at the end of the session, and a crash of the test machine loses nothing that
matters. PostgreSQL refuses to run as root, so when the tests run as root (CI does) initdb and
the server run as the unprivileged system user `optout-pg` (made with useradd when missing;
`nobody` when it cannot be made), and the folder is chowned to it.

Debian puts initdb and pg_ctl in /usr/lib/postgresql/<version>/bin, not on PATH: both places are
searched, PATH first. Nothing here imports psycopg, so that importing this module costs nothing.

A test process killed before its clean-up leaves its cluster running: the next start stops and
removes every cluster whose owner (the pid in its folder's owner.pid) is gone.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

SUPERUSER = "optout"
RUN_AS = "optout-pg"
FALLBACK_RUN_AS = "nobody"
START_TIMEOUT = 60  # seconds pg_ctl waits for the server (a few seconds on an idle machine)
INSTALL_HINT = ("install Debian's 'postgresql' package (apt-get install postgresql), "
                "or run tests/run, which installs it when missing")


class ClusterError(Exception):
    """The cluster cannot be made or started; the message says what is missing and what to do."""


def find_bin_dir(path: str | None = None, debian_glob: str = "/usr/lib/postgresql/*/bin") -> Path:
    """The folder holding initdb, pg_ctl and postgres: from PATH, else Debian's newest version.

    Raises ClusterError naming where it looked.
    """
    on_path = shutil.which("initdb", path=path)
    if on_path:
        folder = Path(os.path.realpath(on_path)).parent
        if all((folder / tool).is_file() for tool in ("pg_ctl", "postgres")):
            return folder
    # Newest version first: /usr/lib/postgresql/16/bin before /usr/lib/postgresql/15/bin.
    def version(folder: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", Path(folder).parent.name)) or (0,)

    for folder in sorted(glob.glob(debian_glob), key=version, reverse=True):
        if all(os.access(Path(folder) / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    raise ClusterError(f"PostgreSQL's initdb was found neither on PATH nor in {debian_glob}; {INSTALL_HINT}")


def _world_traversable(folder: Path) -> bool:
    """True when every folder from / down to `folder` lets any user pass (the server's user must)."""
    folder = folder.resolve()
    return all(part.stat().st_mode & stat.S_IXOTH for part in [folder, *folder.parents])


def _run_as_user() -> str | None:
    """The unprivileged user to run the server as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(RUN_AS)
        return RUN_AS
    except KeyError:
        pass
    made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", RUN_AS],
                          capture_output=True, text=True) if shutil.which("useradd") else None
    if made is not None and made.returncode in (0, 9):  # 9: made meanwhile by another session
        return RUN_AS
    pwd.getpwnam(FALLBACK_RUN_AS)  # KeyError here is caught by start()
    return FALLBACK_RUN_AS


@dataclass
class Cluster:
    """A running throwaway cluster: its folder, socket folder and superuser."""

    folder: Path
    bin_dir: Path
    user: str | None  # the OS user the server runs as; None when it runs as ourselves
    superuser: str = SUPERUSER
    started_in: float = 0.0
    _stopped: bool = field(default=False, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def socket_dir(self) -> Path:
        return self.folder

    def url(self, dbname: str = "postgres") -> str:
        """A libpq URL for `dbname` over the cluster's unix socket."""
        return f"postgresql://{self.superuser}@/{dbname}?host={quote(str(self.socket_dir), safe='')}"

    def stop(self) -> None:
        """Stop the server (fast shutdown, immediate if that hangs) and remove the folder."""
        if self._stopped:
            return
        self._stopped = True
        for mode, wait in (("fast", 20), ("immediate", 20)):
            done = _run(self._command(self.bin_dir / "pg_ctl", "-D", self.data_dir, "-m", mode, "-w",
                                      "-t", str(wait), "stop"), timeout=wait + 10, check=False)
            if done.returncode == 0 or not (self.data_dir / "postmaster.pid").exists():
                break
        shutil.rmtree(self.folder, ignore_errors=True)

    def _command(self, *args) -> list[str]:
        argv = [str(a) for a in args]
        return ["runuser", "-u", self.user, "--", *argv] if self.user else argv


def _run(argv: list[str], timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{Path(argv[argv.index('--') + 1] if '--' in argv else argv[0]).name} "
                           f"did not finish within {timeout:.0f} s") from exc
    if check and done.returncode != 0:
        tool = Path(argv[argv.index("--") + 1] if "--" in argv else argv[0]).name
        detail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ClusterError(f"{tool} failed (exit {done.returncode}): {' / '.join(detail)}")
    return done


def _base_folder() -> Path:
    # The server's user must reach the folder: TMPDIR unless one of its parents is private (/root/...).
    for candidate in (Path(tempfile.gettempdir()), Path("/tmp")):
        if candidate.is_dir() and (os.geteuid() != 0 or _world_traversable(candidate)):
            return candidate
    raise ClusterError("no temporary folder that an unprivileged user can reach (TMPDIR and /tmp)")


PREFIX = "optpg-"
OWNER_FILE = "owner.pid"  # the pid of the test process that started the cluster


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_abandoned(base: Path, bin_dir: Path) -> list[Path]:
    """Stop and remove the clusters in `base` whose test process is gone (killed before its clean-up).

    A cluster whose owner still runs (another test session) is left alone; so is a folder without
    an owner file. Returns the folders removed.
    """
    removed = []
    for folder in base.glob(f"{PREFIX}*"):
        try:
            owner = int((folder / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        try:
            user = pwd.getpwuid(folder.stat().st_uid).pw_name if os.geteuid() == 0 else None
        except KeyError:
            user = None
        try:
            Cluster(folder, bin_dir, user if user != "root" else None).stop()
        except ClusterError:
            continue  # left as it is: a stuck leftover must not keep this session's cluster from starting
        removed.append(folder)
    return removed


def start(bin_dir: Path | None = None) -> Cluster:
    """initdb a new cluster in a temporary folder and start it; ClusterError saying why if it cannot."""
    began = time.monotonic()
    bin_dir = bin_dir or find_bin_dir()
    if os.geteuid() == 0 and not shutil.which("runuser"):
        raise ClusterError("the tests run as root and PostgreSQL refuses root, but 'runuser' (util-linux) "
                           "is missing to run it as another user; install Debian's 'util-linux' package")
    try:
        user = _run_as_user()
    except KeyError:
        raise ClusterError(f"the tests run as root and PostgreSQL refuses root, but the user {RUN_AS!r} "
                           f"cannot be made (useradd) and {FALLBACK_RUN_AS!r} does not exist") from None
    base = _base_folder()
    sweep_abandoned(base, bin_dir)
    # Short name: a unix socket's path must stay under 107 bytes.
    folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=base))
    (folder / OWNER_FILE).write_text(f"{os.getpid()}\n")
    cluster = Cluster(folder, bin_dir, user)
    try:
        if user:
            info = pwd.getpwnam(user)
            os.chown(folder, info.pw_uid, info.pw_gid)
            os.chown(folder / OWNER_FILE, info.pw_uid, info.pw_gid)
        folder.chmod(0o700)
        _run(cluster._command(bin_dir / "initdb", "-D", cluster.data_dir, "-U", SUPERUSER, "--auth=trust",
                              "-E", "UTF8", "--locale=C", "--no-sync"), timeout=120)
        options = " ".join([
            "-c listen_addresses=''", f"-c unix_socket_directories='{folder}'",
            # Throwaway: durability costs time and buys nothing here.
            "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
            "-c max_connections=200",
        ])
        _run(cluster._command(bin_dir / "pg_ctl", "-D", cluster.data_dir, "-l", folder / "server.log",
                              "-o", options, "-w", "-t", str(START_TIMEOUT), "start"), timeout=START_TIMEOUT + 10)
    except BaseException as exc:
        log = folder / "server.log"
        tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.is_file() else []
        cluster.stop()
        if isinstance(exc, ClusterError) and tail:
            raise ClusterError(f"{exc}; server log: {' / '.join(tail)}") from None
        raise
    cluster.started_in = time.monotonic() - began
    return cluster
