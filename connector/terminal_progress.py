"""Progress of `import` on a terminal: a bar over the file's bytes, then a spinner while it saves.

Drawn with click's progress bar, which the CLI already depends on (no new dependency for one
bar). Only the CLI creates it, and only when stderr is a terminal and the output is not JSON.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

import click

SPIN_EVERY = 0.2   # seconds between two frames of the spinner
_FRAMES = "|/-\\"  # ASCII: a terminal in any encoding can show it


def size_text(count: float) -> str:
    """A number of bytes for people: '512 B', '64.0 kB', '41.9 MB', '1.2 GB' (powers of 1000)."""
    if count < 1000:
        return f"{count:.0f} B"
    for unit in ("kB", "MB", "GB"):
        count /= 1000
        if count < 1000 or unit == "GB":
            return f"{count:.1f} {unit}"
    raise AssertionError("unreachable")


class ImportBar:
    """An `operator.ImportProgress` drawn on `stream` (stderr): the bar, then one phase line.

    The bar shows the percentage of the file's bytes read, the bytes read of the total, the rate
    and click's estimate of the time left. When the last row is read, the bar is completed and a
    line with a spinner and the seconds elapsed says what the import does meanwhile (counting, or
    saving in one transaction), until the import returns or fails.
    """

    def __init__(self, label: str, stream: TextIO | None = None):
        self.label = label
        self.stream = stream or sys.stderr
        self._bar = None
        self._started = time.monotonic()
        self._phase: str | None = None
        self._phase_started = 0.0
        self._stop = threading.Event()
        self._spinner: threading.Thread | None = None

    def __enter__(self) -> ImportBar:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if self._bar is not None:
            self._close_bar()
        if self._spinner is not None:
            self._stop.set()
            self._spinner.join()
            self._spinner = None
            seconds = time.monotonic() - self._phase_started
            outcome = "done" if kind is None else "stopped"
            self._write(f"\r{self._phase}: {outcome} after {seconds:.1f}s\033[K\n")

    def reading(self, done: int, total: int) -> None:
        """Move the bar to `done` of `total` bytes."""
        if self._bar is None:
            self._bar = click.progressbar(length=total, label=f"reading {self.label}", file=self.stream,
                                          show_eta=True, show_percent=True, item_show_func=self._info)
            self._bar.__enter__()
        if done > self._bar.pos:
            self._bar.update(done - self._bar.pos, current_item=done)

    def finishing(self, what: str) -> None:
        """The file is read: complete the bar, then spin on a line saying `what` until the import ends."""
        if self._bar is not None:
            self._close_bar()
        self._phase, self._phase_started = what, time.monotonic()
        self._spinner = threading.Thread(target=self._spin, name="import-spinner", daemon=True)
        self._spinner.start()

    def _info(self, done: int | None) -> str | None:
        if done is None or self._bar is None:
            return None
        elapsed = max(time.monotonic() - self._started, 1e-6)
        return f"{size_text(done)} of {size_text(self._bar.length)}, {size_text(done / elapsed)}/s"

    def _close_bar(self) -> None:
        bar, self._bar = self._bar, None
        bar.__exit__(None, None, None)  # draws the last state and ends the line

    def _spin(self) -> None:
        frame = 0
        while True:
            seconds = time.monotonic() - self._phase_started
            self._write(f"\r{_FRAMES[frame % len(_FRAMES)]} {self._phase}... {seconds:.0f}s\033[K")
            frame += 1
            if self._stop.wait(SPIN_EVERY):
                return

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away; the import goes on without a display
            pass
