"""A fake Klaviyo account, written by hand from the facts in adapters/klaviyo.py's docstring (revision 2026-10-15).

Profiles keyed by lower-cased email with `subscriptions.email.marketing` (`suppression`
and `list_suppressions`, each [{reason, timestamp}]); `GET /api/profiles` with
`additional-fields[profile]=subscriptions`, `filter=greater-than(<suppression field>,<time>)`
or `equals(email,"...")`, `sort`, cursor paging through `links.next`; `GET /api/lists`;
bulk suppress, unsuppress (USER_SUPPRESSED only) and list-unsubscribe jobs of up to 100
addresses, applied at once; the `Klaviyo-API-Key` header and the required `revision`
header; JSON:API errors; burst and steady windows with `RateLimit-*` headers on every
non-429 answer. [INFERRED] (as in the adapter): the filter forms, the page maximum (100),
the error texts, Retry-After on a 429 (sent when `retry_after` is set), and that an API
list unsubscribe leaves a USER_SUPPRESSED list suppression.
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

import httpx

from .common import FakeVendor, RateWindow, Reply

REVISION = "2026-10-15"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_FILTER = re.compile(r'^(greater-than)\((subscriptions\.email\.marketing\.(?:suppression|list_suppressions)\.timestamp),'
                     r'([^)]+)\)$|^equals\(email,"((?:[^"\\]|\\.)*)"\)$')
FIELDS = {"subscriptions.email.marketing.suppression.timestamp": "suppression",
          "subscriptions.email.marketing.list_suppressions.timestamp": "list_suppressions"}


def _stamp(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).isoformat(timespec="seconds")


class FakeKlaviyo(FakeVendor):
    """A stateful Klaviyo account behind `handle(request)`."""

    def __init__(self, api_key: str = "pk_test_0123456789abcdef", *, lists: dict[str, str] | None = None,
                 max_emails: int = 100, max_page: int = 100, burst: int | None = None, steady: int = 750,
                 retry_after: str | None = None, clock: Callable[[], float] = time.time):
        super().__init__(clock)
        self.api_key = api_key
        self.lists = dict(lists if lists is not None else {"Y6nRLr": "Newsletter", "QxW2Zp": "Product news"})
        self.max_emails = max_emails
        self.max_page = max_page
        self.burst, self.steady, self.retry_after = burst, steady, retry_after
        self._burst = RateWindow(lambda: self.burst, 1.0, lambda: self.clock())
        self._steady = RateWindow(lambda: self.steady, 60.0, lambda: self.clock())
        self.profiles: dict[str, dict] = {}  # email -> {id, email, suppression: [...], list_suppressions: [...]}
        self.jobs: list[tuple[str, list[str]]] = []  # (job type, addresses) of every accepted job

    # -- things that happen "at Klaviyo" -------------------------------------------------------------

    def _profile(self, email: str) -> dict:
        email = email.strip().lower()
        return self.profiles.setdefault(email, {"id": uuid.uuid4().hex[:26].upper(), "email": email,
                                                "suppression": [], "list_suppressions": []})

    def suppress(self, email: str, reason: str = "UNSUBSCRIBE", *, at: float | None = None) -> None:
        """Klaviyo suppresses a profile (an unsubscribe link, a bounce, a complaint, a user in the app)."""
        with self._lock:
            profile = self._profile(email)
            if not any(s["reason"] == reason for s in profile["suppression"]):
                profile["suppression"].append({"reason": reason, "timestamp": _stamp(self.moment(at))})

    def leave_list(self, email: str, list_id: str, reason: str = "UNSUBSCRIBE", *, at: float | None = None) -> None:
        """The recipient unsubscribes from one list."""
        with self._lock:
            profile = self._profile(email)
            if not any(s["list_id"] == list_id for s in profile["list_suppressions"]):
                profile["list_suppressions"].append({"list_id": list_id, "reason": reason,
                                                     "timestamp": _stamp(self.moment(at))})

    # -- what tests look at --------------------------------------------------------------------------

    def reasons_of(self, email: str) -> set[str]:
        with self._lock:
            return {s["reason"] for s in self.profiles.get(email.lower(), {}).get("suppression", [])}

    def lists_of(self, email: str) -> set[str]:
        with self._lock:
            return {s["list_id"] for s in self.profiles.get(email.lower(), {}).get("list_suppressions", [])}

    # -- the HTTP side -------------------------------------------------------------------------------

    def _handle(self, request: httpx.Request) -> httpx.Response:
        received = self.receive(request)
        if request.headers.get("authorization") != f"Klaviyo-API-Key {self.api_key}":
            self.refuse(401, "Incorrect authentication credentials.", "not_authenticated")
        if not request.headers.get("revision"):
            self.refuse(400, "Missing revision header.", "missing_revision")
        fault = self.injected(received)
        if fault:
            return self.error(fault.status, fault.message, fault)
        if not self._burst.hit() or not self._steady.hit():
            raise Reply(httpx.Response(429, json=self._errors(429, "Request was throttled.", "throttled"),
                                       headers={"Retry-After": self.retry_after} if self.retry_after else {}))
        answer = self.dispatch(received)
        if answer is None:
            self.refuse(404, f"No route for {request.method} {received.path}", "not_found")
        return answer

    def answered(self, response: httpx.Response) -> None:
        if response.status_code != 429:
            used = len(self._steady)
            response.headers["RateLimit-Limit"] = str(self.steady)
            response.headers["RateLimit-Remaining"] = str(max(0, self.steady - used))
            recent = self._steady.recent
            response.headers["RateLimit-Reset"] = str(int(recent[0] + 60 - self.clock()) if recent else 60)

    def routes(self):
        return [
            ("GET", r"/api/profiles/?", self._get_profiles),
            ("GET", r"/api/lists/?", self._get_lists),
            ("POST", r"/api/profile-suppression-bulk-create-jobs/?", self._suppress_job),
            ("POST", r"/api/profile-suppression-bulk-delete-jobs/?", self._unsuppress_job),
            ("POST", r"/api/profile-subscription-bulk-delete-jobs/?", self._unsubscribe_job),
        ]

    @staticmethod
    def _errors(status: int, detail: str, code: str) -> dict:
        return {"errors": [{"id": str(uuid.uuid4()), "status": status, "code": code, "title": detail,
                            "detail": detail, "source": {"pointer": "/data"}}]}

    def error(self, status: int, message: str, fault=None) -> httpx.Response:
        return httpx.Response(status, json=self._errors(status, message, "error"),
                              headers=fault.headers if fault else {})

    def refuse(self, status: int, message: str, code: str = "invalid") -> None:
        raise Reply(httpx.Response(status, json=self._errors(status, message, code)))

    # -- handlers ------------------------------------------------------------------------------------

    def _page(self, path: str, params: dict, items: list[dict]) -> httpx.Response:
        size = int(params.get("page[size]", "20"))
        if not 1 <= size <= self.max_page:
            self.refuse(400, f"page[size] must be between 1 and {self.max_page}.")
        start = int(base64.b64decode(params["page[cursor]"]).decode()) if params.get("page[cursor]") else 0
        links: dict[str, Any] = {"self": path, "next": None, "prev": None}
        if start + size < len(items):
            cursor = base64.b64encode(str(start + size).encode()).decode()
            links["next"] = "https://a.klaviyo.com" + path + "?" + urlencode(
                {**{k: v for k, v in params.items() if k != "page[cursor]"}, "page[cursor]": cursor})
        return httpx.Response(200, json={"data": items[start:start + size], "links": links})

    def _get_profiles(self, params, body):
        match = _FILTER.match(params.get("filter", ""))
        if not match:
            self.refuse(400, f"Invalid filter {params.get('filter')!r}.")
        if match.group(4) is not None:
            wanted = match.group(4).replace('\\"', '"').replace("\\\\", "\\").lower()
            rows = [p for p in self.profiles.values() if p["email"] == wanted]
        else:
            kind = FIELDS[match.group(2)]
            since = datetime.fromisoformat(match.group(3).replace("Z", "+00:00"))

            def latest(profile: dict) -> datetime | None:
                times = [datetime.fromisoformat(s["timestamp"]) for s in profile[kind]]
                return max(times) if times else None

            rows = sorted((p for p in self.profiles.values() if (latest(p) or since) > since),
                          key=lambda p: (latest(p), p["email"]))
        with_subscriptions = "subscriptions" in params.get("additional-fields[profile]", "")
        items = [{"type": "profile", "id": p["id"], "attributes": {
            "email": p["email"], **({"subscriptions": {"email": {"marketing": {
                "can_receive_email_marketing": not p["suppression"],
                "suppression": [dict(s) for s in p["suppression"]],
                "list_suppressions": [dict(s) for s in p["list_suppressions"]]}}}} if with_subscriptions else {})}}
            for p in rows]
        return self._page("/api/profiles", {**params, "page[size]": params.get("page[size]", "20")}, items)

    def _get_lists(self, params, body):
        items = [{"type": "list", "id": i, "attributes": {"name": n}} for i, n in self.lists.items()]
        return self._page("/api/lists", {**params, "page[size]": "10"}, items)

    def _emails(self, body: Any, job_type: str) -> list[str]:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict) or data.get("type") != job_type:
            self.refuse(400, f"data.type must be {job_type!r}.")
        profiles = ((data.get("attributes") or {}).get("profiles") or {}).get("data")
        if not isinstance(profiles, list) or not profiles:
            self.refuse(400, "data.attributes.profiles.data is required.")
        if len(profiles) > self.max_emails:
            self.refuse(400, f"Too many profiles: at most {self.max_emails} email addresses are allowed per request.")
        emails = []
        for index, item in enumerate(profiles):
            email = str(((item or {}).get("attributes") or {}).get("email") or "")
            if not _EMAIL.match(email):
                self.refuse(400, f"Invalid email address {email!r} at data.attributes.profiles.data[{index}].")
            emails.append(email.lower())
        return emails

    def _accepted(self, job_type: str, emails: list[str]) -> httpx.Response:
        self.jobs.append((job_type, emails))
        now = _stamp(self.clock())
        return httpx.Response(202, json={"data": {"type": job_type, "id": uuid.uuid4().hex, "attributes": {
            "status": "queued", "created_at": now, "total_count": len(emails), "completed_count": 0,
            "skipped_count": 0, "completed_at": None}}})

    def _suppress_job(self, params, body):
        emails = self._emails(body, "profile-suppression-bulk-create-job")
        for email in emails:
            profile = self._profile(email)
            if not profile["suppression"]:  # one held already stays as it is (the job skips it)
                profile["suppression"].append({"reason": "USER_SUPPRESSED", "timestamp": _stamp(self.clock())})
        return self._accepted("profile-suppression-bulk-create-job", emails)

    def _unsuppress_job(self, params, body):
        emails = self._emails(body, "profile-suppression-bulk-delete-job")
        for email in emails:
            if email in self.profiles:
                profile = self.profiles[email]
                profile["suppression"] = [s for s in profile["suppression"] if s["reason"] != "USER_SUPPRESSED"]
        return self._accepted("profile-suppression-bulk-delete-job", emails)

    def _unsubscribe_job(self, params, body):
        emails = self._emails(body, "profile-subscription-bulk-delete-job")
        list_id = (((body["data"].get("relationships") or {}).get("list") or {}).get("data") or {}).get("id")
        if list_id not in self.lists:
            self.refuse(404, f"List {list_id!r} does not exist.", "not_found")
        for email in emails:
            profile = self._profile(email)
            if not any(s["list_id"] == list_id for s in profile["list_suppressions"]):
                profile["list_suppressions"].append({"list_id": list_id, "reason": "USER_SUPPRESSED",
                                                     "timestamp": _stamp(self.clock())})
        self.jobs.append(("profile-subscription-bulk-delete-job", emails))
        return httpx.Response(202)
