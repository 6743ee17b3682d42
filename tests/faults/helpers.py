"""Small builders shared by the fault tests: one adapter behind its fake and injector, seeded reads, store snapshots."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx

from adapters import registry
from state.models import OptOut
from tests.fakes.clock import FakeClock

from .injector import FaultInjector
from .vendors import SEED_KINDS, Kit

# Quick back-off and no pacing, unless a test sets them: the pretend clock makes them free anyway.
FAST = {"backoff_initial": 1, "backoff_max": 8, "rate_limit_requests": 100_000}


def one(kit: Kit, *, seed: int = 0, clock: FakeClock | None = None, fake=None, pages: bool = True,
        network: bool = False, **overrides):
    """(fake, injector, adapter, clock) for one adapter of this kit (a new fake unless given), faults off.

    With `network`, the adapter talks to its base_url over real sockets instead of to the injector.
    """
    clock = clock or FakeClock()
    fake = fake if fake is not None else kit.make_fake(clock, kit.token)
    injector = FaultInjector(fake.handle, kit.profile, seed=seed, clock=clock.time)
    raw = {**kit.settings(kit.type, f"https://{kit.type}.vendor.test", kit.token), **FAST,
           **(kit.small_pages if pages else {}), **overrides}
    config = registry.settings_model(kit.type).model_validate(raw)
    transport = None if network else httpx.MockTransport(injector.handle)
    return fake, injector, kit.build(config, transport, clock), clock


def set_handler(adapter, handler) -> None:
    """Make an adapter's requests go to `handler`, keeping any signing transport in front (SES)."""
    transport = adapter.http._client._transport
    if hasattr(transport, "inner"):
        transport.inner = httpx.MockTransport(handler)
    else:
        adapter.http._client._transport = httpx.MockTransport(handler)


def seeded(kit: Kit, count: int = 35, **one_options):
    """one(kit, **one_options) with `count` opt-outs seeded at its vendor: (fake, injector, adapter, clock)."""
    fake, injector, adapter, clock = one(kit, **one_options)
    seed_vendor(kit, fake, clock, count=count)
    return fake, injector, adapter, clock


def seed_vendor(kit: Kit, fake, clock: FakeClock, count: int = 35) -> set[tuple[str, str]]:
    """`count` opt-outs of every kind made at the vendor; the (address, scope) pairs it reports."""
    addresses = [f"seed{i}@example.com" for i in range(count)]
    kit.prepare(fake, addresses + [f"new{i}@example.com" for i in range(10)])
    now_ms = int(clock.time() * 1000)
    made = set()
    for i, address in enumerate(addresses):
        pair = kit.seed(fake, address, SEED_KINDS[i % len(SEED_KINDS)], now_ms - (i + 1) * 60_000)
        if pair is not None:
            made.add(pair)
    return made


def read_set(adapter) -> set[tuple[str, str, str, str]]:
    """Everything one incremental read from the beginning reports: (address, scope, reason, origin)."""
    return {(o.address, o.scope, o.reason, o.origin) for page in adapter.read_changes(None) for o in page.optouts}


def new_optouts(count: int = 3) -> list[OptOut]:
    """Opt-outs from elsewhere to apply (addresses the kits' `prepare` made members where that matters)."""
    return [OptOut(f"new{i}@example.com") for i in range(count)]


def snapshot(path: Path) -> dict[str, list]:
    """The opt-out data of a store file: suppressions, events, staging, lifts, and the cursors and watermarks.

    A checkpoint row still at its defaults (no cursor, watermark 0) counts as absent: the
    bookkeeping of a run creates one, which changes no opt-out and no position.
    """
    conn = sqlite3.connect(path)
    try:
        tables = ("suppressions", "events", "staged", "lifts")
        data = {t: sorted(map(repr, conn.execute(f"SELECT * FROM {t}").fetchall())) for t in tables}
        data["checkpoints"] = sorted(map(repr, conn.execute(
            "SELECT adapter, read_cursor, applied_seq, paused FROM checkpoints"
            " WHERE read_cursor IS NOT NULL OR applied_seq != 0 OR paused != 0").fetchall()))
        return data
    finally:
        conn.close()
