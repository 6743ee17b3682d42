"""An in-process world for fault tests: vendor fakes behind fault injectors, their adapters, a real store and
the real engine, all on one pretend clock so that back-off and pacing cost no real time.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import httpx

from connector.engine import CycleReport, Engine
from connector.settings import validate_settings
from state.store import Store
from tests.fakes.clock import FakeClock

from .injector import ALL_KINDS, FaultInjector
from .vendors import SEED_KINDS, TOPICS, Kit

# Seconds the pretend clock moves between cycles: more than HubSpot's read overlap, like a real interval.
CYCLE_GAP = 900.0


class World:
    """Adapters named after their position (`<type>-<n>`), each with its fake and injector."""

    def __init__(self, folder: Path, kits: list[Kit], *, seed: int = 0, rate: float = 0.0,
                 kinds: tuple[str, ...] = ALL_KINDS, overrides: dict | None = None):
        self.clock = FakeClock()
        self.kits: dict[str, Kit] = {}
        self.fakes: dict[str, object] = {}
        self.injectors: dict[str, FaultInjector] = {}
        raws = []
        for index, kit in enumerate(kits):
            name = f"{kit.type}-{index}"
            self.kits[name] = kit
            self.fakes[name] = kit.make_fake(self.clock, kit.token)
            self.injectors[name] = FaultInjector(self.fakes[name].handle, kit.profile, seed=seed * 100 + index,
                                                 rate=rate, kinds=kinds, clock=self.clock.time)
            raws.append({**kit.settings(name, f"https://{name}.vendor.test", kit.token), **(overrides or {})})
        folder.mkdir(parents=True, exist_ok=True)
        self.settings = validate_settings({"store": {"path": str(folder / "store.db")}, "topics": TOPICS,
                                           "adapters": raws}, folder / "settings.toml")
        self.store = Store(self.settings.store.path)
        self.adapters = {name: kit.build(self.settings.adapter(name),
                                         httpx.MockTransport(self.injectors[name].handle), self.clock)
                         for name, kit in self.kits.items()}
        self.engine = Engine(self.settings, self.store, self.adapters)
        self.union: set[tuple[str, str]] = set()

    def close(self) -> None:
        """Close the adapters and the store."""
        for adapter in self.adapters.values():
            adapter.close()
        self.store.close()

    # -- the vendors' side ---------------------------------------------------------------------

    def seed(self, count: int, seed: int, overlap: float = 0.05) -> None:
        """`count` opt-outs made at the vendors, spread evenly; some addresses opt out at two of them."""
        rng = random.Random(seed)
        names = list(self.kits)
        population = [f"person{i}@example.com" for i in range(count)]
        for name, kit in self.kits.items():
            kit.prepare(self.fakes[name], population)
        now_ms = int(self.clock.time() * 1000)
        weights = (0.8, 0.1, 0.05, 0.05)
        for i in range(count):
            name = names[i % len(names)]
            if i and rng.random() < overlap:
                address = f"person{rng.randrange(i)}@example.com"   # the same person at another vendor
            else:
                address = f"person{i}@example.com"
            kind = rng.choices(SEED_KINDS, weights)[0]
            at = now_ms - rng.randint(3_600_000, 20 * 86_400_000)
            made = self.kits[name].seed(self.fakes[name], address, kind, at)
            if made is not None:
                self.union.add(made)

    def set_faults(self, rate: float) -> None:
        """Switch every injector's fault rate."""
        for injector in self.injectors.values():
            injector.set(rate=rate)

    # -- running -------------------------------------------------------------------------------

    def cycle(self) -> list[CycleReport]:
        """One sync cycle of every adapter (all pulls, then all pushes), then the interval passes."""
        reports = self.engine.sync_once()
        self.clock.advance(CYCLE_GAP)
        return reports

    # -- what holds ------------------------------------------------------------------------------

    def stored(self) -> set[tuple[str, str]]:
        """Every (address, scope) the store suppresses."""
        return {(row[0], row[1]) for row in self.store.iter_suppressions()}

    def extras(self) -> tuple[set, set]:
        """Stored pairs beyond the union: (redundant echoes of a fan-out sink, anything else = invented).

        A fan-out sink (see Kit.fans_out) reports our all-email write back per topic, as made by a
        user; such a row is redundant while the address's all-email opt-out stands.
        """
        fan_out = {name for name, kit in self.kits.items() if kit.fans_out}
        echoes, invented = set(), set()
        for address, scope, reason, origin, source, *_ in self.store.iter_suppressions():
            if (address, scope) in self.union:
                continue
            if scope != "*" and source in fan_out and origin == "user" and (address, "*") in self.union:
                echoes.add((address, scope))
            else:
                invented.add((address, scope))
        return echoes, invented

    def missing(self) -> dict[str, int]:
        """Per adapter (and 'store'): how many (address, scope) of the union it does not hold."""
        counts = {"store": len(self.union - self.stored())}
        for name, kit in self.kits.items():
            counts[name] = sum(1 for address, scope in self.union if not kit.covers(self.fakes[name], address, scope))
        return counts

    def converged(self) -> bool:
        """True when the store holds the union and nothing invented, and every vendor holds all of it."""
        return not self.extras()[1] and not any(self.missing().values())

    def effects(self) -> dict[str, Counter]:
        """Per adapter: the state changes its vendor recorded from API calls."""
        return {name: kit.effects(self.fakes[name]) for name, kit in self.kits.items()}

    def misuse(self) -> list[str]:
        """Re-subscribes or created contacts at any vendor."""
        return [f"{name}: {problem}" for name, kit in self.kits.items() for problem in kit.misuse(self.fakes[name])]

    @property
    def requests(self) -> int:
        return sum(i.seen for i in self.injectors.values())

    @property
    def failed(self) -> int:
        return sum(i.failed for i in self.injectors.values())

    def injected(self) -> Counter:
        total: Counter = Counter()
        for injector in self.injectors.values():
            total.update(injector.injected)
        return total
