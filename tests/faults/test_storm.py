"""The storm: three HTTP adapters, 20,000 opt-outs made at their vendors, 30 % of requests failing at random.

After the faults stop, every vendor must hold the union within 3 cycles, with nothing lost or invented,
no address given two different effects, and at most 1.5 x the requests of the same run without faults
(plus the failed ones). In-process: the real engine and store, the vendor fakes behind MockTransport,
one pretend clock so that back-off and pacing cost no real time.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from .figures import report
from .vendors import KITS
from .world import World

OPT_OUTS = 20_000
FAULT_RATE = 0.30
STORM_CYCLES = 6
CLEAN_CYCLES = 3
SEED = 20261123
# The figure is the first trio's; the second puts the other adapters through the same storm, smaller
# (Mailchimp looks each member up: one request per address).
TRIOS = [(("hubspot", "sendgrid", "mailgun"), OPT_OUTS), (("hubspot", "postmark", "mailchimp"), 5_000)]


@dataclass
class Run:
    """What one run of the storm schedule did."""

    world: World
    cycles_to_converge: int | None = None
    storm_requests: int = 0
    storm_failed: int = 0
    parked: int = 0
    errors: Counter = field(default_factory=Counter)
    seconds: float = 0.0


def run(tmp_path, trio: tuple[str, ...], count: int, rate: float, cycles: int | None = None) -> Run:
    """Seed, run STORM_CYCLES cycles at `rate`, then fault-free cycles until converged (at most CLEAN_CYCLES).

    With `cycles`, run exactly that many cycles in all (the fault-free run follows the faulty one's schedule).
    """
    started = time.monotonic()
    world = World(tmp_path / f"rate-{rate}", [KITS[name] for name in trio], seed=SEED, rate=rate)
    world.seed(count, seed=SEED)
    result = Run(world)
    total = cycles if cycles is not None else STORM_CYCLES + CLEAN_CYCLES
    for number in range(1, total + 1):
        if number == STORM_CYCLES + 1 and rate:
            result.storm_requests, result.storm_failed = world.requests, world.failed
            world.set_faults(0.0)
        for cycle_report in world.cycle():
            result.parked += cycle_report.parked
            if cycle_report.error is not None:
                result.errors[type(cycle_report.error).__name__] += 1
        converged = (not rate or number > STORM_CYCLES) and world.converged()
        if converged and result.cycles_to_converge is None:
            result.cycles_to_converge = number - (STORM_CYCLES if rate else 0)
            if cycles is None:
                break
    result.seconds = time.monotonic() - started
    return result


@pytest.mark.parametrize("trio, count", TRIOS, ids=["+".join(t) for t, _ in TRIOS])
def test_storm_of_faults_then_convergence_within_three_cycles(tmp_path, trio, count):
    faulty = run(tmp_path, trio, count, FAULT_RATE)
    world = faulty.world
    cycles_run = STORM_CYCLES + (faulty.cycles_to_converge or CLEAN_CYCLES)
    clean = run(tmp_path, trio, count, 0.0, cycles=cycles_run)
    try:
        missing = world.missing()
        stored = world.stored()
        echoes, invented = world.extras()
        effects = world.effects()
        repeated = {name: [(key, n) for key, n in counter.items() if n > 1] for name, counter in effects.items()}
        contradicting = {name: [key for key in counter if key[2] == "removed"] for name, counter in effects.items()}
        observed_rate = faulty.storm_failed / max(1, faulty.storm_requests)
        bound = 1.5 * clean.world.requests + world.failed
        report(f"storm {' + '.join(trio)}", [
            f"{count:,} opt-outs made at the vendors ({len(world.union):,} distinct address/scope pairs), "
            f"{len(trio)} adapters, seed {SEED}",
            f"faults during {STORM_CYCLES} cycles at a rate of {FAULT_RATE:.0%}: {faulty.storm_failed:,} of "
            f"{faulty.storm_requests:,} requests failed ({observed_rate:.0%}): " + ", ".join(f"{k} {v}" for k, v in sorted(world.injected().items())),
            f"cycle errors during the storm: {dict(faulty.errors) or 'none'}; items parked: {faulty.parked:,}",
            f"after the faults stopped: converged in {faulty.cycles_to_converge} cycle(s) (limit {CLEAN_CYCLES}); "
            f"fault-free run converged in {clean.cycles_to_converge} cycle(s)",
            f"lost: {len(world.union - stored)} in the store, {sum(v for k, v in missing.items() if k != 'store')} "
            f"at vendors; invented: {len(invented)}; redundant topic echoes of all-email writes (fan-out "
            f"sinks): {len(echoes):,}",
            "effects per address at a vendor: max "
            f"{max((max(c.values(), default=0) for c in effects.values()), default=0)}, repeated "
            f"{sum(map(len, repeated.values()))}, removals {sum(map(len, contradicting.values()))}, "
            f"re-subscribes/created contacts {len(world.misuse())}",
            f"requests: {world.requests:,} with faults vs {clean.world.requests:,} fault-free over the same "
            f"{cycles_run} cycles; bound 1.5 x {clean.world.requests:,} + {world.failed:,} failed = {bound:,.0f}",
            f"time: {faulty.seconds:.1f} s with faults, {clean.seconds:.1f} s fault-free",
        ])
        # Each request fails with probability FAULT_RATE; the observed share runs a little higher because a
        # cycle that meets a permanent fault stops early (fewer requests after a failure).
        assert all(injector.rate == 0 for injector in world.injectors.values())
        assert 0.27 <= observed_rate <= 0.40
        assert faulty.cycles_to_converge is not None and faulty.cycles_to_converge <= CLEAN_CYCLES, missing
        assert world.union <= stored and not invented, sorted(invented)[:5]
        assert all(count == 0 for count in missing.values()), missing
        assert not any(repeated.values()) and not any(contradicting.values()), (repeated, contradicting)
        assert world.misuse() == []
        assert clean.cycles_to_converge is not None and clean.world.converged()
        assert world.requests <= bound
    finally:
        world.close()
        clean.world.close()
