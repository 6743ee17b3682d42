"""Each injected fault against each HTTP adapter: what the shared client policy and the adapter make of it.

Transient faults are retried with jittered back-off, Retry-After is honoured, the vendor's limit is
kept client-side, retry time is capped per cycle, 4xx is final, odd answers are clear errors, and
paging faults neither loop nor lose. All in-process on a pretend clock.
"""

from __future__ import annotations

import httpx
import pytest

from adapters import registry
from adapters.http import VendorPermanentError, parse_retry_after
from connector.engine import Engine
from connector.settings import validate_settings
from state.errors import OptOutSyncError, PermanentError, TransientError
from state.models import OptOut, Page
from state.store import Store
from tests.fakes.serve import serve

from .helpers import FAST, new_optouts, one, read_set, seed_vendor, seeded, set_handler
from .injector import FaultInjector
from .vendors import KITS, TOPICS

ALL = sorted(KITS)
PAGED = sorted(name for name, kit in KITS.items() if kit.paged)
LIMITED = sorted(name for name, kit in KITS.items() if kit.limit_fake is not None)
HEADED = sorted(name for name, kit in KITS.items() if kit.rate_headers)
TRANSIENT_KINDS = ("500", "502", "503", "slow", "reset", "malformed_json", "truncated_json")


def baseline(name: str) -> tuple[set, int]:
    """What a fault-free read of a seeded vendor gives, and how many requests it takes."""
    kit = KITS[name]
    fake, injector, adapter, clock = seeded(kit)
    return read_set(adapter), injector.seen


# -- transient faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TRANSIENT_KINDS)
@pytest.mark.parametrize("name", ALL)
def test_a_transient_fault_is_retried_with_jittered_backoff_and_loses_nothing(name, kind):
    expected, requests = baseline(name)
    kit = KITS[name]
    fake, injector, adapter, clock = seeded(kit)
    injector.force(kind)
    assert read_set(adapter) == expected
    assert injector.seen == requests + 1 and injector.injected[kind] == 1
    # One back-off wait, drawn from [0, backoff_initial * 2^0] by tenacity's wait_random_exponential.
    assert len(clock.sleeps) == 1 and 0 <= clock.sleeps[0] <= FAST["backoff_initial"]


@pytest.mark.parametrize("name", ALL)
def test_backoff_is_exponential_and_jittered(name):
    kit = KITS[name]
    waits = []
    for attempt_seed in range(2):
        fake, injector, adapter, clock = seeded(kit, 3, max_attempts=5, backoff_initial=2, backoff_max=100)
        injector.force("503", "503", "503", "503")
        read_set(adapter)
        assert len(clock.sleeps) == 4
        assert all(0 <= wait <= 2 * 2 ** n for n, wait in enumerate(clock.sleeps)), clock.sleeps
        waits.append(tuple(clock.sleeps))
    assert waits[0] != waits[1], "two runs waited exactly alike: no jitter"


@pytest.mark.parametrize("kind", ["429_seconds", "429_date"])
@pytest.mark.parametrize("name", ALL)
def test_retry_after_is_honoured_in_both_forms(name, kind):
    kit = KITS[name]
    fake, injector, adapter, clock = one(kit)
    expected = seed_vendor(kit, fake, clock, count=5)
    started = clock.now
    injector.force(kind)
    got = read_set(adapter)
    assert {(a, s) for a, s, _, _ in got} == expected
    _, status, retry_after = injector.answers[0]
    asked = parse_retry_after(retry_after, started)
    assert status == 429 and asked is not None and asked >= 1
    # The first wait is what the vendor asked for, never shorter (rate-limit headers may add a hold).
    assert clock.sleeps and clock.sleeps[0] >= asked - 1e-6
    assert sum(clock.sleeps) >= asked


@pytest.mark.parametrize("name", LIMITED)
def test_the_vendors_rate_limit_is_kept_client_side(name):
    kit = KITS[name]
    fake, _, _, clock = one(kit, pages=False)
    seed_vendor(kit, fake, clock, count=3)
    period = kit.limit_fake(fake, 5)
    adapter = one(kit, clock=clock, fake=fake, pages=False, rate_limit_requests=5, rate_limit_period=period)[2]
    while len(fake.statuses) < 20:  # far more calls than 5 per period, as fast as the client goes
        read_set(adapter)
    assert 429 not in fake.statuses
    assert sum(clock.sleeps) > 0  # the client waited for its own tokens


