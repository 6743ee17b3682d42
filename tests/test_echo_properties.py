"""Property test of the echo rule: a sink's read-back of our own write is no news, and news is never an echo.

A source reports opt-outs; a two-way vendor holds one entry per address (as SES does) and can
also record opt-outs of its own, dated anywhere around our apply. Pushes to the vendor, reads
of it that fail or succeed, and vendor-side events interleave at random. Throughout:

- the stored reason of an address is the most binding reason any source reported to us, and
  an address nobody reported has no suppression;
- reading back an entry that is only our own write never creates or changes a suppression.
"""

from __future__ import annotations

import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings, strategies as st

from state.models import ALREADY, APPLIED, REASON_RANK, ApplyResult, OptOut, Page, utc_now
from state.store import PushOutcome, Store

ADDRESSES = ["a@example.com", "b@example.com", "c@example.com"]
PAIRS = [("imported", "user"), ("manual", "user"), ("unsubscribed", "recipient"), ("hard_bounce", "system"),
         ("spam_complaint", "system")]

# How a vendor records what we write: (reason, origin) read back, and the held_as the adapter reports.
PROFILES = {
    # Mailgun, SendGrid, Mailchimp: every opt-out becomes an unsubscribe (held_as left to the default).
    "unsubscribe_list": lambda reason: (("unsubscribed", "recipient"), None),
    # Postmark: a Customer-made manual suppression.
    "manual": lambda reason: (("manual", "user"), "manual"),
    # A sink that keeps the reason as sent.
    "faithful": lambda reason: ((reason, dict(PAIRS)[reason]), reason),
    # SES with write_other_reasons_as = BOUNCE.
    "ses_bounce": lambda reason: (((reason, "system") if reason in ("hard_bounce", "spam_complaint")
                                   else ("hard_bounce", "system")),
                                  reason if reason in ("hard_bounce", "spam_complaint") else "hard_bounce"),
}

BASE = datetime.now(timezone.utc)
# Vendor-side dates anywhere from two days before the test to two days after (before or after our apply).
dates = st.one_of(st.none(), st.integers(-2 * 86400, 2 * 86400).map(
    lambda s: (BASE + timedelta(seconds=s)).isoformat()))

step = st.one_of(
    st.tuples(st.just("source"), st.sampled_from(ADDRESSES), st.sampled_from(PAIRS), dates),
    st.tuples(st.just("vendor"), st.sampled_from(ADDRESSES), st.sampled_from(PAIRS), dates),
    st.tuples(st.just("push")),
    st.tuples(st.just("read"), st.booleans()),  # True: the read fails this cycle
)


class Vendor:
    """One entry per address: (reason, origin, date, ours). A new event replaces it only when more binding."""

    def __init__(self, profile: str):
        self.profile = PROFILES[profile]
        self.entries: dict[str, tuple[str, str, str | None, bool]] = {}

    def event(self, address: str, reason: str, origin: str, date: str | None) -> bool:
        held = self.entries.get(address)
        if held is None or REASON_RANK[reason] > REASON_RANK[held[0]]:
            self.entries[address] = (reason, origin, date, False)
            return True
        return False  # the vendor already holds something at least as binding: nothing new to report

    def apply(self, optout: OptOut) -> ApplyResult:
        if optout.address in self.entries:
            return ApplyResult(optout, ALREADY, "held already")
        (reason, origin), held_as = self.profile(optout.reason)
        self.entries[optout.address] = (reason, origin, utc_now(), True)
        return ApplyResult(optout, APPLIED, held_as=held_as)


def rows(store: Store) -> dict[str, tuple]:
    return {r[0]: tuple(r[1:]) for r in store.conn.execute(
        "SELECT address, reason, origin, source, details FROM suppressions WHERE scope = '*'")}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# The two cases that found the faults, always run: a complaint the vendor held before our apply,
# read only after the push (a failed read in between), and our unsubscribe written as a bounce.
@example(profile="ses_bounce", steps=[("vendor", ADDRESSES[0], ("spam_complaint", "system"), BASE.isoformat()),
                                      ("source", ADDRESSES[0], ("unsubscribed", "recipient"), None),
                                      ("read", True), ("push",), ("read", False)])
@example(profile="ses_bounce", steps=[("source", ADDRESSES[0], ("unsubscribed", "recipient"), None), ("push",),
                                      ("read", False)])
@example(profile="manual", steps=[("source", ADDRESSES[0], ("imported", "user"), None), ("push",), ("read", False),
                                  ("vendor", ADDRESSES[0], ("unsubscribed", "recipient"),
                                   (BASE - timedelta(days=1)).isoformat()), ("read", False)])
@given(profile=st.sampled_from(sorted(PROFILES)), steps=st.lists(step, min_size=1, max_size=25))
def test_echoes_never_change_anything_and_news_is_never_swallowed(profile, steps):
    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "store.db")
        try:
            run(store, Vendor(profile), steps)
        finally:
            store.close()


def run(store: Store, vendor: Vendor, steps: list[tuple]) -> None:
    reported: dict[str, str] = {}  # address -> the most binding reason any source reported to the store

    def report(address: str, reason: str) -> None:
        if address not in reported or REASON_RANK[reason] > REASON_RANK[reported[address]]:
            reported[address] = reason

    for kind, *args in steps:
        if kind == "source":
            address, (reason, origin), date = args
            store.ingest_page("source", Page([OptOut(address, "*", reason, origin, date)], cursor="c"))
            store.promote("source")
            report(address, reason)
        elif kind == "vendor":
            address, (reason, origin), date = args
            vendor.event(address, reason, origin, date)
        elif kind == "push":
            pending, scanned = store.pending_events("vendor", 0, 100)
            outcomes = [PushOutcome(p.seq, p.optout, vendor.apply(p.optout)) for p in pending]
            store.record_push("vendor", outcomes, scanned)
        elif kind == "read" and not args[0]:
            before = rows(store)
            events_before = store.conn.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
            page = [OptOut(a, "*", r, o, d) for a, (r, o, d, _) in vendor.entries.items()]
            store.ingest_page("vendor", Page(page, cursor="v"))
            store.promote("vendor")
            after = rows(store)
            for address, (reason, _, _, ours) in vendor.entries.items():
                if ours:
                    # Exactly what we sent, read back: no new suppression, no change, no event.
                    assert after.get(address) == before.get(address), (address, before.get(address), after.get(address))
                    assert not store.conn.execute(
                        "SELECT 1 FROM events WHERE seq > ? AND address = ? AND kind IN ('suppressed', 'changed')",
                        (events_before, address)).fetchone()
                else:
                    report(address, reason)
        stored = {address: row[0] for address, row in rows(store).items()}
        assert stored == reported, (kind, args, stored, reported, vendor.entries)
