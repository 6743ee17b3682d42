"""An in-memory adapter for engine tests: a vendor that keeps state and can be made to fail.

It records every call it receives, so tests can assert what a sink was sent,
that nothing was ever removed (no re-subscribe) and that no address was
applied twice with a different effect.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from adapters.base import AdapterSettings, Capabilities
from adapters import registry
from state.errors import PermanentError, TransientError
from state.models import ALREADY, APPLIED, PERMANENT, TRANSIENT, ApplyResult, OptOut, Page, Resubscribe


class MemorySettings(AdapterSettings):
    type: Literal["memory"] = "memory"
    batch_size: int = Field(default=10, ge=1)
    page_size: int = Field(default=7, ge=1)


# Instances by adapter name, so a test can reach the adapter the engine built.
VENDORS: dict[str, "MemoryAdapter"] = {}


class MemoryAdapter:
    settings_model = MemorySettings

    def __init__(self, settings: MemorySettings, topics: dict[str, str]):
        self.settings = settings
        self.name = settings.name
        self.capabilities = Capabilities(read_changes=True, read_all=True, write=True, remove=True,
                                         batch_size=settings.batch_size, scopes=frozenset(settings.topics))
        previous = VENDORS.get(self.name)
        # A rebuilt adapter (after a simulated crash) talks to the same vendor state.
        self.held: dict[tuple[str, str], OptOut] = previous.held if previous else {}
        self.log: list[OptOut] = previous.log if previous else []
        self.apply_calls: list[list[OptOut]] = previous.apply_calls if previous else []
        self.removed: list[OptOut] = previous.removed if previous else []
        self.effects: Counter = previous.effects if previous else Counter()
        self.fail_transient_batches = 0
        self.fail_permanent_addresses: set[str] = set()
        self.fail_transient_addresses: set[str] = set()
        self.raise_permanent = False
        self.read_error: Exception | None = None
        VENDORS[self.name] = self

    # Things a test does "at the vendor":
    def opt_out(self, optout: OptOut) -> None:
        """Record an opt-out as if a recipient made it at the vendor."""
        self.held.setdefault((optout.address, optout.scope), optout)
        self.log.append(optout)

    def resubscribe(self, address: str, scope: str = "*", by: str = "recipient", occurred_at: str | None = None,
                    **evidence) -> None:
        """A change back to subscribed at the vendor, made by `by`: the vendor no longer holds the opt-out."""
        self.held.pop((address, scope), None)
        self.log.append(Resubscribe(address, scope, by, occurred_at, {"vendor": "memory", **evidence}))

    def read_changes(self, cursor: str | None) -> Iterator[Page]:
        if self.read_error:
            raise self.read_error
        position = int(cursor or 0)
        while position < len(self.log):
            chunk = self.log[position:position + self.settings.page_size]
            position += len(chunk)
            yield Page([o for o in chunk if isinstance(o, OptOut)], cursor=str(position),
                       resubscribes=[r for r in chunk if isinstance(r, Resubscribe)])

    def read_all(self) -> Iterator[Page]:
        if self.read_error:
            raise self.read_error
        items = sorted(self.held.values(), key=lambda o: (o.address, o.scope))
        for start in range(0, len(items), self.settings.page_size):
            yield Page(items[start:start + self.settings.page_size])

    def apply(self, batch: list[OptOut]) -> list[ApplyResult]:
        assert len(batch) <= self.settings.batch_size, "engine exceeded the batch limit"
        if self.raise_permanent:
            raise PermanentError("401 invalid credentials")
        if self.fail_transient_batches:
            self.fail_transient_batches -= 1
            raise TransientError("503 service unavailable")
        self.apply_calls.append(list(batch))
        results = []
        for o in batch:
            key = (o.address, o.scope)
            if o.address in self.fail_permanent_addresses:
                results.append(ApplyResult(o, PERMANENT, "vendor refuses this address"))
            elif o.address in self.fail_transient_addresses:
                results.append(ApplyResult(o, TRANSIENT, "429 try later"))
            elif key in self.held:
                results.append(ApplyResult(o, ALREADY))
            else:
                self.held[key] = o
                self.effects[key] += 1
                results.append(ApplyResult(o, APPLIED))
        return results

    def remove(self, batch: list[OptOut]) -> list[ApplyResult]:
        self.removed.extend(batch)
        results = []
        for o in batch:
            existed = self.held.pop((o.address, o.scope), None)
            results.append(ApplyResult(o, APPLIED if existed else ALREADY))
        return results

    def check(self) -> list[str]:
        return [f"{len(self.held)} held"]

    def close(self) -> None:
        pass


registry.register("memory", MemoryAdapter)
