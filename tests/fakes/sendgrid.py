"""A fake Twilio SendGrid v3 account, written by hand from ../shared/specs/esp.md and SendGrid's v3 reference.

Suppression lists (global unsubscribes, bounces, spam reports, blocks, invalid
emails) listed by inclusive unix-second windows with limit/offset; unsubscribe
groups and their suppressions, including SendGrid's documented rule that a write
to a group that does not exist lands on the global list; Bearer auth; the
{"errors": [{field, message}]} body on every non-2xx answer; X-RateLimit-* headers
and 429 when a window is spent. Choices SendGrid does not document (marked
[INFERRED]) are constructor arguments.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import httpx

from .common import FakeVendor, RateWindow, Reply

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
LIST_NAMES = ("unsubscribes", "bounces", "spam_reports", "blocks", "invalid_emails")


class FakeSendGrid(FakeVendor):
    """A stateful SendGrid account behind `handle(request)`."""

    def __init__(self, api_key: str = "SG.test-key.secret", *, groups: dict[int, str] | None = None,
                 batch_limit: int = 1000, page_limit: int = 500, rate_limit: int | None = None,
                 rate_period: float = 1.0, invalid_addresses: set[str] | None = None,
                 clock: Callable[[], float] = time.time):
        super().__init__(clock)
        self.api_key = api_key
        self.groups: dict[int, dict] = {gid: {"id": gid, "name": name, "description": f"{name} mail",
                                              "is_default": False}
                                        for gid, name in (groups or {101: "Newsletter", 102: "Product news"}).items()}
        self.batch_limit = batch_limit          # [INFERRED] SendGrid publishes no per-request maximum
        self.page_limit = page_limit            # "up to 500 per query" on the bounces page
        self.rate_limit = rate_limit
        self.rate_period = rate_period
        self.invalid_addresses = {a.lower() for a in invalid_addresses or ()}
        self.window = RateWindow(lambda: self.rate_limit, rate_period, lambda: self.clock())
        # list name -> address -> record (with "email" and "created")
        self.lists: dict[str, dict[str, dict]] = {name: {} for name in LIST_NAMES}
        self.group_suppressions: dict[int, dict[str, int]] = {gid: {} for gid in self.groups}

    # -- things that happen "at SendGrid" ----------------------------------------------------------

    def now(self) -> int:
        return int(self.clock())

    def recipient_unsubscribes(self, email: str, *, at: int | None = None) -> None:
        """The recipient clicks "unsubscribe from all emails"."""
        with self._lock:
            self._add("unsubscribes", email, at)

    def recipient_leaves_group(self, email: str, group_id: int, *, at: int | None = None) -> None:
        with self._lock:
            self.group_suppressions.setdefault(group_id, {}).setdefault(email.lower(), at or self.now())

    def recipient_resubscribes(self, email: str, group_id: int | None = None) -> None:
        """The recipient re-subscribes on SendGrid's preference page (the Event Webhook's group_resubscribe).

        The suppression is gone; the API's lists keep no record of who removed it, or when.
        """
        with self._lock:
            if group_id is None:
                self.lists["unsubscribes"].pop(email.lower(), None)
            else:
                self.group_suppressions.get(group_id, {}).pop(email.lower(), None)

    def admin_resubscribes(self, email: str, group_id: int | None = None) -> None:
        """A user of the account deletes the suppression in SendGrid's UI: the API shows the same as above."""
        self.recipient_resubscribes(email, group_id)

    def bounce(self, email: str, *, status: str = "5.1.1", reason: str = "550 5.1.1 The email account that you "
               "tried to reach does not exist", at: int | None = None) -> None:
        with self._lock:
            self._add("bounces", email, at, status=status, reason=reason)

    def spam_report(self, email: str, *, ip: str = "10.63.202.100", at: int | None = None) -> None:
        with self._lock:
            self._add("spam_reports", email, at, ip=ip)

    def block(self, email: str, *, reason: str = "421 4.7.0 Try again later", at: int | None = None) -> None:
        with self._lock:
            self._add("blocks", email, at, reason=reason, status="4.7.0")

    def invalid_email(self, email: str, *, at: int | None = None) -> None:
        with self._lock:
            self._add("invalid_emails", email, at, reason="Mail domain mentioned in email address is unknown")

    def _add(self, list_name: str, email: str, at: int | None, **extra: Any) -> None:
        self.lists[list_name].setdefault(email.lower(), {"email": email.lower(), "created": int(self.moment(at)),
                                                         **extra})

    # -- what tests look at ----------------------------------------------------------------------

    # Locked, since an end-to-end test polls these while the server thread writes.
    def globally_suppressed(self) -> set[str]:
        with self._lock:
            return set(self.lists["unsubscribes"])

    def in_group(self, group_id: int) -> set[str]:
        with self._lock:
            return set(self.group_suppressions.get(group_id, {}))

    # -- the HTTP side -----------------------------------------------------------------------------

    def answered(self, response: httpx.Response) -> None:
        if self.rate_limit is None or response.status_code == 429:
            return
        response.headers["X-RateLimit-Limit"] = str(self.rate_limit)
        response.headers["X-RateLimit-Remaining"] = str(max(0, self.rate_limit - len(self.window)))
        recent = self.window.recent
        reset = (recent[0] + self.rate_period) if recent else self.clock() + self.rate_period
        response.headers["X-RateLimit-Reset"] = str(int(reset) + 1)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        received = self.receive(request)
        authorization = request.headers.get("authorization")
        if not authorization:
            self._raise(401, "authorization required", None)
        if authorization != f"Bearer {self.api_key}":
            self._raise(401, "The provided authorization grant is invalid, expired, or revoked", None)
        fault = self.injected(received)
        if fault:
            if fault.status == 429:
                self._too_many(fault.headers)
            self._raise(fault.status, fault.message, None, fault.headers)
        if not self.window.hit():
            self._too_many()
        answer = self.dispatch(received)
        if answer is None:
            self._raise(404, "resource not found", None)
        return answer

    def bad_json(self) -> httpx.Response:
        return httpx.Response(400, json={"errors": [{"field": None, "message": "invalid JSON body"}]})

    def routes(self):
        return [
            ("GET", r"/v3/suppression/(unsubscribes|bounces|spam_reports|blocks|invalid_emails)", self._list),
            ("GET", r"/v3/asm/groups", self._groups),
            ("GET", r"/v3/asm/suppressions", self._all_group_suppressions),
            ("POST", r"/v3/asm/suppressions/global", self._add_global),
            ("GET", r"/v3/asm/suppressions/global/([^/]+)", self._get_global),
            ("DELETE", r"/v3/asm/suppressions/global/([^/]+)", self._delete_global),
            ("POST", r"/v3/asm/groups/(\d+)/suppressions", self._add_to_group),
            ("GET", r"/v3/asm/groups/(\d+)/suppressions", self._group_suppressions),
            ("POST", r"/v3/asm/groups/(\d+)/suppressions/search", self._search_group),
            ("DELETE", r"/v3/asm/groups/(\d+)/suppressions/([^/]+)", self._delete_from_group),
        ]

    # -- answers and errors ------------------------------------------------------------------------

    def _raise(self, status: int, message: str, field_name: str | None, headers: dict | None = None) -> None:
        raise Reply(httpx.Response(status, json={"errors": [{"field": field_name, "message": message}]},
                                    headers=headers or {}))

    def _too_many(self, headers: dict | None = None) -> None:
        reset = self.now() + max(1, int(self.rate_period))
        raise Reply(httpx.Response(429, json={"errors": [{"field": None, "message": "too many requests"}]},
                                    headers={"X-RateLimit-Limit": str(self.rate_limit or 600),
                                             "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset),
                                             **(headers or {})}))

    def _recipients(self, body: Any) -> list[str]:
        """The recipient_emails of a write, checked as SendGrid would refuse them (whole request) [INFERRED]."""
        if not isinstance(body, dict) or not isinstance(body.get("recipient_emails"), list):
            self._raise(400, "recipient_emails is required and must be an array", "recipient_emails")
        emails = body["recipient_emails"]
        if len(emails) > self.batch_limit:
            self._raise(400, f"too many recipient emails: at most {self.batch_limit} are allowed per request",
                        "recipient_emails")
        for index, email in enumerate(emails):
            if not isinstance(email, str) or not _EMAIL.match(email) or email.lower() in self.invalid_addresses:
                self._raise(400, f"email address is invalid: {email}", f"recipient_emails[{index}]")
        return [e.lower() for e in emails]

    # -- handlers ---------------------------------------------------------------------------------------

    def _list(self, params, body, list_name):
        try:
            limit = int(params.get("limit", self.page_limit))
            offset = int(params.get("offset", 0))
            start = int(params["start_time"]) if "start_time" in params else None
            end = int(params["end_time"]) if "end_time" in params else None
        except ValueError:
            self._raise(400, "start_time, end_time, limit and offset must be integers", None)
        if not 1 <= limit <= self.page_limit:
            self._raise(400, f"limit must be between 1 and {self.page_limit}", "limit")
        items = [r for r in self.lists[list_name].values()
                 if (start is None or r["created"] >= start) and (end is None or r["created"] <= end)]
        items.sort(key=lambda r: (-r["created"], r["email"]))  # [INFERRED] newest first
        return httpx.Response(200, json=items[offset:offset + limit])

    def _groups(self, params, body):
        answer = []
        for gid, group in sorted(self.groups.items()):
            answer.append({**group, "unsubscribes": len(self.group_suppressions.get(gid, {}))})
        return httpx.Response(200, json=answer)

    def _all_group_suppressions(self, params, body):
        answer = [{"email": email, "group_id": gid, "group_name": self.groups[gid]["name"], "created_at": created}
                  for gid, members in sorted(self.group_suppressions.items()) if gid in self.groups
                  for email, created in sorted(members.items())]
        return httpx.Response(200, json=answer)

    def _add_global(self, params, body):
        emails = self._recipients(body)
        for email in emails:
            self._add("unsubscribes", email, None)
        return httpx.Response(201, json={"recipient_emails": emails})

    def _get_global(self, params, body, email):
        email = email.lower()
        return httpx.Response(200, json={"recipient_email": email} if email in self.lists["unsubscribes"] else {})

    def _delete_global(self, params, body, email):
        self.lists["unsubscribes"].pop(email.lower(), None)
        return httpx.Response(204)

    def _add_to_group(self, params, body, group_id):
        emails = self._recipients(body)
        gid = int(group_id)
        for email in emails:
            if gid in self.groups:
                self.group_suppressions[gid].setdefault(email, self.now())
            else:
                # Documented: suppressions for a deleted or unknown group go to the global list.
                self._add("unsubscribes", email, None)
        return httpx.Response(201, json={"recipient_emails": emails})

    def _group_suppressions(self, params, body, group_id):
        return httpx.Response(200, json=sorted(self.group_suppressions.get(int(group_id), {})))

    def _search_group(self, params, body, group_id):
        emails = self._recipients(body)
        held = self.group_suppressions.get(int(group_id), {})
        return httpx.Response(200, json=[e for e in emails if e in held])

    def _delete_from_group(self, params, body, group_id, email):
        self.group_suppressions.get(int(group_id), {}).pop(email.lower(), None)
        return httpx.Response(204)
