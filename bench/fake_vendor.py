"""A fake vendor for the push benchmark: a batch limit, a fixed latency per request, a request count.

The time spent inside `apply` is the fake server's; the rest of the wall time is the engine's.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field

from adapters import registry
from adapters.base import AdapterSettings, Capabilities
from state.models import ALREADY, APPLIED, ApplyResult, OptOut, Page


class BenchVendorSettings(AdapterSettings):
    """Settings of the benchmark vendor."""

    type: Literal["bench_vendor"] = "bench_vendor"
    batch_size: int = Field(default=1000, ge=1)
    latency: float = 0.0


class BenchVendor:
    """Holds suppressions in a set; refuses a batch over its limit like a real API would."""

    settings_model = BenchVendorSettings

    def __init__(self, settings: BenchVendorSettings, topics: dict[str, str]):
        self.settings = settings
        self.name = settings.name
        self.capabilities = Capabilities(read_changes=True, read_all=True, write=True,
                                         batch_size=settings.batch_size)
        self.held: set[tuple[str, str]] = set()
        self.requests = 0
        self.time_in_apply = 0.0

    def read_changes(self, cursor):
        return iter([Page(cursor=cursor)])

    def read_all(self):
        return iter([])

    def apply(self, batch: list[OptOut]) -> list[ApplyResult]:
        started = time.perf_counter()
        self.requests += 1
        if len(batch) > self.settings.batch_size:
            raise ValueError(f"batch of {len(batch)} over the limit {self.settings.batch_size}")
        time.sleep(self.settings.latency)
        results = []
        for optout in batch:
            key = (optout.address, optout.scope)
            results.append(ApplyResult(optout, ALREADY if key in self.held else APPLIED))
            self.held.add(key)
        self.time_in_apply += time.perf_counter() - started
        return results

    def remove(self, batch):
        return [ApplyResult(o, ALREADY) for o in batch]

    def check(self):
        return []

    def close(self):
        pass


def register() -> None:
    """Make `type = "bench_vendor"` and `type = "bench_paged"` known to the settings loader."""
    registry.register("bench_vendor", BenchVendor)
    registry.register("bench_paged", PagedVendor)


class PagedVendorSettings(AdapterSettings):
    """Settings of the paged benchmark vendor: how many it holds, its page size and its rate limit."""

    type: Literal["bench_paged"] = "bench_paged"
    holds: int = Field(default=0, ge=0)
    first: int = Field(default=0, ge=0)
    page_size: int = Field(default=200, ge=1)
    requests_per_second: float = Field(default=4.0, gt=0)
    latency: float = 0.05


class PagedVendor:
    """Serves `holds` addresses (person<first>... in order) a page per request, no faster than its rate limit.

    Like a vendor that enforces its limit: request k is answered no earlier than k / rate after
    the first, plus the latency of one request. `pages` counts the requests answered.
    """

    settings_model = PagedVendorSettings

    def __init__(self, settings: PagedVendorSettings, topics: dict[str, str]):
        self.settings = settings
        self.name = settings.name
        self.capabilities = Capabilities(read_changes=True, read_all=True, write=True, batch_size=1000)
        self.pages = 0

    def read_changes(self, cursor):
        return iter([Page(cursor=cursor)])

    def read_all(self):
        s = self.settings
        started = time.perf_counter()
        for start in range(s.first, s.first + s.holds, s.page_size):
            due = started + self.pages / s.requests_per_second + s.latency
            time.sleep(max(0.0, due - time.perf_counter()))
            self.pages += 1
            stop = min(s.first + s.holds, start + s.page_size)
            yield Page([OptOut(f"person{i:08d}@example.com", reason="unsubscribed", origin="recipient")
                        for i in range(start, stop)])

    def apply(self, batch):
        return [ApplyResult(o, APPLIED) for o in batch]

    def remove(self, batch):
        return [ApplyResult(o, ALREADY) for o in batch]

    def check(self):
        return []

    def close(self):
        pass
