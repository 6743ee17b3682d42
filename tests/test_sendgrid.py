"""The `sendgrid` adapter against a stateful SendGrid fake: mapping, paging, windows, writes, errors, the engine.

Every test talks HTTP through httpx.MockTransport to tests/fakes/sendgrid.py, with
a pretend clock shared by adapter and fake, so waits are exact and nothing sleeps.
"""

from __future__ import annotations

import httpx
import pytest

from adapters import registry
from adapters.sendgrid import SendGridAdapter, SendGridSettings
from connector.engine import Engine
from connector.settings import validate_settings
from state.errors import ConfigError, PermanentError, TransientError
from state.models import ALREADY, APPLIED, PERMANENT, OptOut
from state.store import Store

from .fakes.clock import FakeClock
from .fakes.sendgrid import FakeSendGrid

KEY = "SG.abcdefghijklmnop.qrstuvwxyz0123456789-secret"
TOPICS = {"newsletter": "Newsletter", "product": "Product news"}
NOW = 1_700_000_000


def make(fake: FakeSendGrid | None = None, clock: FakeClock | None = None, key: str = KEY,
         **settings) -> tuple[SendGridAdapter, FakeSendGrid, FakeClock]:
    clock = clock or FakeClock(NOW)
    fake = fake or FakeSendGrid(KEY, clock=clock)
    config = SendGridSettings(**{"name": "sendgrid", "api_key": key, "base_url": "https://api.sendgrid.test",
                                 "topics": {"newsletter": "101"}, "backoff_initial": 1, "backoff_max": 4,
                                 **settings})
    adapter = SendGridAdapter(config, TOPICS, transport=httpx.MockTransport(fake.handle), clock=clock)
    return adapter, fake, clock


def read(pages) -> tuple[list[OptOut], list, list[str | None]]:
    optouts, rejected, cursors = [], [], []
    for page in pages:
        optouts += page.optouts
        rejected += page.rejected
        cursors.append(page.cursor)
    return optouts, rejected, cursors


# -- mapping ----------------------------------------------------------------------------------------------


def test_each_list_maps_to_scope_reason_and_origin_and_non_opt_outs_are_ignored():
    adapter, fake, clock = make()
    fake.recipient_unsubscribes("Ann@Example.com", at=NOW - 100)
    fake.recipient_leaves_group("bob@example.com", 101, at=NOW - 90)
    fake.recipient_leaves_group("carl@example.com", 102, at=NOW - 80)      # group no topic maps to
    fake.bounce("dora@example.com", status="5.1.1", reason="550 5.1.1 user unknown", at=NOW - 70)
    fake.bounce("emil@example.com", status="4.2.2", reason="452 mailbox full", at=NOW - 60)  # soft
    fake.bounce("finn@example.com", status="", reason="bounced", at=NOW - 55)  # no readable status
    fake.spam_report("gina@example.com", ip="192.0.2.7", at=NOW - 50)
    fake.block("hugo@example.com", at=NOW - 40)
    fake.invalid_email("ivan@example", at=NOW - 30)

    optouts, rejected, cursors = read(adapter.read_changes(None))

    got = {(o.address, o.scope, o.reason, o.origin) for o in optouts}
    assert got == {
        ("ann@example.com", "*", "unsubscribed", "recipient"),
        ("bob@example.com", "newsletter", "unsubscribed", "recipient"),
        ("dora@example.com", "*", "hard_bounce", "system"),
        ("finn@example.com", "*", "hard_bounce", "system"),
        ("gina@example.com", "*", "spam_complaint", "system"),
    }
    dora = next(o for o in optouts if o.address == "dora@example.com")
    assert dora.details["bounce_status"] == "5.1.1" and "user unknown" in dora.details["bounce_reason"]
    assert dora.occurred_at.startswith("2023-11-14T22:12")
    assert next(o for o in optouts if o.address == "gina@example.com").details["ip"] == "192.0.2.7"
    assert [r.value for r in rejected] == ["carl@example.com"] and "group 102" in rejected[0].reason
    assert cursors[-1] == str(NOW)
    # Blocks and invalid emails are never even read.
    assert not fake.calls("/blocks") and not fake.calls("/invalid_emails")


def test_bounces_without_a_status_can_be_ignored_by_setting():
    adapter, fake, _ = make(unclassified_bounces="ignore")
    fake.bounce("finn@example.com", status="", at=NOW - 5)
    fake.bounce("dora@example.com", status="5.0.0", at=NOW - 5)

    optouts, _, _ = read(adapter.read_changes(None))

    assert [o.address for o in optouts] == ["dora@example.com"]


