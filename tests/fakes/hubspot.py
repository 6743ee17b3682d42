"""A fake HubSpot, written by hand from ../shared/specs/hubspot.md section 5 (not generated).

Per-address preferences keyed by lower-cased email and independent of contacts;
v3/v4 communication preferences with the v4 envelope and 207 partial errors; the
v1 timeline newest first with hasMore/offset; contacts search with `after`
paging, a 200 page limit and a 400 at 10,000; batch archive; switchable rate
limits with HubSpot's 429 bodies; the Error shape on every non-2xx answer.
Choices the spec marks [INFERRED] are constructor arguments.

Rate limits follow HubSpot's documentation, not the adapter: a rolling 10-second
bucket and a separate 1-second search bucket, each counting a call when it
arrives (`latency` delays arrival), and 429 bodies as the usage guidelines show
them (`errorType` RATE_LIMIT, `policyName` TEN_SECONDLY_ROLLING, SECONDLY or
DAILY, with the matching message); rate-limit headers on non-search answers
only, and Retry-After only when asked for. The timeline pages newest first with
an opaque `offset` and `hasMore` inside startTimestamp/endTimestamp.
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx

from .common import Fault, FakeVendor, RateWindow, Reply

ALL_SCOPES = frozenset({
    "communication_preferences.read_write",
    "communication_preferences.statuses.batch.read",
    "communication_preferences.statuses.batch.write",
    "crm.objects.contacts.read",
    "crm.objects.contacts.write",
    "content",
})
LEGAL_BASES = {"CONSENT_WITH_NOTICE", "LEGITIMATE_INTEREST_CLIENT", "LEGITIMATE_INTEREST_OTHER",
               "LEGITIMATE_INTEREST_PQL", "NON_GDPR", "PERFORMANCE_OF_CONTRACT", "PROCESS_AND_STORE"}
STATES = {"SUBSCRIBED", "UNSUBSCRIBED", "NOT_SPECIFIED"}
OPERATORS = {"EQ", "NEQ", "LT", "LTE", "GT", "GTE", "BETWEEN", "IN", "NOT_IN", "HAS_PROPERTY", "NOT_HAS_PROPERTY",
             "CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"}
API_SOURCE = "SOURCE_INTEGRATION"  # [INFERRED] the source the timeline shows for API writes
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass
class HubSpotFault(Fault):
    """An injected answer: HubSpot's Error shape with `category`, or `body` (dict -> JSON, str -> raw text)."""

    body: Any = None
    category: str = "INTERNAL_ERROR"


@dataclass
class AddressPrefs:
    """What HubSpot keeps per email address, contact or not."""

    wide: dict[int, dict] = field(default_factory=dict)   # business unit -> opted-out-of-all record
    subs: dict[int, dict] = field(default_factory=dict)   # subscription id -> status record
    bounced: bool = False
    spam: bool = False


