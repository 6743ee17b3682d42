"""Property tests of the engine: random opt-outs, cycles, crashes and vendor faults converge.

After quiescence every writable adapter holds the union of all opt-outs it can
represent, nothing was lost, nothing was ever removed at a vendor, and no
vendor saw the same (address, scope) take effect twice.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from adapters import registry
from connector.engine import Engine
from connector.settings import validate_settings
from state.models import OptOut
from state.store import Store

from . import memory_adapter

ADAPTERS = [
    {"name": "crm", "topics": {"news": "n1", "product": "p1"}, "batch_size": 3, "page_size": 2},
    {"name": "esp", "topics": {"news": "g7"}, "batch_size": 2, "page_size": 3},
    {"name": "list", "role": "write", "batch_size": 5},
    {"name": "feed", "role": "read", "page_size": 1},
]
SCOPES = ["*", "news", "product"]
REASONS = [("unsubscribed", "recipient"), ("hard_bounce", "system"), ("spam_complaint", "system"),
           ("imported", "user")]


class Crash(BaseException):
    """Stands for kill -9: not an Exception, so nothing on the way catches it."""


step = st.one_of(
    st.tuples(st.just("optout"), st.sampled_from(["crm", "esp", "feed"]), st.integers(0, 7),
              st.sampled_from(SCOPES), st.sampled_from(REASONS)),
    st.tuples(st.just("cycle"), st.sampled_from(["crm", "esp", "list", "feed", None])),
    st.tuples(st.just("crash"), st.sampled_from(["apply", "ingest", "promote", "record_push"]),
              st.integers(0, 3)),
    st.tuples(st.just("transient"), st.sampled_from(["crm", "esp", "list"])),
)


class World:
    """Vendors, a store on disk, and an engine that can be crashed and restarted."""

    def __init__(self, folder: Path, policy: str):
        raw = {"store": {"path": str(folder / "store.db")}, "topics": {"news": "N", "product": "P"},
               "sync": {"unmapped_topics": policy},
               "adapters": [{"type": "memory", **a} for a in ADAPTERS]}
        self.settings = validate_settings(raw, folder / "settings.toml")
        self.store = None
        self.crash_at: tuple[str, int] | None = None
        self.start()

    def start(self) -> None:
        if self.store is not None:
            self.store.close()
        self.store = Store(self.settings.store.path)
        self.adapters = {a.name: registry.build(a, self.settings.topics) for a in self.settings.adapters}
        self.engine = Engine(self.settings, self.store, self.adapters)
        self._arm()

    def _arm(self) -> None:
        world = self

        def tripwire(point, original):
            def wrapped(*args, **kwargs):
                if world.crash_at and world.crash_at[0] == point:
                    if world.crash_at[1] == 0:
                        world.crash_at = None
                        if point == "apply":
                            original(*args, **kwargs)  # the vendor got it; the store never hears
                        raise Crash(point)
                    world.crash_at = (point, world.crash_at[1] - 1)
                return original(*args, **kwargs)
            return wrapped

        for name in ("ingest_page", "promote", "record_push"):
            setattr(self.store, name, tripwire(name.split("_")[0] if name != "record_push" else name,
                                               getattr(self.store, name)))
        for adapter in self.adapters.values():
            adapter.apply = tripwire("apply", adapter.apply)

    def cycle(self, name: str | None) -> None:
        try:
            self.engine.sync_once([name] if name else None)
        except Crash:
            self.start()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step, max_size=40), policy=st.sampled_from(["skip", "global"]))
def test_random_interleavings_converge_without_loss_or_resubscribe(steps, policy):
    memory_adapter.VENDORS.clear()
    with tempfile.TemporaryDirectory() as folder:
        world = World(Path(folder), policy)
        made: set[tuple[str, str]] = set()
        for action in steps:
            if action[0] == "optout":
                _, name, n, scope, (reason, origin) = action
                optout = OptOut(f"user{n}@example.com", scope, reason, origin)
                world.adapters[name].opt_out(optout)
                made.add((optout.address, optout.scope))
            elif action[0] == "cycle":
                world.cycle(action[1])
            elif action[0] == "crash":
                world.crash_at = (action[1], action[2])
            else:
                world.adapters[action[1]].fail_transient_batches += 1

        # Quiescence: faults stop, a few ordinary cycles run.
        world.crash_at = None
        for adapter in world.adapters.values():
            adapter.fail_transient_batches = 0
        for _ in range(3):
            world.cycle(None)

        rows = world.store.conn.execute("SELECT address, scope, source FROM suppressions").fetchall()
        stored = {(address, scope) for address, scope, _ in rows}
        assert made <= stored, f"lost: {made - stored}"
        for config in world.settings.adapters:
            vendor = world.adapters[config.name]
            assert vendor.removed == [], f"{config.name} was asked to remove a suppression"
            assert all(n == 1 for n in vendor.effects.values()), f"{config.name} applied something twice"
            if not config.writes:
                continue
            expected = set()
            for address, scope, source in rows:
                if source == config.name:
                    expected.add((address, scope))  # its own opt-out, held as it made it
                elif scope == "*" or scope in config.topics:
                    expected.add((address, scope))
                elif policy == "global":
                    expected.add((address, "*"))
            assert expected <= set(vendor.held), f"{config.name} lacks {expected - set(vendor.held)}"
            assert list(world.store.failures(config.name)) == [] or policy == "skip"
        world.store.close()
