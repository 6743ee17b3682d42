"""Mailchimp member look-ups run on up to 10 connections (its documented limit), with the same outcomes."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from adapters.mailchimp import MailchimpAdapter, MailchimpSettings
from state.models import ALREADY, APPLIED, PERMANENT, OptOut

from .fakes.mailchimp import FakeMailchimp

KEY = "0123456789abcdef0123456789abcdef-us21"
LIST = "a1b2c3d4e5"


class SlowTransport(httpx.BaseTransport):
    """The fake behind a real-time latency per call, counting how many calls are in flight at once."""

    def __init__(self, fake: FakeMailchimp, latency: float):
        self.fake, self.latency = fake, latency
        self.in_flight = self.most = 0
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            time.sleep(self.latency)
            request.read()
            return self.fake.handle(request)
        finally:
            with self._lock:
                self.in_flight -= 1


def adapter(fake: FakeMailchimp, transport: httpx.BaseTransport, **settings) -> MailchimpAdapter:
    config = MailchimpSettings(**{"name": "mailchimp", "api_key": KEY, "list_id": LIST,
                                  "base_url": "https://us21.api.mailchimp.test/3.0", **settings})
    return MailchimpAdapter(config, {}, transport=transport)


@pytest.mark.parametrize("connections", [1, 10])
def test_lookups_use_at_most_the_allowed_connections_and_decide_alike(connections):
    fake = FakeMailchimp(KEY)
    batch = []
    for i in range(60):
        address = f"m{i}@x.io"
        if i % 3 == 0:
            fake.add_member(address, "subscribed")
        elif i % 3 == 1:
            fake.add_member(address, "unsubscribed")
        batch.append(OptOut(address))               # every third is no member at all
    transport = SlowTransport(fake, 0.02)
    started = time.perf_counter()
    results = adapter(fake, transport, concurrent_requests=connections).apply(batch)
    wall = time.perf_counter() - started
    assert [r.outcome for r in results] == [[APPLIED, ALREADY, PERMANENT][i % 3] for i in range(60)]
    assert [fake.status_of(f"m{i}@x.io") for i in range(0, 60, 3)] == ["unsubscribed"] * 20
    assert transport.most == connections
    if connections == 10:
        assert wall < 60 * 0.02 / 3                  # one at a time would take 1.2 s


def test_an_error_of_one_lookup_stays_with_its_own_item():
    fake = FakeMailchimp(KEY)
    for i in range(12):
        fake.add_member(f"m{i}@x.io", "subscribed")
    fake.fail(400, path=f"/members/", times=1)
    results = adapter(fake, SlowTransport(fake, 0.0)).apply([OptOut(f"m{i}@x.io") for i in range(12)])
    assert sorted(r.outcome for r in results) == [APPLIED] * 11 + [PERMANENT]
