"""The fake HubSpot keeps to the facts of ../shared/specs/hubspot.md section 5, so tests built on it mean something.

Also checks that tests/fakes/serve.py serves any handler over a real socket.
"""

from __future__ import annotations

import httpx
import pytest

from .fakes.clock import FakeClock
from .fakes.hubspot import FakeHubSpot
from .fakes.serve import serve

TOKEN = "pat-test"
V4 = "/communication-preferences/v4"


@pytest.fixture
def hub():
    clock = FakeClock()
    fake = FakeHubSpot(TOKEN, clock=clock)
    client = httpx.Client(base_url="https://api.hubapi.com", transport=httpx.MockTransport(fake.handle),
                          headers={"Authorization": f"Bearer {TOKEN}"})
    yield fake, client, clock
    client.close()


def assert_error_shape(response: httpx.Response, status: int, category: str) -> dict:
    body = response.json()
    assert response.status_code == status
    assert body["status"] == "error" and body["category"] == category
    assert body["message"] and len(body["correlationId"]) == 36
    return body


def test_every_non_2xx_answer_has_the_error_shape(hub):
    fake, client, _ = hub
    assert_error_shape(client.get(f"{V4}/definitions", headers={"Authorization": "Bearer nope"}), 401,
                       "INVALID_AUTHENTICATION")
    assert_error_shape(client.get(f"{V4}/statuses/a@example.com"), 400, "VALIDATION_ERROR")  # no channel
    assert_error_shape(client.get("/no/such/path"), 404, "OBJECT_NOT_FOUND")
    fake.scopes.discard("communication_preferences.statuses.batch.write")
    assert_error_shape(client.post(f"{V4}/statuses/batch/write", json={"inputs": []}), 403, "MISSING_SCOPES")
    fake.rate_limit = 1
    client.get(f"{V4}/definitions")
    body = assert_error_shape(client.get(f"{V4}/definitions"), 429, "RATE_LIMITS")
    assert body["policyName"] == "TEN_SECONDLY_ROLLING" and body["errorType"] == "RATE_LIMIT"


def test_search_secondly_limit_has_its_own_bucket_and_message(hub):
    fake, client, clock = hub
    fake.rate_limit, fake.search_rate_limit = 100, 2
    for _ in range(2):
        assert client.post("/crm/v3/objects/contacts/search", json={}).status_code == 200
    limited = client.post("/crm/v3/objects/contacts/search", json={})
    assert limited.json()["message"] == "You have reached your secondly limit."
    assert "X-HubSpot-RateLimit-Max" not in limited.headers  # search answers carry no rate-limit headers
    assert client.get(f"{V4}/definitions").headers["X-HubSpot-RateLimit-Remaining"] == "99"
    clock.advance(1.01)
    assert client.post("/crm/v3/objects/contacts/search", json={}).status_code == 200


def test_v4_unsubscribe_all_verbose_and_reads(hub):
    fake, client, _ = hub
    params = {"channel": "EMAIL"}
    assert client.get(f"{V4}/statuses/a@example.com/unsubscribe-all", params=params).json()["results"] == []
    quiet = client.post(f"{V4}/statuses/a@example.com/unsubscribe-all", params=params).json()
    assert quiet["results"] == [] and quiet["status"] == "COMPLETE"
    wide = client.get(f"{V4}/statuses/A@Example.com/unsubscribe-all", params=params).json()["results"]
    assert wide[0]["wideStatusType"] == "PORTAL_WIDE" and wide[0]["status"] == "UNSUBSCRIBED"
    again = client.post(f"{V4}/statuses/a@example.com/unsubscribe-all", params={**params, "verbose": "true"})
    assert {s["setStatusSuccessReason"] for s in again.json()["results"]} == {"NO_STATUS_CHANGE"}
    assert fake.contacts == {}  # preferences live per address; no contact was made


def test_v3_subscribe_refuses_an_opted_out_address(hub):
    fake, client, _ = hub
    fake.recipient_unsubscribes_all("a@example.com")
    refused = client.post("/communication-preferences/v3/subscribe",
                          json={"emailAddress": "a@example.com", "subscriptionId": "101"})
    assert_error_shape(refused, 400, "VALIDATION_ERROR")
    statuses = client.get("/communication-preferences/v3/status/email/a@example.com").json()
    assert {(s["status"], s["sourceOfStatus"]) for s in statuses["subscriptionStatuses"] if s["brandId"] == 0} == {
        ("NOT_SUBSCRIBED", "PORTAL_WIDE_STATUS")}
    assert fake.api_subscribes == [("v3/subscribe", {"emailAddress": "a@example.com", "subscriptionId": "101"})]