def test_reads_only_the_lists_asked_for():
    adapter, fake, _ = make(read_lists=["spam_reports"])
    fake.recipient_unsubscribes("ann@example.com")
    fake.spam_report("gina@example.com")

    optouts, _, _ = read(adapter.read_changes(None))

    assert [o.address for o in optouts] == ["gina@example.com"]
    assert {c.path for c in fake.requests} == {"/v3/suppression/spam_reports"}


# -- reading: windows and paging --------------------------------------------------------------------------


def test_incremental_window_starts_at_cursor_minus_overlap_and_ends_now():
    adapter, fake, clock = make(overlap=600)
    fake.recipient_unsubscribes("old@example.com", at=NOW - 5000)
    fake.recipient_unsubscribes("new@example.com", at=NOW - 100)

    optouts, _, cursors = read(adapter.read_changes(str(NOW - 1000)))

    assert [o.address for o in optouts] == ["new@example.com"]
    call = fake.calls("/v3/suppression/unsubscribes")[0]
    assert call.params["start_time"] == str(NOW - 1600) and call.params["end_time"] == str(NOW)
    assert cursors == [None, str(NOW)]


def test_paging_walks_every_page_with_limit_and_offset():
    adapter, fake, _ = make(page_size=100, read_lists=["unsubscribes"])
    for i in range(1234):
        fake.recipient_unsubscribes(f"user{i}@example.com", at=NOW - i)

    pages = list(adapter.read_all())

    addresses = [o.address for p in pages for o in p.optouts]
    assert len(addresses) == 1234 and len(set(addresses)) == 1234
    offsets = [int(c.params["offset"]) for c in fake.calls("/v3/suppression/unsubscribes")]
    # `limit` is the page size: the short thirteenth page ends the list, no empty page is asked for.
    assert offsets == list(range(0, 1300, 100))
    assert all(c.params["limit"] == "100" for c in fake.requests)
    assert all(p.cursor is None for p in pages)


def test_a_page_size_over_sendgrids_maximum_is_refused_by_the_settings():
    with pytest.raises(ValueError, match="page_size"):
        make(page_size=501)


def test_unmapped_group_is_reported_once_not_again_in_the_overlap():
    adapter, fake, clock = make()
    fake.recipient_leaves_group("carl@example.com", 102, at=NOW - 10)
    _, rejected, cursors = read(adapter.read_changes(None))
    assert len(rejected) == 1

    clock.advance(60)
    _, rejected_again, _ = read(adapter.read_changes(cursors[-1]))

    assert rejected_again == []


# -- writing ----------------------------------------------------------------------------------------------


def test_apply_writes_global_and_group_suppressions_and_repeats_are_already():
    adapter, fake, _ = make()
    batch = [OptOut("ann@example.com"), OptOut("bob@example.com", scope="newsletter"),
             OptOut("cat@example.com", scope="product")]

    first = adapter.apply(batch)

    assert [r.outcome for r in first] == [APPLIED, APPLIED, PERMANENT]
    assert "no SendGrid group id" in first[2].message
    assert fake.globally_suppressed() == {"ann@example.com"}
    assert fake.in_group(101) == {"bob@example.com"}

    second = adapter.apply(batch[:2])

    assert [r.outcome for r in second] == [APPLIED, ALREADY]  # the global list cannot tell without confirm_global
    assert fake.globally_suppressed() == {"ann@example.com"} and fake.in_group(101) == {"bob@example.com"}


def test_confirm_global_reports_already_suppressed_addresses_as_already():
    adapter, fake, _ = make(confirm_global=True)
    fake.recipient_unsubscribes("ann@example.com")

    results = adapter.apply([OptOut("ann@example.com"), OptOut("zed@example.com")])

    assert [r.outcome for r in results] == [ALREADY, APPLIED]
    posted = [c.body for c in fake.calls("/v3/asm/suppressions/global", "POST")]
    assert posted == [{"recipient_emails": ["zed@example.com"]}]


def test_a_group_that_does_not_exist_is_refused_so_nothing_lands_on_the_global_list():
    adapter, fake, _ = make(topics={"newsletter": "999"})

    results = adapter.apply([OptOut("bob@example.com", scope="newsletter")])

    assert results[0].outcome == PERMANENT and "no unsubscribe group 999" in results[0].message
    assert fake.globally_suppressed() == set()
    assert not fake.calls("/v3/asm/groups/999")


