"""Crash points: the real `optout-sync sync --once` killed at every store commit of a cycle, one by one.

A random SIGKILL (test_crash.py) seldom lands between two commits a few microseconds apart. Here
the process kills itself at a chosen commit (OPTOUT_SYNC_FAILPOINT, state/failpoint.py): right
after the N-th COMMIT, and right before it (the vendor calls since the previous commit made, their
record lost), for N = 1, 2, ... until the cycle ends before reaching N. Every crash point starts
from the same world: served HubSpot and SendGrid fakes and a CSV folder, each with new opt-outs,
small pages and batches (a scan window holds several batches), and a few "park" addresses the
vendors refuse once with a 503, so pushes park items next to applied ones.

After each kill, from the store: consistent; no row before the CSV source's saved cursor is
missing (`cursor_gaps`); no sink's watermark passes an event it still needs (`watermark_gaps`).
Then clean one-shot cycles without reconcile (which would repair a loss and hide it) run until everything
made is stored and held by both vendors; no watermark gap remains.

On both backends, each crash point with a fresh store: a SQLite file, or a new PostgreSQL database
(`fresh_backends`). SQLite visits every commit. PostgreSQL, for time (a database and a migration per
point), visits a fixed sample of each kind: commits 1 to FIRST, then every STEP-th, then the last
LAST of the cycle (found by walking back from the first N the cycle does not reach); the same
checks after each. The precommit kind visits the points the commit kind killed at (the cycle's
commits are numbered alike). With FIRST, STEP, LAST = 3, 7, 2 and a cycle of 29 commits: N = 1, 2,
3, 10, 17, 24, 28, 29, after and before (16 of 58).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import write_settings
from tests.fakes.serve import serve
from connector import commands
from connector.settings import load_settings
from tests.backend_fixtures import Backend
from tests.process import run_cli

from .crash_checks import PARK_PREFIX, ParkOnce, cursor_gaps, read_store, store_rows, watermark_gaps
from .figures import report
from .vendors import HUBSPOT, SENDGRID, TOPICS

pytestmark = pytest.mark.e2e

SINKS = ("hubspot", "sendgrid")
KINDS = ("unsubscribe", "topic", "unsubscribe", "bounce", "spam")
PER_SOURCE = 20   # opt-outs made at each vendor and rows in the CSV folder
PAGE = 8          # every read takes several pages, every cursor several commits
BATCH = 6         # a sink's push takes several batches out of one scan window
PARKED = {13}     # numbers whose addresses the vendors refuse once: a push parks them mid-window
CYCLES = 4        # clean cycles after a kill that must bring everything everywhere
# PostgreSQL's sample of crash points of each kind (module docstring): about a quarter of them.
FIRST, STEP, LAST = 3, 7, 2


class World:
    """One crash point's vendors, CSV folder and store, always built the same."""

    def __init__(self, folder: Path, make_backend):
        self.folder = folder
        folder.mkdir()
        self.backend: Backend = make_backend(folder)
        self.settings_path = folder / "settings.toml"
        (folder / "inbox").mkdir()
        now_ms = int(time.time() * 1000)
        self.hubspot, self.sendgrid = (HUBSPOT.make_fake(time.time, HUBSPOT.token),
                                       SENDGRID.make_fake(time.time, SENDGRID.token))
        self.wires = {"hubspot": ParkOnce(self.hubspot.handle), "sendgrid": ParkOnce(self.sendgrid.handle)}
        self.made: set[tuple[str, str]] = set()
        rows = ["email,scope"]
        for i in range(1, PER_SOURCE + 1):
            kind = KINDS[i % len(KINDS)]
            prefix = PARK_PREFIX if i in PARKED else ""
            for fake, kit in ((self.hubspot, HUBSPOT), (self.sendgrid, SENDGRID)):
                pair = kit.seed(fake, f"{prefix}{kit.type}{i}@example.com", kind, now_ms - 60_000 + i)
                assert pair, "every seeded opt-out is new at its vendor"
                self.made.add(pair)
            scope = "newsletter" if kind == "topic" else ""
            rows.append(f"{prefix}csv{i}@example.com,{scope}")
            self.made.add((f"{prefix}csv{i}@example.com", scope or "*"))
        # Two files: the cursor covers one whole file while the other is read.
        (folder / "inbox" / "a.csv").write_text("\n".join(rows[:PER_SOURCE // 2 + 1]) + "\n")
        (folder / "inbox" / "b.csv").write_text("\n".join([rows[0], *rows[PER_SOURCE // 2 + 1:]]) + "\n")

    def settings(self, urls: dict[str, str]) -> Path:
        """The settings file: no reconcile, no retries (a 503 parks at once), small pages and batches."""
        common = {"interval": 1, "max_attempts": 1, "batch_size": BATCH, "rate_limit_requests": 100_000,
                  "overlap": "2s"}
        settings = write_settings(self.folder, [{k: v for k, v in adapter.items() if v is not None} for adapter in [
            {"name": "inbox", "type": "csv_folder", "path": "inbox", "interval": 1, "settle_seconds": 0,
             "page_size": PAGE, "max_new_per_cycle": 1_000_000},
            {**HUBSPOT.settings("hubspot", urls["hubspot"], HUBSPOT.token), **common, "timeline_page_size": PAGE},
            {**SENDGRID.settings("sendgrid", urls["sendgrid"], SENDGRID.token), **common, "page_size": PAGE},
        ]], topics=TOPICS, store=self.backend.store)
        settings.chmod(0o600)
        self.settings_path = settings
        return settings

    def run_on(self, settings: Path, after: str) -> int:
        """Clean one-shot cycles (the library, in this process) until converged; how many it took.

        The rules are checked after every cycle, so a broken one is named before convergence fails.
        """
        loaded = load_settings(settings)
        for cycle in range(1, CYCLES + 1):
            commands.sync_once(loaded)
            assert self.broken_rules(f"{after}, then {cycle} clean cycle(s)") == []
            if self.converged():
                return cycle
        raise AssertionError(f"{after}: not everything is stored and at both vendors after {CYCLES} clean cycles")

    def converged(self) -> bool:
        """Everything made is in the store and held by both vendors."""
        with read_store(self.backend, self.settings_path) as store:
            pairs, _, _ = store_rows(store) if store else (set(), True, 0)
        with self.hubspot._lock, self.sendgrid._lock:
            held = all(kit.covers(fake, address, scope)
                       for fake, kit in ((self.hubspot, HUBSPOT), (self.sendgrid, SENDGRID))
                       for address, scope in self.made)
        return self.made <= pairs and held

    def broken_rules(self, after: str) -> list[str]:
        """What the store breaks right now, one line per rule (empty: none)."""
        with read_store(self.backend, self.settings_path) as store:
            if store is None:
                return []
            broken = []
            _, consistent, _ = store_rows(store)
            if not consistent:
                broken.append(f"{after}: the store is inconsistent")
            missing = cursor_gaps(store, self.folder / "inbox", "inbox")
            if missing:
                broken.append(f"{after}: {len(missing)} CSV rows before the saved cursor are not stored, "
                              f"e.g. {missing[0]}")
            for sink in SINKS:
                gaps = watermark_gaps(store, sink)
                if gaps:
                    broken.append(f"{after}: {sink}'s watermark passes {len(gaps)} events it still needs, "
                                  f"e.g. seq {gaps[0]}")
        return broken


def sample(every: bool, known: list[int]):
    """The crash points N to visit, as a generator told (send) whether N killed the process.

    Every N until the cycle ends before one; or (PostgreSQL) the `known` points if a kind before
    found them (a cycle's commits are numbered alike for both kinds), else 1..FIRST, every STEP-th
    after, and once the cycle ends before some N, walking back from it to the last LAST that kill.
    """
    if known and not every:
        for n in known:
            yield n
        return
    n, killed = 0, True
    while killed:
        n = n + 1 if every or n < FIRST else n + STEP
        killed = yield n
    if every:
        return
    end, last, found = n, n - STEP, 0
    for n in range(end - 1, max(last, FIRST), -1):
        if found == LAST:
            return
        found += bool((yield n))


def test_a_kill_at_every_commit_of_a_cycle_loses_nothing(tmp_path, fresh_backends):
    current: dict[str, World] = {}
    points: dict[str, list[int]] = {"commit": [], "precommit": []}
    parked = most_cycles = 0
    started = time.monotonic()
    with serve(lambda r: current["world"].wires["hubspot"].handle(r)) as hubspot_url, \
            serve(lambda r: current["world"].wires["sendgrid"].handle(r)) as sendgrid_url:
        urls = {"hubspot": hubspot_url, "sendgrid": sendgrid_url}
        for when in points:
            visits = sample(every=fresh_backends.name == "sqlite", known=sorted(points["commit"]))
            n = next(visits)
            while True:
                world = current["world"] = World(tmp_path / f"{when}-{n}", fresh_backends.make)
                settings = world.settings(urls)
                killed = run_cli("--config", str(settings), "sync", "--once",
                                 env={"OPTOUT_SYNC_FAILPOINT": f"{when}:{n}"})
                if killed.returncode == -9:
                    points[when].append(n)
                    after = f"a kill {'after' if when == 'commit' else 'before'} commit {n}"
                    assert world.broken_rules(after) == []
                    most_cycles = max(most_cycles, world.run_on(settings, after))
                    parked += sum(wire.answers for wire in world.wires.values())
                else:
                    # The cycle ended before its n-th commit.
                    assert killed.returncode in (0, 1), killed.stderr
                try:
                    n = visits.send(killed.returncode == -9)
                except StopIteration:
                    break
            assert max(points[when], default=0) >= 20, f"a cycle of this world has fewer than 20 commits: {points}"
    seconds = time.monotonic() - started
    sampled = "" if fresh_backends.name == "sqlite" else f" (N = {sorted(points['commit'])})"
    report("crash points (real process, SIGKILL at chosen store commits)", [
        f"{fresh_backends.name}: `optout-sync sync --once` killed after {len(points['commit'])} of its commits "
        f"and before {len(points['precommit'])}{sampled}; HubSpot and "
        f"SendGrid fakes and a CSV folder with {PER_SOURCE} new opt-outs each, pages of {PAGE}, batches of {BATCH}",
        f"after every kill: store consistent, no CSV row before the cursor missing, no watermark past a needed "
        f"event; then clean cycles (no reconcile) converged every time, in at most {most_cycles}",
        f"push requests refused once with a 503 (items parked): {parked}",
        f"time: {seconds:.1f} s",
    ])
    assert parked > 0
