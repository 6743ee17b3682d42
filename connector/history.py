"""Each adapter's lag and pending count over the last 24 hours, sampled by the daemon's monitor.

Kept in memory only, in a bounded ring buffer per adapter (one sample a minute: 1,440 per
adapter), so a restarted daemon starts a new history; the status page says so.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

WINDOW_S = 24 * 3600.0
SAMPLE_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class Sample:
    """One adapter's state at one moment (Unix time)."""

    at: float
    lag_s: float | None
    pending: int


class LagHistory:
    """The last `window_s` of samples per adapter, at most one per `every_s`; thread-safe."""

    def __init__(self, window_s: float = WINDOW_S, every_s: float = SAMPLE_EVERY_S, clock=time.time):
        self.window_s = window_s
        self.every_s = every_s
        self.clock = clock
        self.started_at = clock()
        self._size = int(window_s // every_s) + 1
        self._samples: dict[str, deque[Sample]] = {}
        self._latest: dict[str, Sample] = {}
        self._lock = threading.Lock()

    def record(self, rows: list[dict], at: float | None = None) -> None:
        """Note the lag and pending count of each adapter row (from `commands.status`).

        The newest reading is always kept for the page; the ring buffer takes one a minute.
        """
        at = self.clock() if at is None else at
        with self._lock:
            for row in rows:
                sample = Sample(at, row["lag_s"], int(row["pending"]))
                self._latest[row["adapter"]] = sample
                ring = self._samples.setdefault(row["adapter"], deque(maxlen=self._size))
                if not ring or at - ring[-1].at >= self.every_s:
                    ring.append(sample)

    def series(self, at: float | None = None) -> dict[str, list[Sample]]:
        """Per adapter, the samples of the window ending at `at`, oldest first, the newest reading last."""
        at = self.clock() if at is None else at
        since = at - self.window_s
        with self._lock:
            result = {}
            for name, ring in self._samples.items():
                samples = [s for s in ring if s.at >= since]
                latest = self._latest.get(name)
                if latest is not None and (not samples or samples[-1] is not latest):
                    samples.append(latest)
                result[name] = samples
            return result

    def covers_window(self, at: float | None = None) -> bool:
        """Whether this process has been sampling for the whole window."""
        return (self.clock() if at is None else at) - self.started_at >= self.window_s