@pytest.mark.parametrize("name", HEADED)
def test_the_vendors_rate_limit_headers_hold_a_client_set_too_fast(name):
    kit = KITS[name]
    fake, injector, adapter, clock = seeded(kit, 3, pages=False)  # 100,000 calls allowed client-side
    kit.limit_fake(fake, 5)
    while len(fake.statuses) < 20:
        read_set(adapter)
    assert 429 not in fake.statuses


@pytest.mark.parametrize("name", ALL)
def test_retry_time_is_capped_per_cycle_and_the_rest_is_parked(name, tmp_path):
    """Every write needs two retries of 10 s; a 30 s budget lets one cycle wait 30 s at most, then parks."""
    kit = KITS[name]
    settings = validate_settings({
        "store": {"path": str(tmp_path / "store.db")}, "topics": TOPICS, "adapters": [
            {**kit.settings("vendor", "https://vendor.test", kit.token), **FAST, "retry_budget": 30,
             "max_attempts": 5, **({"batch_size": 5} if "batch_size" in registry.settings_model(kit.type).model_fields
                                   else {})}]}, tmp_path / "settings.toml")
    fake, injector, _, clock = one(kit)
    kit.prepare(fake, [f"a{i}@example.com" for i in range(25)])
    tries: dict[bytes, int] = {}

    def busy_twice(request: httpx.Request) -> httpx.Response:
        key = request.method.encode() + str(request.url).encode() + request.content
        tries[key] = tries.get(key, 0) + 1
        if tries[key] <= 2:
            return httpx.Response(503, json={"message": "busy"}, headers={"Retry-After": "10"})
        return fake.handle(request)

    adapter = kit.build(settings.adapter("vendor"), httpx.MockTransport(busy_twice), clock)
    with Store(settings.store.path) as store:
        store.ingest_page("import", Page([OptOut(f"a{i}@example.com") for i in range(25)]))
        store.promote("import")
        engine = Engine(settings, store, {"vendor": adapter})
        first = engine.cycle("vendor", push_only=True)
        waited = sum(clock.sleeps)
        assert waited <= 30, f"one cycle waited {waited}s for retries with a 30s budget"
        assert first.parked > 0 and first.pushed < 25
        for _ in range(60):
            report = engine.cycle("vendor", push_only=True)
            if report.error is None and not report.parked:
                break
        assert store.checkpoint("vendor").applied_seq == 25
    assert all(kit.covers(fake, f"a{i}@example.com", "*") for i in range(25))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 410, 422])
@pytest.mark.parametrize("name", ALL)
def test_a_permanent_4xx_is_never_retried(name, status):
    kit = KITS[name]
    fake, injector, adapter, clock = seeded(kit, 3)
    answered = []

    def refuse_first(request: httpx.Request) -> httpx.Response:
        answered.append(request.url.path)
        if len(answered) == 1:
            return httpx.Response(status, json={"message": "refused", "errors": [{"message": "refused"}]})
        return fake.handle(request)

    set_handler(adapter, refuse_first)
    with pytest.raises(PermanentError) as caught:
        read_set(adapter)
    assert len(answered) == 1 and clock.sleeps == []
    assert str(caught.value).startswith(f"{name}: ") and f"answered {status}" in str(caught.value)


@pytest.mark.parametrize("status", [408, 409, 425, 429])
@pytest.mark.parametrize("name", ALL)
def test_408_409_425_and_429_are_retried(name, status):
    expected, requests = baseline(name)
    kit = KITS[name]
    fake, injector, adapter, clock = seeded(kit)
    answered = []

    def once(request: httpx.Request) -> httpx.Response:
        answered.append(1)
        if len(answered) == 1:
            return httpx.Response(status, json={"message": "try again"})
        return fake.handle(request)

    set_handler(adapter, once)
    assert read_set(adapter) == expected and len(answered) == requests + 1


# -- answers of the wrong shape ------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", range(8))
@pytest.mark.parametrize("name", ALL)
def test_a_wrong_shape_is_a_clear_error_naming_adapter_and_endpoint(name, variant):
    """A reshaped answer is an error naming adapter and endpoint, unless only a field the adapter ignores changed."""
    expected, _ = baseline(name)
    kit = KITS[name]
    fake, injector, adapter, clock = seeded(kit)
    injector.force("wrong_shape")
    injector.rng.seed(variant)  # a different reshaping per case
    try:
        got = read_set(adapter)
    except VendorPermanentError as exc:
        text = str(exc)
        assert text.startswith(f"{name}: GET /") and "Traceback" not in text, text
        assert "unexpected shape" in text or "not JSON" in text or "no " in text or "does not" in text, text
    else:
        assert got == expected, f"a reshaped answer was taken: lost {len(expected - got)}, " \
                                f"invented {len(got - expected)}"


@pytest.mark.parametrize("kind", ["wrong_shape", "malformed_json", "truncated_json"])
@pytest.mark.parametrize("name", ALL)
def test_a_broken_answer_to_a_write_is_an_error_or_a_result_never_a_crash(name, kind):
    kit = KITS[name]
    for variant in range(6):
        fake, injector, adapter, clock = seeded(kit, 1, max_attempts=1)
        injector.rng.seed(variant)
        injector.set(rate=1.0, kinds=(kind,))
        batch = new_optouts()
        try:
            results = adapter.apply(batch)
        except OptOutSyncError as exc:  # the project's errors only, naming the adapter
            assert isinstance(exc, (PermanentError, TransientError))
            assert str(exc).startswith(f"{name}: "), str(exc)
        else:
            assert [r.optout for r in results] == batch


# -- paging faults --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAGED)
def test_a_cursor_that_never_moves_is_stopped_within_a_few_pages(name):
    kit = KITS[name]
    fake, injector, adapter, clock = seeded(kit, 60)
    if kit.profile.first_page(httpx.Request("GET", "https://x.test/")) is None and name == "ses":
        # Signed requests cannot be rewritten: every later page names its own NextToken again instead.
        injector.set(rate=1.0, kinds=("repeat_cursor",))
        injector.refuse_non_pages = False
    else:
        injector.ignore_cursor = True
    calls = []
    inner = injector.inner

    def bounded(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) > 200:
            raise RuntimeError("the adapter keeps asking for the same page")
        return inner(request)

    injector.inner = bounded
    with pytest.raises(VendorPermanentError) as caught:
        read_set(adapter)
    assert str(caught.value).startswith(f"{name}: GET /")
    assert len(calls) <= 8, f"{len(calls)} requests before the repeating cursor was noticed"


@pytest.mark.parametrize("skip", [0, 1])
@pytest.mark.parametrize("name", PAGED)
def test_a_cursor_that_repeats_once_is_an_error_or_loses_nothing(name, skip):
    expected, _ = baseline(name)
    kit = KITS[name]
    fake, injector, adapter, clock = seeded(kit)
    injector.set(rate=1.0, kinds=("repeat_cursor",))
    injector.refuse_non_pages, injector.pages_to_skip, injector.limit = False, skip, 1
    try:
        got = read_set(adapter)
    except VendorPermanentError as exc:
        assert str(exc).startswith(f"{name}: GET /")
    else:
        assert got == expected, f"lost {len(expected - got)}, invented {len(got - expected)}"
    assert injector.injected["repeat_cursor"] == 1


# SendGrid's reference makes `limit` the page size, so its adapter takes a shorter page as the
# list's end (one request per list per cycle, tests/test_sendgrid.py); the others must survive it.
@pytest.mark.parametrize("name", [n for n in PAGED if n != "sendgrid"])
def test_pages_with_fewer_items_than_promised_lose_and_invent_nothing(name):
    expected, _ = baseline(name)
    kit = KITS[name]
    fake, injector, adapter, clock = seeded(kit)
    injector.set(rate=1.0, kinds=("short_page",))
    injector.refuse_non_pages = False
    got = read_set(adapter)
    assert got == expected, f"lost {len(expected - got)}, invented {len(got - expected)}"
    assert injector.injected["short_page"] >= 2


# -- over a real socket -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["slow", "reset"])
@pytest.mark.parametrize("name", ALL)
def test_slow_answers_and_resets_on_a_real_socket_are_retried(name, kind):
    kit = KITS[name]
    expected, requests = baseline(name)
    fake, _, _, clock = one(kit)
    seed_vendor(kit, fake, clock)
    injector = FaultInjector(fake.handle, kit.profile, served=True, slow_seconds=1.0, clock=clock.time)
    with serve(injector.handle) as url:
        # The timeout and the socket are real; back-off waits go to the pretend clock.
        adapter = one(kit, clock=clock, fake=fake, base_url=url if name != "mailchimp" else url + "/3.0",
                      read_timeout=0.3, connect_timeout=1, network=True)[2]
        injector.force(kind)
        try:
            assert read_set(adapter) == expected
        finally:
            adapter.close()
    assert injector.seen == requests + 1 and injector.injected[kind] == 1
