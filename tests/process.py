"""Run the real `optout-sync` console script as a separate process, for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def command() -> list[str]:
    """The installed console script next to this Python, else the module."""
    script = shutil.which("optout-sync", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "connector.cli"]


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 60,
            stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run one CLI command to completion and capture its output."""
    return subprocess.run([*command(), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd, input=stdin)


class Daemon:
    """`optout-sync run` in the background, with its stderr collected to a file."""

    def __init__(self, settings: Path, *extra: str, env: dict | None = None):
        self.settings = settings
        self.log_path = settings.parent / f"daemon-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen([*command(), "--config", str(settings), *extra, "run"],
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **(env or {})})

    def log(self) -> str:
        return self.log_path.read_text()

    def terminate(self, timeout: float = 10) -> int:
        """SIGTERM and wait; the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(self, *exc_info) -> None:
        if self.proc.poll() is None:
            self.kill()


def wait_for(condition: Callable[[], bool], timeout: float = 15, step: float = 0.05) -> float:
    """Poll until `condition()` is true; the seconds it took. AssertionError on timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")