def test_batch_answers_207_for_bad_inputs_and_400_above_the_limit(hub):
    fake, client, _ = hub
    fake.invalid_addresses.add("bad@example.com")
    answer = client.post(f"{V4}/statuses/batch/unsubscribe-all", params={"channel": "EMAIL"},
                         json={"inputs": ["ok@example.com", "bad@example.com"]})
    assert answer.status_code == 207 and answer.json()["numErrors"] == 1
    assert answer.json()["errors"][0]["context"] == {"subscriberIdString": ["bad@example.com"]}
    too_many = client.post(f"{V4}/statuses/batch/read", params={"channel": "EMAIL"},
                           json={"inputs": [f"u{i}@example.com" for i in range(101)]})
    assert "limit" in assert_error_shape(too_many, 400, "VALIDATION_ERROR")["message"]


def test_search_pages_with_after_caps_at_10000_and_bumps_lastmodifieddate(hub):
    fake, client, clock = hub
    fake.search_cap = 4
    ids = [fake.add_contact(f"c{i}@example.com") for i in range(5)]
    body = {"filterGroups": [{"filters": [{"propertyName": "email", "operator": "IN",
                                           "values": [f"c{i}@example.com" for i in range(5)]}]}],
            "limit": 2, "properties": ["email"]}
    first = client.post("/crm/v3/objects/contacts/search", json=body).json()
    assert first["total"] == 5 and first["paging"]["next"]["after"] == "2"
    assert [r["id"] for r in first["results"]] == ids[:2]
    last = client.post("/crm/v3/objects/contacts/search", json={**body, "after": "2", "limit": 3}).json()
    assert "paging" not in last and len(last["results"]) == 3
    assert_error_shape(client.post("/crm/v3/objects/contacts/search", json={**body, "after": "4"}), 400,
                       "VALIDATION_ERROR")
    assert_error_shape(client.post("/crm/v3/objects/contacts/search", json={**body, "limit": 201}), 400,
                       "VALIDATION_ERROR")
    clock.advance(10)
    fake.recipient_unsubscribes_all("c0@example.com")
    opted = client.post("/crm/v3/objects/contacts/search", json={"filterGroups": [
        {"filters": [{"propertyName": "hs_email_optout", "operator": "EQ", "value": "true"}]}],
        "properties": ["hs_email_optout", "lastmodifieddate"]}).json()["results"]
    assert [r["id"] for r in opted] == [ids[0]]
    assert opted[0]["properties"]["lastmodifieddate"] == str(fake.now_ms())


def test_timeline_is_newest_first_with_has_more_and_offset(hub):
    fake, client, _ = hub
    for i in range(3):
        fake.recipient_unsubscribes_all(f"u{i}@example.com", at=1000 + i)
    first = client.get("/email/public/v1/subscriptions/timeline", params={"limit": 2}).json()
    assert [t["recipient"] for t in first["timeline"]] == ["u2@example.com", "u1@example.com"]
    assert first["hasMore"] is True
    rest = client.get("/email/public/v1/subscriptions/timeline", params={"limit": 2, "offset": first["offset"]})
    assert [t["recipient"] for t in rest.json()["timeline"]] == ["u0@example.com"] and not rest.json()["hasMore"]
    windowed = client.get("/email/public/v1/subscriptions/timeline",
                          params={"startTimestamp": 1001, "endTimestamp": 1001}).json()
    assert [t["recipient"] for t in windowed["timeline"]] == ["u1@example.com"]


def test_serve_answers_any_handler_over_a_real_socket():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, json={"method": request.method, "path": request.url.path,
                                         "body": request.content.decode(), "q": request.url.params.get("q")},
                              headers={"X-Seen": "yes"})

    with serve(handler) as url:
        assert url.startswith("http://127.0.0.1:")
        answer = httpx.post(f"{url}/some/where", params={"q": "1"}, content=b"hello")
    assert answer.status_code == 201 and answer.headers["x-seen"] == "yes"
    assert answer.json() == {"method": "POST", "path": "/some/where", "body": "hello", "q": "1"}
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=1)  # stopped with the block