def test_one_invalid_address_fails_alone():
    adapter, fake, _ = make()
    fake.invalid_addresses.add("bad@example.com")
    batch = [OptOut("ann@example.com"), OptOut("bad@example.com"), OptOut("cat@example.com")]

    results = adapter.apply(batch)

    assert [r.outcome for r in results] == [APPLIED, PERMANENT, APPLIED]
    assert "email address is invalid" in results[1].message
    assert fake.globally_suppressed() == {"ann@example.com", "cat@example.com"}


def test_a_batch_over_sendgrids_limit_is_halved_until_it_fits():
    clock = FakeClock(NOW)
    fake = FakeSendGrid(KEY, batch_limit=3, clock=clock)
    adapter, fake, _ = make(fake, clock, batch_size=10)
    batch = [OptOut(f"user{i}@example.com") for i in range(10)]

    results = adapter.apply(batch)

    assert all(r.outcome == APPLIED for r in results)
    assert len(fake.globally_suppressed()) == 10
    sizes = [len(c.body["recipient_emails"]) for c in fake.calls("/v3/asm/suppressions/global", "POST")]
    assert sizes == [10, 5, 2, 2, 2, 2, 2]  # halved on each 400 naming the limit, then kept
    assert fake.statuses.count(400) == 2


def test_remove_deletes_global_and_group_suppressions():
    adapter, fake, _ = make()
    adapter.apply([OptOut("ann@example.com"), OptOut("bob@example.com", scope="newsletter")])

    results = adapter.remove([OptOut("ann@example.com"), OptOut("bob@example.com", scope="newsletter")])

    assert [r.outcome for r in results] == [APPLIED, APPLIED]
    assert fake.globally_suppressed() == set() and fake.in_group(101) == set()
    assert {c.method for c in fake.calls("/v3/asm/")} == {"GET", "POST", "DELETE"}


# -- errors and the shared policy -------------------------------------------------------------------------


def test_429_waits_until_sendgrids_reset_time_then_goes_on():
    adapter, fake, clock = make()
    fake.recipient_unsubscribes("ann@example.com", at=NOW - 10)
    fake.fail(429, times=2, path="/v3/suppression/unsubscribes")

    optouts, _, _ = read(adapter.read_changes(None))

    assert [o.address for o in optouts] == ["ann@example.com"]
    assert fake.statuses.count(429) == 2
    assert clock.sleeps and all(s >= 1 for s in clock.sleeps)  # X-RateLimit-Reset is one second ahead


def test_5xx_is_retried_by_the_shared_policy_and_the_write_lands_once():
    adapter, fake, _ = make()
    fake.fail(503, times=2, path="/v3/asm/suppressions/global", method="POST")

    results = adapter.apply([OptOut("ann@example.com")])

    assert results[0].outcome == APPLIED and fake.globally_suppressed() == {"ann@example.com"}
    assert fake.statuses.count(503) == 2


def test_a_vendor_that_stays_down_parks_the_batch_as_transient():
    adapter, fake, _ = make(max_attempts=3, retry_budget=5)
    fake.fail(500, times=100)

    with pytest.raises(TransientError):
        adapter.apply([OptOut("ann@example.com")])
    assert fake.globally_suppressed() == set()


def test_a_wrong_key_gives_sendgrids_401_and_the_key_never_shows():
    adapter, fake, _ = make(key="SG.wrong-key-value.very-secret")

    with pytest.raises(PermanentError) as caught:
        list(adapter.read_changes(None))

    assert "authorization grant is invalid" in str(caught.value) and "401" in str(caught.value)
    for text in (str(caught.value), repr(adapter), repr(adapter.settings), repr(adapter.http)):
        assert "very-secret" not in text and KEY not in text


def test_check_lists_groups_flags_unmapped_ones_and_refuses_a_missing_one():
    adapter, fake, _ = make()
    lines = adapter.check()
    assert "topic newsletter -> group 101 (Newsletter)" in lines
    assert any(line.startswith("UNMAPPED: group 102") for line in lines)
    assert all(c.method == "GET" for c in fake.requests)

    missing, _, _ = make(topics={"newsletter": "999"})
    with pytest.raises(ConfigError, match="group 999"):
        missing.check()


def test_settings_refuse_a_non_numeric_group_id():
    with pytest.raises(ValueError, match="group ids are integers"):
        make(topics={"newsletter": "news"})


# -- through the engine, with a real store ----------------------------------------------------------------