class FakeHubSpot(FakeVendor):
    """A stateful HubSpot account behind `handle(request)`."""

    fault_type = HubSpotFault

    def __init__(self, token: str = "pat-na1-test-token", *, portal_id: int = 62515,
                 definitions: list[dict] | None = None, scopes: set[str] | frozenset[str] = ALL_SCOPES,
                 batch_limit: int = 100, search_page_limit: int = 200, search_cap: int = 10_000,
                 timeline_max_limit: int = 1000, rate_limit: int | None = None,
                 search_rate_limit: int | None = None, daily_limit: int | None = None,
                 retry_after: str | None = None, rate_headers: bool = True,
                 invalid_addresses: set[str] | None = None, clock: Callable[[], float] = time.time,
                 latency: Callable[[int], float] | None = None):
        super().__init__(clock)
        self.token = token
        self.portal_id = portal_id
        self.definitions = definitions if definitions is not None else [
            {"id": 101, "name": "Newsletter", "businessUnitId": 0},
            {"id": 102, "name": "Product updates", "businessUnitId": 0},
            {"id": 103, "name": "Events", "businessUnitId": 0},
            {"id": 701, "name": "Brand B newsletter", "businessUnitId": 7},
        ]
        self.scopes = set(scopes)
        self.batch_limit = batch_limit
        self.search_page_limit = search_page_limit
        self.search_cap = search_cap
        self.timeline_max_limit = timeline_max_limit
        self.rate_limit = rate_limit
        self.search_rate_limit = search_rate_limit
        self.daily_limit = daily_limit
        self.retry_after = retry_after
        self.rate_headers = rate_headers
        self.invalid_addresses = {a.lower() for a in invalid_addresses or ()}
        # One-way network delay of the n-th request (from 0): HubSpot counts a call against its
        # limits when it arrives, not when it was sent. Arrivals keep their order, as they do for
        # a client that waits for each answer before it sends the next call.
        self.latency = latency
        self._arrivals = 0
        self._last_arrival = float("-inf")
        self.prefs: dict[str, AddressPrefs] = {}
        self.contacts: dict[str, dict] = {}
        self.timeline: list[dict] = []
        self.api_subscribes: list[tuple[str, Any]] = []  # any subscribe attempt through the API
        self._next_id = 1001
        self._ten_secondly = RateWindow(lambda: self.rate_limit, 10.0, lambda: self.clock())
        self._secondly = RateWindow(lambda: self.search_rate_limit, 1.0, lambda: self.clock())
        self._daily = 0

    # -- things that happen "at HubSpot" ----------------------------------------------------------

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def add_contact(self, email: str, **properties: str) -> str:
        """Create a contact record (the fake's own doing; the adapter never creates contacts)."""
        with self._lock:
            contact_id = str(self._next_id)
            self._next_id += 1
            now = str(self.now_ms())
            self.contacts[contact_id] = {"id": contact_id, "archived": False, "createdAt": now, "properties": {
                "email": email.lower(), "hs_object_id": contact_id, "createdate": now, "lastmodifieddate": now,
                **{k: str(v) for k, v in properties.items()}}}
            self._sync_contact(email.lower())
            return contact_id

    def recipient_unsubscribes_all(self, email: str, *, at: int | None = None, source: str = "SOURCE_RECIPIENT",
                                   business_unit: int = 0) -> None:
        with self._lock:
            self._unsubscribe_all(email.lower(), business_unit, source, at)

    def recipient_unsubscribes(self, email: str, subscription_id: int, *, at: int | None = None,
                               source: str = "SOURCE_RECIPIENT") -> None:
        with self._lock:
            self._set_status(email.lower(), subscription_id, "UNSUBSCRIBED", source, at=at)

    def recipient_subscribes(self, email: str, subscription_id: int | None = None, *, at: int | None = None,
                             source: str = "SOURCE_RECIPIENT") -> None:
        """A recipient opts back in (to one subscription, or to all email when no id is given).

        `source` says who the timeline names as having made the change (an admin: admin_subscribes).
        """
        with self._lock:
            email = email.lower()
            if subscription_id is None:
                self._prefs(email).wide.pop(0, None)
                self._record(email, [{"change": "SUBSCRIBED", "changeType": "PORTAL_STATUS",
                                      "source": source}], at)
                self._sync_contact(email)
            else:
                self._set_status(email, subscription_id, "SUBSCRIBED", source, at=at)

    def admin_subscribes(self, email: str, subscription_id: int | None = None, *, at: int | None = None) -> None:
        """A user of the portal opts the address back in by hand: the timeline names SOURCE_HUBSPOT_CUSTOMER."""
        self.recipient_subscribes(email, subscription_id, at=at, source="SOURCE_HUBSPOT_CUSTOMER")

    def bounce(self, email: str, *, at: int | None = None) -> None:
        with self._lock:
            self._prefs(email.lower()).bounced = True
            self._record(email.lower(), [{"change": "BOUNCED", "changeType": "PORTAL_BOUNCE",
                                          "source": "SOURCE_NON_DELIVERY_REPORT"}], at)

    def spam_report(self, email: str, *, at: int | None = None) -> None:
        with self._lock:
            self._prefs(email.lower()).spam = True
            # [INFERRED] change value and source of a spam report.
            self._record(email.lower(), [{"change": "REPORTED_SPAM", "changeType": "PORTAL_SPAM_REPORT",
                                          "source": "SOURCE_SPAM_REPORT"}], at)

    # -- what tests look at ----------------------------------------------------------------------

    def opted_out_of_all(self, email: str, business_unit: int = 0) -> bool:
        prefs = self.prefs.get(email.lower())
        return bool(prefs and business_unit in prefs.wide)

    def status_of(self, email: str, subscription_id: int) -> str:
        return self._status(email.lower(), subscription_id)["status"]

    # -- the HTTP side -----------------------------------------------------------------------------

    def _handle(self, request: httpx.Request) -> httpx.Response:
        received = self.receive(request)
        if request.headers.get("authorization") != f"Bearer {self.token}":
            self._raise(401, "Authentication credentials not found. This API supports OAuth 2.0 authentication "
                        "and you can find more details at https://developers.hubspot.com/docs/methods/auth/"
                        "oauth-overview", "INVALID_AUTHENTICATION")
        fault = self.injected(received)
        if fault:
            return self._fault_response(fault)
        is_search = received.path.endswith("/search")
        self._rate_limit(is_search)
        response = self.dispatch(received)
        if response is None:
            self._raise(404, f"No route for {request.method} {received.path}", "OBJECT_NOT_FOUND")
        if not is_search and self.rate_headers and self.rate_limit:
            response.headers["X-HubSpot-RateLimit-Max"] = str(self.rate_limit)
            response.headers["X-HubSpot-RateLimit-Remaining"] = str(max(0, self.rate_limit - len(self._ten_secondly)))
            response.headers["X-HubSpot-RateLimit-Interval-Milliseconds"] = "10000"
        return response

    def bad_json(self) -> httpx.Response:
        return httpx.Response(400, json=self._error_body("Invalid JSON body", "VALIDATION_ERROR"))

    def routes(self):
        v4 = "/communication-preferences/v4"
        v3 = "/communication-preferences/v3"
        return [
            ("GET", f"{v3}/definitions", self._v3_definitions),
            ("GET", f"{v3}/status/email/([^/]+)", self._v3_status),
            ("POST", f"{v3}/subscribe", self._v3_subscribe),
            ("POST", f"{v3}/unsubscribe", self._v3_unsubscribe),
            ("GET", f"{v4}/definitions", self._v4_definitions),
            ("POST", f"{v4}/statuses/batch/read", self._batch_read),
            ("POST", f"{v4}/statuses/batch/write", self._batch_write),
            ("POST", f"{v4}/statuses/batch/unsubscribe-all/read", self._batch_wide_read),
            ("POST", f"{v4}/statuses/batch/unsubscribe-all", self._batch_unsubscribe_all),
            ("GET", f"{v4}/statuses/([^/]+)/unsubscribe-all", self._wide_read),
            ("POST", f"{v4}/statuses/([^/]+)/unsubscribe-all", self._unsubscribe_all_one),
            ("GET", f"{v4}/statuses/([^/]+)", self._statuses_read),
            ("POST", f"{v4}/statuses/([^/]+)", self._status_write),
            ("POST", "/crm/v3/objects/contacts/search", self._search),
            ("POST", "/crm/v3/objects/contacts/batch/read", self._contacts_batch_read),
            ("POST", "/crm/v3/objects/contacts/batch/archive", self._archive),
            ("GET", "/email/public/v1/subscriptions/timeline", self._timeline),
            ("GET", "/email/public/v1/subscriptions/([^/]+)", self._v1_status),
            ("PUT", "/email/public/v1/subscriptions/([^/]+)", self._v1_update),
        ]

    # -- answers and errors ------------------------------------------------------------------------

    def _error_body(self, message: str, category: str, **extra) -> dict:
        return {"status": "error", "message": message, "correlationId": str(uuid.uuid4()), "category": category,
                **extra}

    def _raise(self, status: int, message: str, category: str, headers: dict | None = None, **extra) -> None:
        raise Reply(httpx.Response(status, json=self._error_body(message, category, **extra),
                                    headers=headers or {}))

    def _fault_response(self, fault: Fault) -> httpx.Response:
        if isinstance(fault.body, str):
            return httpx.Response(fault.status, text=fault.body, headers=fault.headers)
        body = fault.body if fault.body is not None else self._error_body(fault.message, fault.category)
        return httpx.Response(fault.status, json=body, headers=fault.headers)

    def _envelope(self, results: list, errors: list | None = None) -> httpx.Response:
        now = _iso(self.now_ms())
        body: dict[str, Any] = {"status": "COMPLETE", "results": results, "startedAt": now, "completedAt": now}
        if errors:
            body.update(errors=errors, numErrors=len(errors))
        return httpx.Response(207 if errors else 200, json=body)

    def _arrival(self) -> float:
        delay = self.latency(self._arrivals) if self.latency else 0.0
        self._arrivals += 1
        self._last_arrival = max(self._last_arrival, self.clock() + delay)
        return self._last_arrival

    def _rate_limit(self, is_search: bool) -> None:
        now = self._arrival()
        headers = {"Retry-After": self.retry_after} if self.retry_after else {}
        if self.daily_limit is not None:
            self._daily += 1
            if self._daily > self.daily_limit:
                self._raise(429, "You have reached your daily limit.", "RATE_LIMITS", headers,
                            errorType="RATE_LIMIT", policyName="DAILY", requestId=str(uuid.uuid4()))
        if is_search:
            window, limit, message, policy = self._secondly, self.search_rate_limit, \
                "You have reached your secondly limit.", "SECONDLY"
        else:
            window, limit, message, policy = self._ten_secondly, self.rate_limit, \
                "You have reached your ten_secondly_rolling limit.", "TEN_SECONDLY_ROLLING"
        if not window.hit(now):
            if not is_search and self.rate_headers:
                headers = {**headers, "X-HubSpot-RateLimit-Max": str(limit), "X-HubSpot-RateLimit-Remaining": "0",
                           "X-HubSpot-RateLimit-Interval-Milliseconds": "10000"}
            self._raise(429, message, "RATE_LIMITS", headers, errorType="RATE_LIMIT", policyName=policy,
                        requestId=str(uuid.uuid4()))

    def _need_scope(self, *any_of: str) -> None:
        if not self.scopes & set(any_of):
            self._raise(403, "This app hasn't been granted all required scopes to make this call. Read more about "
                        "required scopes here: https://developers.hubspot.com/scopes.", "MISSING_SCOPES",
                        errors=[{"message": f"One or more of the following scopes are required: {list(any_of)}"}])

    def _need_channel(self, params: dict) -> None:
        if params.get("channel") != "EMAIL":
            self._raise(400, "channel is required and must be EMAIL", "VALIDATION_ERROR")

    def _check_email(self, email: str) -> str | None:
        """None when HubSpot takes the address, else why not."""
        if not _EMAIL.match(email) or email.lower() in self.invalid_addresses:
            return f"Invalid email address: {email}"
        return None

    def _inputs(self, body: Any) -> list:
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
            self._raise(400, "Request body must be {\"inputs\": [...]}", "VALIDATION_ERROR")
        inputs = body["inputs"]
        if len(inputs) > self.batch_limit:
            self._raise(400, f"Too many inputs: {len(inputs)} exceeds the limit of {self.batch_limit}",
                        "VALIDATION_ERROR")
        return inputs

    def _item_error(self, email: str, message: str) -> dict:
        return {"status": "error", "category": "VALIDATION_ERROR", "message": message,
                "context": {"subscriberIdString": [email]}, "errors": [], "links": {}}

    # -- preference state ------------------------------------------------------------------------

    def _prefs(self, email: str) -> AddressPrefs:
        return self.prefs.setdefault(email, AddressPrefs())

    def _definition(self, subscription_id: int) -> dict | None:
        return next((d for d in self.definitions if d["id"] == subscription_id), None)

    def _status(self, email: str, subscription_id: int) -> dict:
        prefs = self.prefs.get(email, AddressPrefs())
        record = prefs.subs.get(subscription_id)
        if record:
            return record
        definition = self._definition(subscription_id) or {"businessUnitId": 0}
        wide = prefs.wide.get(definition["businessUnitId"])
        if wide:
            return {"status": "UNSUBSCRIBED", "source": wide["source"], "timestamp": wide["timestamp"]}
        return {"status": "NOT_SPECIFIED", "source": "", "timestamp": 0}

    def _public_status(self, email: str, subscription_id: int, reason: str | None = None) -> dict:
        definition = self._definition(subscription_id) or {"name": "", "businessUnitId": 0}
        record = self._status(email, subscription_id)
        status = {"subscriberIdString": email, "subscriptionId": subscription_id, "channel": "EMAIL",
                  "status": record["status"], "source": record["source"] or "PORTAL_WIDE_STATUS",
                  "timestamp": _iso(record["timestamp"]), "subscriptionName": definition["name"],
                  "businessUnitId": definition["businessUnitId"]}
        for key in ("legalBasis", "legalBasisExplanation"):
            if record.get(key):
                status[key] = record[key]
        if reason:
            status["setStatusSuccessReason"] = reason
        return status

    def _set_status(self, email: str, subscription_id: int, state: str, source: str, *, legal: dict | None = None,
                    at: int | None = None) -> str:
        """Write one subscription status; the setStatusSuccessReason."""
        before = self._status(email, subscription_id)["status"]
        prefs = self._prefs(email)
        definition = self._definition(subscription_id) or {"businessUnitId": 0}
        if before == state:
            return "NO_STATUS_CHANGE"
        reason = "REQUESTED_CHANGE_OCCURRED"
        if state == "SUBSCRIBED" and definition["businessUnitId"] in prefs.wide:
            prefs.wide.pop(definition["businessUnitId"])
            reason = "RESUBSCRIBE_OCCURRED"
        moment = at if at is not None else self.now_ms()
        prefs.subs[subscription_id] = {"status": state, "source": source, "timestamp": moment, **(legal or {})}
        self._record(email, [{"change": state, "changeType": "SUBSCRIPTION_STATUS", "source": source,
                              "subscriptionId": subscription_id}], moment)
        self._sync_contact(email)
        return reason

    def _unsubscribe_all(self, email: str, unit: int, source: str, at: int | None = None) -> list[dict]:
        """Opt an address out of all email of a business unit; its per-subscription statuses with reasons."""
        prefs = self._prefs(email)
        subscriptions = [d["id"] for d in self.definitions if d["businessUnitId"] == unit]
        if unit in prefs.wide:
            return [self._public_status(email, s, "NO_STATUS_CHANGE") for s in subscriptions]
        moment = at if at is not None else self.now_ms()
        prefs.wide[unit] = {"status": "UNSUBSCRIBED", "source": source, "timestamp": moment}
        for subscription in subscriptions:
            prefs.subs[subscription] = {"status": "UNSUBSCRIBED", "source": source, "timestamp": moment}
        change = {"change": "UNSUBSCRIBED", "changeType": "PORTAL_STATUS", "source": source}
        if unit:
            change["businessUnitId"] = unit  # [INFERRED] how the timeline tells a brand-wide opt-out apart
        self._record(email, [change], moment)
        self._sync_contact(email)
        return [self._public_status(email, s, "UNSUBSCRIBE_FROM_ALL_OCCURRED") for s in subscriptions]

    def _record(self, email: str, changes: list[dict], at: int | None) -> None:
        moment = at if at is not None else self.now_ms()
        event = {"id": str(uuid.uuid4()), "created": moment}
        self.timeline.append({"timestamp": moment, "portalId": self.portal_id, "recipient": email,
                              "changes": [{**c, "portalId": self.portal_id, "causedByEvent": event}
                                          for c in changes]})

    def _sync_contact(self, email: str) -> None:
        """Keep the calculated contact properties in line, bumping lastmodifieddate as HubSpot does."""
        prefs = self.prefs.get(email, AddressPrefs())
        for contact in self.contacts.values():
            props = contact["properties"]
            if props.get("email") != email:
                continue
            props["hs_email_optout"] = "true" if 0 in prefs.wide else "false"
            for subscription, record in prefs.subs.items():
                props[f"hs_email_optout_{subscription}"] = "true" if record["status"] == "UNSUBSCRIBED" else "false"
            props["lastmodifieddate"] = str(self.now_ms())

    def _wide_status(self, email: str, unit: int) -> list[dict]:
        record = self.prefs.get(email, AddressPrefs()).wide.get(unit)
        if not record:
            return []
        return [{"subscriberIdString": email, "channel": "EMAIL", "status": "UNSUBSCRIBED",
                 "timestamp": _iso(record["timestamp"]),
                 "wideStatusType": "PORTAL_WIDE" if unit == 0 else "BUSINESS_UNIT_WIDE", "businessUnitId": unit}]

    # -- v3 ----------------------------------------------------------------------------------------

    def _v3_definitions(self, params, body):
        self._need_scope("communication_preferences.read_write")
        return httpx.Response(200, json={"subscriptionDefinitions": [_definition(d, str_id=True)
                                                                      for d in self.definitions]})

    def _v3_status(self, params, body, email):
        self._need_scope("communication_preferences.read_write")
        email = email.lower()
        prefs = self.prefs.get(email, AddressPrefs())
        statuses = []
        for d in self.definitions:
            wide = d["businessUnitId"] in prefs.wide
            record = self._status(email, d["id"])
            statuses.append({"id": str(d["id"]), "name": d["name"], "description": d["name"],
                             "status": "NOT_SUBSCRIBED" if wide or record["status"] == "UNSUBSCRIBED" else
                             ("SUBSCRIBED" if record["status"] == "SUBSCRIBED" else "NOT_SUBSCRIBED"),
                             "sourceOfStatus": ("SUBSCRIPTION_STATUS" if not wide else "PORTAL_WIDE_STATUS"
                                                if d["businessUnitId"] == 0 else "BRAND_WIDE_STATUS"),
                             "brandId": d["businessUnitId"]})
        return httpx.Response(200, json={"recipient": email, "subscriptionStatuses": statuses})

    def _v3_request(self, body) -> tuple[str, int]:
        if not isinstance(body, dict) or not body.get("emailAddress") or not isinstance(body.get("subscriptionId"),
                                                                                            str):
            self._raise(400, "emailAddress and subscriptionId (a string) are required", "VALIDATION_ERROR")
        return body["emailAddress"].lower(), int(body["subscriptionId"])

    def _v3_subscribe(self, params, body):
        self._need_scope("communication_preferences.read_write")
        email, subscription = self._v3_request(body)
        self.api_subscribes.append(("v3/subscribe", body))
        prefs = self.prefs.get(email, AddressPrefs())
        if prefs.wide or self._status(email, subscription)["status"] == "UNSUBSCRIBED":
            self._raise(400, f"{email} is opted out and cannot be resubscribed through this API",
                        "VALIDATION_ERROR")
        self._set_status(email, subscription, "SUBSCRIBED", API_SOURCE)
        return httpx.Response(200, json=self._v3_public(email, subscription))

    def _v3_unsubscribe(self, params, body):
        self._need_scope("communication_preferences.read_write")
        email, subscription = self._v3_request(body)
        self._set_status(email, subscription, "UNSUBSCRIBED", API_SOURCE)
        return httpx.Response(200, json=self._v3_public(email, subscription))

    def _v3_public(self, email: str, subscription: int) -> dict:
        d = self._definition(subscription) or {"name": ""}
        state = self._status(email, subscription)["status"]
        return {"id": str(subscription), "name": d["name"], "description": d["name"],
                "status": "SUBSCRIBED" if state == "SUBSCRIBED" else "NOT_SUBSCRIBED",
                "sourceOfStatus": "SUBSCRIPTION_STATUS"}

    # -- v4 ----------------------------------------------------------------------------------------

    def _v4_definitions(self, params, body):
        self._need_scope("communication_preferences.read_write")
        unit = int(params.get("businessUnitId", 0))
        now = _iso(self.now_ms())
        return httpx.Response(200, json={"status": "COMPLETE", "startedAt": now, "completedAt": now, "results": [
            _definition(d) for d in self.definitions if d["businessUnitId"] == unit]})

    def _statuses_read(self, params, body, email):
        self._need_scope("communication_preferences.read_write")
        self._need_channel(params)
        email = email.lower()
        unit = int(params.get("businessUnitId", 0))
        return self._envelope([self._public_status(email, d["id"]) for d in self.definitions
                               if d["businessUnitId"] == unit])

    def _status_write(self, params, body, email):
        self._need_scope("communication_preferences.read_write")
        email = email.lower()
        problem = self._check_email(email)
        if problem:
            self._raise(400, problem, "VALIDATION_ERROR")
        request = self._status_request(body, with_subscriber=False)
        return self._envelope([self._write_one(email, request)])

    def _status_request(self, item: Any, with_subscriber: bool) -> dict:
        """Validate a PartialPublicStatusRequest / PublicStatusRequest; raise the 400 HubSpot would give."""
        required = ["channel", "statusState", "subscriptionId"] + (["subscriberIdString"] if with_subscriber else [])
        if not isinstance(item, dict) or any(k not in item for k in required):
            self._raise(400, f"Missing required fields: {required}", "VALIDATION_ERROR")
        if item["channel"] != "EMAIL":
            self._raise(400, "channel must be EMAIL", "VALIDATION_ERROR")
        if item["statusState"] not in STATES:
            self._raise(400, f"statusState must be one of {sorted(STATES)}", "VALIDATION_ERROR")
        if not isinstance(item["subscriptionId"], int) or self._definition(item["subscriptionId"]) is None:
            self._raise(400, f"Subscription {item['subscriptionId']!r} does not exist", "VALIDATION_ERROR")
        if item.get("legalBasis") is not None and item["legalBasis"] not in LEGAL_BASES:
            self._raise(400, f"legalBasis must be one of {sorted(LEGAL_BASES)}", "VALIDATION_ERROR")
        return item

    def _write_one(self, email: str, request: dict) -> dict:
        if request["statusState"] == "SUBSCRIBED":
            self.api_subscribes.append(("v4/statuses", request))
        legal = {k: request[k] for k in ("legalBasis", "legalBasisExplanation") if request.get(k)}
        reason = self._set_status(email, request["subscriptionId"], request["statusState"], API_SOURCE, legal=legal)
        return self._public_status(email, request["subscriptionId"], reason)

    def _wide_read(self, params, body, email):
        self._need_scope("communication_preferences.read_write")
        self._need_channel(params)
        return self._envelope(self._wide_status(email.lower(), int(params.get("businessUnitId", 0))))

    def _unsubscribe_all_one(self, params, body, email):
        self._need_scope("communication_preferences.read_write")
        self._need_channel(params)
        email = email.lower()
        problem = self._check_email(email)
        if problem:
            self._raise(400, problem, "VALIDATION_ERROR")
        statuses = self._unsubscribe_all(email, int(params.get("businessUnitId", 0)), API_SOURCE)
        return self._envelope(statuses if params.get("verbose") == "true" else [])

    def _batch_read(self, params, body):
        return self._per_address(params, body, "read", lambda email, unit: {"subscriberIdString": email, "statuses": [
            self._public_status(email, d["id"]) for d in self.definitions if d["businessUnitId"] == unit]})

    def _batch_wide_read(self, params, body):
        return self._per_address(params, body, "read", lambda email, unit: {
            "subscriberIdString": email, "wideStatuses": self._wide_status(email, unit)})

    def _per_address(self, params, body, kind: str, result_of: Callable[[str, int], dict]) -> httpx.Response:
        """A batch `kind` ("read"/"write") call: a result per valid input address (lower-cased), an error per
        invalid one."""
        self._need_scope(f"communication_preferences.statuses.batch.{kind}")
        self._need_channel(params)
        unit = int(params.get("businessUnitId", 0))
        results, errors = [], []
        for email in self._inputs(body):
            problem = self._check_email(str(email))
            if problem:
                errors.append(self._item_error(email, problem))
                continue
            results.append(result_of(email.lower(), unit))
        return self._envelope(results, errors)

    def _batch_write(self, params, body):
        self._need_scope("communication_preferences.statuses.batch.write")
        results, errors = [], []
        for item in self._inputs(body):
            request = self._status_request(item, with_subscriber=True)
            email = str(request["subscriberIdString"]).lower()
            problem = self._check_email(email)
            if problem:
                errors.append(self._item_error(request["subscriberIdString"], problem))
                continue
            results.append(self._write_one(email, request))
        return self._envelope(results, errors)

    def _batch_unsubscribe_all(self, params, body):
        verbose = params.get("verbose") == "true"

        def result_of(email: str, unit: int) -> dict:
            statuses = self._unsubscribe_all(email, unit, API_SOURCE)
            return {"subscriberIdString": email, **({"statuses": statuses} if verbose else {})}

        return self._per_address(params, body, "write", result_of)

    # -- contacts ----------------------------------------------------------------------------------

    def _search(self, params, body):
        self._need_scope("crm.objects.contacts.read")
        body = body or {}
        limit = int(body.get("limit", 10))
        if limit > self.search_page_limit:
            self._raise(400, f"limit must be at most {self.search_page_limit}", "VALIDATION_ERROR")
        groups = body.get("filterGroups") or []
        if len(groups) > 5:
            self._raise(400, "Too many filter groups: at most 5 are allowed", "VALIDATION_ERROR")
        after = int(body.get("after") or 0)
        if after >= self.search_cap:
            self._raise(400, f"Paging past {self.search_cap} results is not allowed; narrow the query",
                        "VALIDATION_ERROR")
        hits = [c for c in self.contacts.values() if not c["archived"] and _matches(c["properties"], groups)]
        for sort in reversed(body.get("sorts") or []):
            name = sort if isinstance(sort, str) else sort.get("propertyName", "hs_object_id")
            descending = not isinstance(sort, str) and sort.get("direction") == "DESCENDING"
            hits.sort(key=lambda c: _sort_key(c["properties"].get(name)), reverse=descending)
        if not body.get("sorts"):
            hits.sort(key=lambda c: int(c["id"]))
        page = hits[after:after + limit]
        wanted = set(body.get("properties") or []) | {"hs_object_id", "createdate", "lastmodifieddate"}
        answer: dict[str, Any] = {"total": len(hits), "results": [{
            "id": c["id"], "properties": {k: v for k, v in c["properties"].items() if k in wanted},
            "createdAt": _iso(int(c["createdAt"])), "updatedAt": _iso(int(c["properties"]["lastmodifieddate"])),
            "archived": False} for c in page]}
        if after + limit < len(hits):
            answer["paging"] = {"next": {"after": str(after + limit)}}
        return httpx.Response(200, json=answer)

    def _contacts_batch_read(self, params, body):
        self._need_scope("crm.objects.contacts.read")
        inputs = self._inputs(body)
        key = (body or {}).get("idProperty") or "hs_object_id"
        wanted = {str(i.get("id")).lower() for i in inputs if isinstance(i, dict)}
        found = [{"id": c["id"], "properties": c["properties"]} for c in self.contacts.values()
                 if not c["archived"] and str(c["properties"].get(key, c["id"])).lower() in wanted]
        return self._envelope(found)

    def _archive(self, params, body):
        self._need_scope("crm.objects.contacts.write")
        for item in self._inputs(body):
            contact = self.contacts.get(str(item.get("id") if isinstance(item, dict) else item))
            if contact:
                contact["archived"] = True
        return httpx.Response(204)

    # -- v1 ----------------------------------------------------------------------------------------

    def _timeline(self, params, body):
        self._need_scope("content")
        try:
            start = int(params.get("startTimestamp", 0))
            end = int(params.get("endTimestamp", 2**63 - 1))
            limit = int(params.get("limit", 10))
        except ValueError:
            self._raise(400, "startTimestamp, endTimestamp and limit must be integers", "VALIDATION_ERROR")
        if limit > self.timeline_max_limit or limit < 1:
            self._raise(400, f"limit must be between 1 and {self.timeline_max_limit}", "VALIDATION_ERROR")
        position = 0
        if params.get("offset"):
            try:
                position = int(base64.urlsafe_b64decode(params["offset"].encode()).decode())
            except ValueError:
                self._raise(400, "Invalid offset", "VALIDATION_ERROR")
        change_type = params.get("changeType")
        items = [(i, item) for i, item in enumerate(self.timeline) if start <= item["timestamp"] <= end
                 and (not change_type or any(c["changeType"] == change_type for c in item["changes"]))]
        items.sort(key=lambda pair: (pair[1]["timestamp"], pair[0]), reverse=True)  # newest first
        page = [item for _, item in items[position:position + limit]]
        next_position = position + len(page)
        return httpx.Response(200, json={
            "hasMore": next_position < len(items),
            "offset": base64.urlsafe_b64encode(str(next_position).encode()).decode(),
            "timeline": page})

    def _v1_status(self, params, body, email):
        self._need_scope("content")
        prefs = self.prefs.get(email.lower(), AddressPrefs())
        return httpx.Response(200, json={
            "subscribed": 0 not in prefs.wide, "markedAsSpam": prefs.spam, "bounced": prefs.bounced,
            "portalId": self.portal_id, "email": email.lower(),
            "status": "unsubscribed" if 0 in prefs.wide else "subscribed", "subscriptionStatuses": []})

    def _v1_update(self, params, body, email):
        self._need_scope("content")
        email = email.lower()
        if isinstance(body, dict) and body.get("unsubscribeFromAll") is True:
            self._unsubscribe_all(email, 0, API_SOURCE)
        elif isinstance(body, dict) and isinstance(body.get("subscriptionStatuses"), list):
            for item in body["subscriptionStatuses"]:
                if item.get("subscribed"):
                    self.api_subscribes.append(("v1/subscriptions", item))
                self._set_status(email, int(item["id"]), "SUBSCRIBED" if item.get("subscribed") else "UNSUBSCRIBED",
                                 API_SOURCE)
        else:
            self._raise(400, "Body must hold unsubscribeFromAll or subscriptionStatuses", "VALIDATION_ERROR")
        return httpx.Response(200, json={"status": "ok"})


