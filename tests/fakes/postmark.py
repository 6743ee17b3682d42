"""A fake Postmark server, written by hand from ../shared/specs/esp.md and Postmark's API reference.

Suppressions per message stream with reason (HardBounce, SpamComplaint,
ManualSuppression) and origin (Recipient, Customer, Admin); the dump with its filters
and no paging; creates and deletes of up to 50 addresses answering a Status per address;
`GET /message-streams`; the server token header; `{"ErrorCode", "Message"}` on errors.
What the reference leaves open is marked [INFERRED]: the error code for too many
addresses (410, Postmark's code for too many batch messages), the texts of Failed
statuses, and which date the filters compare (UTC here).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

import httpx

from .common import Fault, FakeVendor, RateWindow, Reply

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
EASTERN = timezone(timedelta(hours=-5))  # the offset Postmark's examples show on CreatedAt


@dataclass
class PostmarkFault(Fault):
    """An injected answer with Postmark's ErrorCode."""

    error_code: int = 0


class FakePostmark(FakeVendor):
    """A stateful Postmark server behind `handle(request)`."""

    fault_type = PostmarkFault

    def __init__(self, server_token: str = "pm-server-token", *, streams: dict[str, str] | None = None,
                 max_batch: int = 50, processing_delay: float = 0.0, rate_limit: int | None = None,
                 retry_after: str | None = None, clock: Callable[[], float] = time.time):
        super().__init__(clock)
        self.server_token = server_token
        self.streams = streams if streams is not None else {
            "outbound": "Transactional", "broadcast": "Broadcasts", "inbound": "Inbound"}
        self.max_batch = max_batch
        self.processing_delay = processing_delay  # [LIB] creates take effect asynchronously
        self.rate_limit = rate_limit
        self.retry_after = retry_after
        self.window = RateWindow(lambda: self.rate_limit, 1.0, lambda: self.clock())
        # stream -> address -> {EmailAddress, SuppressionReason, Origin, created (epoch), visible (epoch)}
        self.suppressions: dict[str, dict[str, dict]] = {s: {} for s in self.streams}

    # -- things that happen "at Postmark" -----------------------------------------------------------------

    def suppress(self, address: str, stream: str = "broadcast", reason: str = "ManualSuppression",
                 origin: str = "Recipient", *, at: float | None = None) -> None:
        """Record a suppression as Postmark itself would (an unsubscribe link, a bounce, a complaint)."""
        with self._lock:
            moment = self.moment(at)
            self.suppressions[stream][address.lower()] = {
                "EmailAddress": address.lower(), "SuppressionReason": reason, "Origin": origin,
                "created": moment, "visible": moment}

    # -- what tests look at -----------------------------------------------------------------------------------

    def held(self, stream: str) -> dict[str, tuple[str, str]]:
        """Address -> (reason, origin) of a stream's suppressions, processed or not."""
        return {a: (s["SuppressionReason"], s["Origin"]) for a, s in self.suppressions[stream].items()}

    # -- the HTTP side ------------------------------------------------------------------------------------------

    def _handle(self, request: httpx.Request) -> httpx.Response:
        received = self.receive(request, headers=False)
        path, body = received.path, received.body
        # Query names are matched without regard to case, as Postmark's own examples mix them.
        params = {k.lower(): v for k, v in received.params.items()}
        if request.headers.get("x-postmark-server-token") != self.server_token:
            self._raise(401, 10, "Bad or missing Server API token.")
        fault = self.injected(received)
        if fault:
            return self.error(fault.status, fault.message, fault)
        if not self.window.hit():
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            raise Reply(httpx.Response(429, json={"ErrorCode": 429, "Message": "Rate limit exceeded"},
                                       headers=headers))
        if path == "/message-streams" and request.method == "GET":
            return self._list_streams(params)
        match = re.fullmatch(r"/message-streams/([^/]+)/suppressions(/dump|/delete)?", path)
        if not match:
            self._raise(404, 0, "Not found")
        stream, action = match.group(1), match.group(2)
        if stream not in self.streams:
            self._raise(404, 1226, f"The message stream for the provided 'ID' ({stream}) was not found.")
        if action == "/dump" and request.method == "GET":
            return self._dump(stream, params)
        if action is None and request.method == "POST":
            return self._create(stream, body)
        if action == "/delete" and request.method == "POST":
            return self._delete(stream, body)
        self._raise(405, 0, "Method not allowed")

    def error(self, status: int, message: str, fault: Fault | None = None) -> httpx.Response:
        code = fault.error_code if isinstance(fault, PostmarkFault) else 0
        return httpx.Response(status, json={"ErrorCode": code, "Message": message},
                              headers=fault.headers if fault else {})

    def bad_json(self) -> httpx.Response:
        return httpx.Response(422, json={"ErrorCode": 402, "Message": "Received invalid JSON input."})

    def _raise(self, status: int, code: int, message: str) -> None:
        raise Reply(httpx.Response(status, json={"ErrorCode": code, "Message": message}))

    def _list_streams(self, params: dict) -> httpx.Response:
        wanted = params.get("messagestreamtype", "All")
        streams = [{"ID": s, "ServerID": 1, "Name": s.capitalize(), "Description": None, "MessageStreamType": kind,
                    "CreatedAt": "2020-01-01T00:00:00-05:00", "UpdatedAt": None, "ArchivedAt": None,
                    "ExpectedPurgeDate": None,
                    "SubscriptionManagementConfiguration": {"UnsubscribeHandlingType": "Postmark"}}
                   for s, kind in self.streams.items() if wanted in ("All", kind)]
        return httpx.Response(200, json={"MessageStreams": streams, "TotalCount": len(streams)})

    def _dump(self, stream: str, params: dict) -> httpx.Response:
        def day(name: str) -> date | None:
            if not params.get(name):
                return None
            try:
                return date.fromisoformat(params[name][:10])
            except ValueError:
                self._raise(422, 0, f"Invalid '{name}' value.")

        since, until = day("fromdate"), day("todate")
        now = self.clock()
        rows = []
        for item in self.suppressions[stream].values():
            created_day = datetime.fromtimestamp(item["created"], timezone.utc).date()
            if item["visible"] > now or (since and created_day < since) or (until and created_day > until):
                continue
            if params.get("suppressionreason") and item["SuppressionReason"].lower() != params["suppressionreason"].lower():
                continue
            if params.get("origin") and item["Origin"].lower() != params["origin"].lower():
                continue
            if params.get("emailaddress") and item["EmailAddress"] != params["emailaddress"].lower():
                continue
            rows.append({"EmailAddress": item["EmailAddress"], "SuppressionReason": item["SuppressionReason"],
                         "Origin": item["Origin"],
                         "CreatedAt": datetime.fromtimestamp(item["created"], EASTERN).isoformat(timespec="seconds")})
        rows.sort(key=lambda r: r["CreatedAt"], reverse=True)
        return httpx.Response(200, json={"Suppressions": rows})

    def _entries(self, body: Any) -> list[str]:
        items = body.get("Suppressions") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            self._raise(422, 403, "The 'Suppressions' field is required and must be a non-empty array.")
        if len(items) > self.max_batch:
            self._raise(422, 410, f"Too many suppressions in one request: at most {self.max_batch} are allowed.")
        return [str(i.get("EmailAddress", "")) if isinstance(i, dict) else "" for i in items]

    def _create(self, stream: str, body: Any) -> httpx.Response:
        results, now = [], self.clock()
        for address in self._entries(body):
            if not _EMAIL.match(address.strip()):
                results.append({"EmailAddress": address, "Status": "Failed", "Message": "Invalid email address."})
                continue
            key = address.strip().lower()
            # An address suppressed already keeps its record (and its reason and origin).
            self.suppressions[stream].setdefault(key, {
                "EmailAddress": key, "SuppressionReason": "ManualSuppression", "Origin": "Customer",
                "created": now, "visible": now + self.processing_delay})
            results.append({"EmailAddress": address, "Status": "Suppressed", "Message": None})
        return httpx.Response(200, json={"Suppressions": results})

    def _delete(self, stream: str, body: Any) -> httpx.Response:
        results = []
        for address in self._entries(body):
            item = self.suppressions[stream].get(address.strip().lower())
            if item is None:
                results.append({"EmailAddress": address, "Status": "Failed",
                                "Message": "Suppression not found."})  # [INFERRED] text
            elif item["SuppressionReason"] == "SpamComplaint":
                results.append({"EmailAddress": address, "Status": "Failed",
                                "Message": "You cannot delete a SpamComplaint suppression."})  # [INFERRED] text
            elif item["SuppressionReason"] == "ManualSuppression" and item["Origin"] == "Recipient":
                results.append({"EmailAddress": address, "Status": "Failed",
                                "Message": "Recipient unsubscribes can only be reversed by the recipient."})
            else:
                del self.suppressions[stream][address.strip().lower()]
                results.append({"EmailAddress": address, "Status": "Deleted", "Message": None})
        return httpx.Response(200, json={"Suppressions": results})
