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
    """Make `type = "bench_vendor"` known to the settings loader."""
    registry.register("bench_vendor", BenchVendor)