# -- helpers -----------------------------------------------------------------------------------------


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _definition(d: dict, str_id: bool = False) -> dict:
    stamp = "2020-01-01T00:00:00.000Z"
    return {"id": str(d["id"]) if str_id else d["id"], "name": d["name"], "description": d["name"],
            "isActive": True, "isDefault": False, "isInternal": False, "createdAt": stamp, "updatedAt": stamp,
            "businessUnitId": d["businessUnitId"]}


def _sort_key(value: str | None) -> tuple:
    if value is None:
        return (2, 0, "")
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0, value.lower())


def _compare(left: str | None, right: Any) -> int | None:
    if left is None:
        return None
    try:
        a, b = float(left), float(right)
    except (TypeError, ValueError):
        a, b = left.lower(), str(right).lower()
    return (a > b) - (a < b)


def _matches(props: dict, groups: list[dict]) -> bool:
    """Filter groups are ORed, the filters in a group ANDed; an empty list matches everything."""
    if not groups:
        return True
    return any(all(_filter(props, f) for f in group.get("filters") or []) for group in groups)


def _filter(props: dict, spec: dict) -> bool:
    operator = spec.get("operator")
    if operator not in OPERATORS:
        raise Reply(httpx.Response(400, json={"status": "error", "message": f"Unknown operator {operator}",
                                               "correlationId": str(uuid.uuid4()), "category": "VALIDATION_ERROR"}))
    value = props.get(spec.get("propertyName"))
    if operator == "HAS_PROPERTY":
        return value not in (None, "")
    if operator == "NOT_HAS_PROPERTY":
        return value in (None, "")
    if operator in ("IN", "NOT_IN"):
        inside = value is not None and value.lower() in {str(v).lower() for v in spec.get("values") or []}
        return inside if operator == "IN" else not inside
    if operator in ("CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"):
        token = str(spec.get("value", "")).lower().strip("*")
        inside = value is not None and token in value.lower()
        return inside if operator == "CONTAINS_TOKEN" else not inside
    if operator == "BETWEEN":
        low, high = _compare(value, spec.get("value")), _compare(value, spec.get("highValue"))
        return low is not None and high is not None and low >= 0 and high <= 0
    order = _compare(value, spec.get("value"))
    if operator == "NEQ":
        return order != 0
    if order is None:
        return False
    return {"EQ": order == 0, "LT": order < 0, "LTE": order <= 0, "GT": order > 0, "GTE": order >= 0}[operator]
