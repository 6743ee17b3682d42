"""A pretend clock for HTTP adapter tests: sleeping advances time at once and is recorded.

It has the three methods of `adapters.http.Clock`, and `__call__` gives wall time,
so one object can drive both an adapter and a vendor fake.
"""

from __future__ import annotations


class FakeClock:
    """Time that moves only when someone sleeps or a test advances it."""

    def __init__(self, start: float = 1_700_000_000.0):
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds
