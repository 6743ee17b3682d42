"""The shared HTTP client policy: retries for transient failures only, Retry-After, pacing, budget, errors.

Every test drives `adapters.http.HttpClient` through httpx.MockTransport with a
pretend clock, so waits are asserted exactly and nothing really sleeps.
"""

from __future__ import annotations

import subprocess
import sys
from email.utils import format_datetime
from datetime import datetime, timezone

import httpx
import pytest
from pydantic import BaseModel, ValidationError

import connector
from adapters.http import (
    USER_AGENT,
    HttpAdapterSettings,
    HttpClient,
    RetryBudgetSpent,
    TokenBucket,
    VendorPermanentError,
    VendorTransientError,
    check_base_url,
    parse_retry_after,
    project_version,
)
from state.errors import PermanentError, TransientError

from .fakes.clock import FakeClock

SECRET = "pat-na1-0123456789-very-secret"


def make_client(handler, clock=None, **settings) -> tuple[HttpClient, FakeClock, list[httpx.Request]]:
    clock = clock or FakeClock()
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    config = HttpAdapterSettings(**{"name": "vendor", "type": "test", "base_url": "https://vendor.test",
                                    "backoff_initial": 1, "backoff_max": 8, **settings})
    client = HttpClient("vendor", config, headers={"Authorization": f"Bearer {SECRET}"},
                        transport=httpx.MockTransport(record), clock=clock, secrets=[SECRET])
    return client, clock, seen


def answers(*responses):
    """A handler giving these responses (or raising these exceptions) in turn, then the last one forever."""
    queue = list(responses)

    def handler(request):
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        return item
    return handler


def error(status: int, message: str = "boom", category: str = "ERR", headers: dict | None = None, **extra):
    return httpx.Response(status, json={"status": "error", "message": message, "category": category,
                                        "correlationId": "corr-1", **extra}, headers=headers or {})


OK = httpx.Response(200, json={"ok": True})


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["https://api.hubapi.com", "https://api.hubapi.com/", "http://127.0.0.1:8080",
                                 "http://localhost:9", "http://[::1]:8080"])
def test_base_url_https_or_loopback_is_accepted(url):
    assert check_base_url(url) == url.rstrip("/")


@pytest.mark.parametrize("url", ["http://api.hubapi.com", "ftp://api.hubapi.com", "https://", "api.hubapi.com",
                                 "http://10.0.0.5:8080"])
def test_base_url_plain_http_elsewhere_is_rejected_with_a_clear_message(url):
    with pytest.raises(ValidationError) as caught:
        HttpAdapterSettings(name="v", type="t", base_url=url)
    assert "base_url" in str(caught.value)


def test_user_agent_names_the_project_and_the_connector_version():
    client, _, seen = make_client(answers(OK))
    client.request("GET", "/x", endpoint="GET /x")
    assert seen[0].headers["user-agent"] == f"optout-sync/{connector.__version__}" == USER_AGENT
    assert project_version() == connector.__version__


def test_adapters_do_not_import_the_connector_package():
    code = ("import sys, adapters.http, adapters.hubspot, adapters.registry; "
            "sys.exit(1 if [m for m in sys.modules if m == 'connector' or m.startswith('connector.')] else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_timeouts_come_from_settings():
    client, _, _ = make_client(answers(OK), connect_timeout="2s", read_timeout="45s")
    timeout = client._client.timeout
    assert (timeout.connect, timeout.read) == (2.0, 45.0)


# -- what is retried -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 409, 423, 425, 429])
def test_transient_statuses_are_retried_until_success(status):
    client, clock, seen = make_client(answers(error(status), error(status), OK))
    response = client.request("POST", "/x", endpoint="POST /x", json={"a": 1})
    assert response.status_code == 200
    assert len(seen) == 3
    # Jittered exponential back-off: two waits, each within [0, backoff_max].
    assert len(clock.sleeps) == 2 and all(0 <= s <= 8 for s in clock.sleeps)


@pytest.mark.parametrize("failure", [httpx.ConnectError("connection refused"), httpx.ReadTimeout("slow"),
                                     httpx.RemoteProtocolError("peer closed")])
def test_network_failures_are_retried(failure):
    client, _, seen = make_client(answers(failure, OK))
    assert client.request("GET", "/x", endpoint="GET /x").status_code == 200
    assert len(seen) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_permanent_4xx_is_never_retried(status):
    client, clock, seen = make_client(answers(error(status, "no such thing", "VALIDATION_ERROR")))
    with pytest.raises(VendorPermanentError) as caught:
        client.request("POST", "/x", endpoint="POST /things/{id}")
    assert len(seen) == 1 and clock.sleeps == []
    text = str(caught.value)
    assert f"answered {status}" in text and "VALIDATION_ERROR" in text and "no such thing" in text
    assert "corr-1" in text and "POST /things/{id}" in text and text.startswith("vendor:")
    assert isinstance(caught.value, PermanentError)


def test_attempts_are_bounded_then_a_transient_error_carries_the_vendor_message():
    client, _, seen = make_client(answers(error(503, "down for maintenance", "INTERNAL_ERROR")), max_attempts=3)
    with pytest.raises(VendorTransientError) as caught:
        client.request("GET", "/x", endpoint="GET /x")
    assert len(seen) == 3
    assert "down for maintenance" in str(caught.value) and caught.value.status == 503
    assert not isinstance(caught.value, RetryBudgetSpent)


# -- Retry-After and rate-limit headers ----------------------------------------------------------------


def test_retry_after_in_seconds_is_waited_exactly():
    client, clock, _ = make_client(answers(error(429, headers={"Retry-After": "7"}), OK))
    client.request("GET", "/x", endpoint="GET /x")
    assert clock.sleeps == [7.0]


def test_retry_after_as_an_http_date_is_waited_until_that_moment():
    clock = FakeClock(start=1_700_000_000.0)
    moment = datetime.fromtimestamp(clock.now + 12, timezone.utc)
    client, _, _ = make_client(answers(error(503, headers={"Retry-After": format_datetime(moment, usegmt=True)}),
                                       OK), clock=clock)
    client.request("GET", "/x", endpoint="GET /x")
    assert clock.sleeps == [pytest.approx(12.0)]


def test_retry_after_parsing_both_forms_and_garbage():
    assert parse_retry_after("3", 0) == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after("in a while", 0) is None
    assert parse_retry_after(None, 0) is None
    assert parse_retry_after("-5", 0) == 0.0


def test_rate_limit_headers_saying_none_left_hold_the_next_call():
    exhausted = httpx.Response(200, json={}, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "4"})
    client, clock, seen = make_client(answers(exhausted, OK))
    client.request("GET", "/a", endpoint="GET /a")
    assert clock.sleeps == []
    client.request("GET", "/b", endpoint="GET /b")
    assert clock.sleeps == [pytest.approx(4.0)] and len(seen) == 2


# -- pacing and the retry budget --------------------------------------------------------------------------


def test_token_bucket_allows_capacity_per_rolling_period():
    clock = FakeClock()
    bucket = TokenBucket(3, 10.0, clock)
    for _ in range(3):
        bucket.acquire()
    assert clock.sleeps == []
    bucket.acquire()  # the 4th waits until the first token returns
    assert clock.sleeps == [pytest.approx(10.0)]


def test_client_paces_calls_with_the_bucket_from_settings():
    client, clock, seen = make_client(answers(OK), rate_limit_requests=2, rate_limit_period="1s")
    for _ in range(5):
        client.request("GET", "/x", endpoint="GET /x")
    assert len(seen) == 5
    # 5 calls at 2 per second need 2 seconds of waiting in all.
    assert sum(clock.sleeps) == pytest.approx(2.0)


def test_a_wait_longer_than_the_budget_parks_at_once_without_sleeping():
    client, clock, seen = make_client(answers(error(429, headers={"Retry-After": "120"}), OK), retry_budget="60s")
    with pytest.raises(RetryBudgetSpent) as caught:
        client.request("GET", "/x", endpoint="GET /x")
    assert len(seen) == 1 and clock.sleeps == []
    assert caught.value.retry_after == 120.0
    assert isinstance(caught.value, TransientError)
    assert "retry budget" in str(caught.value) and "parked for the next cycle" in str(caught.value)


def test_budget_is_shared_by_the_calls_of_one_cycle_and_reset_by_the_next():
    client, clock, _ = make_client(answers(error(503, headers={"Retry-After": "4"}), OK), retry_budget="6s")
    client.request("GET", "/a", endpoint="GET /a")            # waits 4 of 6
    client._client._transport.handler = answers(error(503, headers={"Retry-After": "4"}), OK)
    with pytest.raises(RetryBudgetSpent):
        client.request("GET", "/b", endpoint="GET /b")        # another 4 does not fit
    client.new_cycle()
    client._client._transport.handler = answers(error(503, headers={"Retry-After": "4"}), OK)
    assert client.request("GET", "/c", endpoint="GET /c").status_code == 200
    assert clock.sleeps == [4.0, 4.0]


# -- answers of the wrong shape and secrets ------------------------------------------------------------------


class Thing(BaseModel):
    id: int
    name: str


def test_a_body_that_is_not_json_is_a_clear_permanent_error():
    client, _, _ = make_client(answers(httpx.Response(200, text="<html>gateway</html>",
                                                      headers={"content-type": "text/html"})))
    response = client.request("GET", "/thing", endpoint="GET /thing")
    with pytest.raises(VendorPermanentError) as caught:
        client.parse(response, Thing, "GET /thing")
    assert str(caught.value).startswith("vendor: GET /thing")
    assert "not JSON" in str(caught.value) and "text/html" in str(caught.value)


def test_a_body_missing_fields_names_them():
    client, _, _ = make_client(answers(httpx.Response(200, json={"id": "x"})))
    response = client.request("GET", "/thing", endpoint="GET /thing")
    with pytest.raises(VendorPermanentError) as caught:
        client.parse(response, Thing, "GET /thing")
    text = str(caught.value)
    assert "unexpected shape" in text and "id" in text and "name" in text and "Traceback" not in text


def test_the_token_never_appears_in_errors_or_repr():
    echo = error(400, f"bad header Authorization: Bearer {SECRET}")
    client, _, seen = make_client(answers(echo))
    with pytest.raises(VendorPermanentError) as caught:
        client.request("GET", "/x", endpoint="GET /x")
    assert seen[0].headers["authorization"] == f"Bearer {SECRET}"  # it was sent...
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)  # ...and is never shown
    assert SECRET not in repr(client)
    failing, _, _ = make_client(answers(httpx.ConnectError(f"cannot reach {SECRET}")), max_attempts=1)
    with pytest.raises(VendorTransientError) as caught:
        failing.request("GET", "/x", endpoint="GET /x")
    assert SECRET not in str(caught.value)


def test_retries_and_429s_reach_the_registered_observers():
    """The daemon's metrics hear of every retry and every 429 through adapters.http.OBSERVERS."""
    from adapters import http as http_module

    heard: list[tuple[str, str]] = []
    observer = lambda kind, adapter: heard.append((kind, adapter))  # noqa: E731
    replies = iter([httpx.Response(429, headers={"Retry-After": "1"}, json={"message": "slow down"}),
                    httpx.Response(503, json={"message": "busy"}),
                    httpx.Response(200, json={"ok": True})])
    client, clock, seen = make_client(lambda request: next(replies))
    http_module.OBSERVERS.append(observer)
    try:
        client.request("GET", "/x", endpoint="GET /x")
    finally:
        http_module.OBSERVERS.remove(observer)
    assert len(seen) == 3
    assert heard == [("rate_limited", "vendor"), ("retry", "vendor"), ("retry", "vendor")]