@pytest.fixture
def world(tmp_path):
    clock = FakeClock(NOW)
    fake = FakeSendGrid(KEY, clock=clock)
    raw = {"store": {"path": str(tmp_path / "store.db")}, "topics": {"newsletter": "Newsletter"},
           "adapters": [{"name": "mem", "type": "memory", "interval": 1},
                        {"name": "sendgrid", "type": "sendgrid", "api_key": KEY,
                         "base_url": "https://api.sendgrid.test", "topics": {"newsletter": "101"}}]}
    settings = validate_settings(raw, tmp_path / "settings.toml")
    store = Store(settings.store.path)
    mem = registry.build(settings.adapter("mem"), settings.topics)
    sendgrid = SendGridAdapter(settings.adapter("sendgrid"), settings.topics,
                               transport=httpx.MockTransport(fake.handle), clock=clock)
    yield Engine(settings, store, {"mem": mem, "sendgrid": sendgrid}), store, fake, mem, clock
    store.close()


def test_engine_spreads_both_ways_and_the_overlap_has_no_duplicate_effect(world):
    engine, store, fake, mem, clock = world
    fake.recipient_unsubscribes("ann@example.com", at=NOW - 30)
    fake.spam_report("gina@example.com", at=NOW - 20)
    mem.opt_out(OptOut("zed@example.com", scope="newsletter", reason="imported", origin="user"))

    assert all(r.error is None for r in engine.sync_once())

    assert set(mem.held) == {("ann@example.com", "*"), ("gina@example.com", "*"), ("zed@example.com", "newsletter")}
    assert fake.in_group(101) == {"zed@example.com"}
    assert store.checkpoint("sendgrid").read_cursor == str(NOW)
    gina = store.suppression("gina@example.com")
    assert (gina["reason"], gina["origin"], gina["source"]) == ("spam_complaint", "system", "sendgrid")

    clock.advance(120)
    fake.bounce("dora@example.com", status="5.1.2", at=NOW + 100)
    assert all(r.error is None for r in engine.sync_once())

    assert ("dora@example.com", "*") in mem.held
    # The second window re-read ann and gina (overlap) without a second effect anywhere.
    for address in ("ann@example.com", "gina@example.com"):
        assert [e["kind"] for e in store.events_for(address)] == ["suppressed", "applied"]
    assert mem.effects[("ann@example.com", "*")] == 1
    assert store.checkpoint("sendgrid").read_cursor == str(NOW + 120)


def test_engine_records_a_refused_address_as_a_failure_and_moves_on(world):
    engine, store, fake, mem, clock = world
    fake.invalid_addresses.add("bad@example.com")
    mem.opt_out(OptOut("bad@example.com", reason="imported", origin="user"))
    mem.opt_out(OptOut("ok@example.com", reason="imported", origin="user"))

    engine.sync_once()

    assert fake.globally_suppressed() == {"ok@example.com"}
    failures = list(store.failures("sendgrid"))
    assert [f["address"] for f in failures] == ["bad@example.com"]
    assert "invalid" in failures[0]["message"]
    pending, _ = store.pending_summary("sendgrid", store.checkpoint("sendgrid").applied_seq)
    assert pending == 0


def test_engine_parks_everything_while_sendgrid_answers_429_and_delivers_later(world):
    engine, store, fake, mem, clock = world
    mem.opt_out(OptOut("ann@example.com", reason="imported", origin="user"))
    fake.fail(429, times=1000, path="/v3/asm/suppressions/global")

    reports = engine.sync_once()

    sendgrid = next(r for r in reports if r.adapter == "sendgrid")
    assert sendgrid.parked == 1 and fake.globally_suppressed() == set()

    fake.faults.clear()
    clock.advance(5)
    engine.sync_once()
    assert fake.globally_suppressed() == {"ann@example.com"}


@pytest.mark.parametrize("held, requests_per_list", [(0, 1), (3, 1), (5, 2)])
def test_each_list_costs_one_request_per_cycle_unless_a_page_is_full(held, requests_per_list):
    """A page shorter than `limit` ends a list: fewer than `limit` items cost one request, exactly `limit` two."""
    adapter, fake, clock = make(page_size=5)
    for i in range(held):
        fake.recipient_unsubscribes(f"u{i}@example.com", at=NOW - 100 - i)
        fake.bounce(f"b{i}@example.com", at=NOW - 100 - i)
        fake.spam_report(f"s{i}@example.com", at=NOW - 100 - i)
    cursor = None
    for _ in range(2):  # two cycles, the second from the first one's cursor
        pages = list(adapter.read_changes(cursor))
        cursor = pages[-1].cursor
        clock.advance(60)
    for path in ("/v3/suppression/unsubscribes", "/v3/suppression/bounces", "/v3/suppression/spam_reports"):
        assert len(fake.calls(path)) == 2 * requests_per_list, path
    assert len(fake.calls("/v3/asm/suppressions")) == 2  # group suppressions: one unpaged call per cycle
