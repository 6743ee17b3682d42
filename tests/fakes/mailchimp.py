"""A fake Mailchimp Marketing API 3.0 account, written by hand from ../shared/specs/esp.md and Mailchimp's reference.

Audiences with members keyed by subscriber hash (MD5 of the lower-cased address);
member lists filtered by status and last_changed with count (<= 1000) / offset
paging; batch subscribe/unsubscribe (<= 500 members, 200 with per-member errors,
creating unknown members); abuse reports; HTTP Basic auth with any user name;
problem-detail JSON on every non-2xx answer; 429 without rate-limit headers
(Mailchimp sends none). Choices not documented ([INFERRED]) are constructor
arguments or noted where made.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote

import httpx

from .common import Fault, FakeVendor, Reply

STATUSES = ("subscribed", "unsubscribed", "cleaned", "pending", "transactional", "archived")
ERROR_DOCS = "https://mailchimp.com/developer/marketing/docs/errors/"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def member_hash(email: str) -> str:
    return hashlib.md5(email.lower().encode("utf-8")).hexdigest()


@dataclass
class MailchimpFault(Fault):
    """An injected answer with Mailchimp's problem-detail title and detail."""

    title: str = "Internal Server Error"
    detail: str = "injected fault"


class FakeMailchimp(FakeVendor):
    """A stateful Mailchimp account behind `handle(request)`; paths are relative to .../3.0."""

    fault_type = MailchimpFault

    def __init__(self, api_key: str = "0123456789abcdef0123456789abcdef-us21", *,
                 audiences: dict[str, str] | None = None, batch_limit: int = 500, page_limit: int = 1000,
                 invalid_addresses: set[str] | None = None, clock: Callable[[], float] = time.time):
        super().__init__(clock)
        self.api_key = api_key
        self.audiences = {list_id: {"id": list_id, "name": name}
                          for list_id, name in (audiences or {"a1b2c3d4e5": "Customers"}).items()}
        self.members: dict[str, dict[str, dict]] = {list_id: {} for list_id in self.audiences}
        self.abuse_reports: dict[str, list[dict]] = {list_id: [] for list_id in self.audiences}
        self.batch_limit = batch_limit
        self.page_limit = page_limit
        self.invalid_addresses = {a.lower() for a in invalid_addresses or ()}
        # Every API write that would (re)subscribe, and every member deleted through the API.
        self.subscribe_writes: list[tuple[str, str]] = []
        self.deletes: list[str] = []
        self.created_by_api: list[str] = []

    # -- things that happen "at Mailchimp" -----------------------------------------------------------

    def stamp(self, at: float | None = None) -> str:
        moment = datetime.fromtimestamp(self.clock() if at is None else at, timezone.utc)
        return moment.replace(microsecond=0).isoformat()

    def add_member(self, email: str, status: str = "subscribed", *, list_id: str | None = None,
                   at: float | None = None) -> None:
        """A member joins the audience (by a sign-up form or an import at Mailchimp, not by this daemon)."""
        with self._lock:
            members = self.members[list_id or self._first()]
            members[member_hash(email)] = {"id": member_hash(email), "email_address": email.lower(),
                                           "status": status, "last_changed": self.stamp(at),
                                           "unsubscribe_reason": None}

    def recipient_unsubscribes(self, email: str, *, list_id: str | None = None, at: float | None = None,
                               reason: str = "No longer interested") -> None:
        with self._lock:
            member = self._member_or_new(email, list_id, at)
            member.update(status="unsubscribed", last_changed=self.stamp(at), unsubscribe_reason=reason)

    def recipient_resubscribes(self, email: str, *, list_id: str | None = None, at: float | None = None,
                               ip: str = "203.0.113.7") -> None:
        """The person signs up again (a form, or the confirmation email of a `pending` status): Mailchimp
        records when and from which IP they confirmed their opt-in."""
        with self._lock:
            member = self._member_or_new(email, list_id, at)
            member.update(status="subscribed", last_changed=self.stamp(at), timestamp_opt=self.stamp(at), ip_opt=ip,
                          unique_email_id=f"u{member_hash(email)[:10]}")

    def admin_resubscribes(self, email: str, *, list_id: str | None = None, at: float | None = None) -> None:
        """A user of the account sets the member back to subscribed by hand: no opt-in confirmation is
        recorded (the member keeps whatever timestamp_opt its first sign-up had)."""
        with self._lock:
            member = self._member_or_new(email, list_id, at)
            member.update(status="subscribed", last_changed=self.stamp(at), ip_opt="",
                          unique_email_id=f"u{member_hash(email)[:10]}")

    def clean(self, email: str, *, list_id: str | None = None, at: float | None = None) -> None:
        """Mailchimp cleans a member after a hard bounce."""
        with self._lock:
            member = self._member_or_new(email, list_id, at)
            member.update(status="cleaned", last_changed=self.stamp(at))

    def abuse_report(self, email: str, *, list_id: str | None = None, at: float | None = None) -> None:
        """A recipient marks a campaign as spam: an abuse report, and Mailchimp unsubscribes the member."""
        with self._lock:
            list_id = list_id or self._first()
            member = self._member_or_new(email, list_id, at)
            member.update(status="unsubscribed", last_changed=self.stamp(at), unsubscribe_reason="Abuse report")
            self.abuse_reports[list_id].append({"id": len(self.abuse_reports[list_id]) + 1,
                                                "campaign_id": "42694e9e57", "list_id": list_id,
                                                "email_id": member_hash(email), "email_address": email.lower(),
                                                "date": self.stamp(at)})

    def _first(self) -> str:
        return next(iter(self.audiences))

    def _member_or_new(self, email: str, list_id: str | None, at: float | None) -> dict:
        members = self.members[list_id or self._first()]
        if member_hash(email) not in members:
            self.add_member(email, list_id=list_id, at=at)
        return members[member_hash(email)]

    # -- what tests look at ----------------------------------------------------------------------

    # Locked, since an end-to-end test polls these while the server thread writes.
    def status_of(self, email: str, list_id: str | None = None) -> str | None:
        with self._lock:
            member = self.members[list_id or self._first()].get(member_hash(email))
            return member["status"] if member else None

    # -- the HTTP side -----------------------------------------------------------------------------

    def _handle(self, request: httpx.Request) -> httpx.Response:
        path = unquote(request.url.path)
        if path.startswith("/3.0/"):
            path = path[len("/3.0"):]
        received = self.receive(request, path)
        if not self._authorised(request.headers.get("authorization", "")):
            self._raise(401, "API Key Invalid", "Your API key may be invalid, or you've attempted to access the "
                        "wrong datacenter.")
        fault = self.injected(received)
        if fault:
            if fault.status == 429:
                self._raise(429, "Too Many Requests", "You have exceeded the limit of 10 simultaneous "
                            "connections.")
            self._raise(fault.status, fault.title, fault.detail)
        answer = self.dispatch(received)
        if answer is None:
            self._raise(404, "Resource Not Found", "The requested resource could not be found.")
        return answer

    def bad_json(self) -> httpx.Response:
        return self._problem(400, "JSON Parse Error", "We encountered an unspecified JSON parsing error.")

    def _authorised(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            _, _, key = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return False
        return key == self.api_key

    def routes(self):
        return [
            ("GET", r"/ping", self._ping),
            ("GET", r"/lists", self._lists),
            ("GET", r"/lists/([^/]+)", self._list),
            ("POST", r"/lists/([^/]+)", self._batch),
            ("GET", r"/lists/([^/]+)/members", self._members),
            ("GET", r"/lists/([^/]+)/members/([0-9a-f]{32})", self._member),
            ("PUT", r"/lists/([^/]+)/members/([0-9a-f]{32})", self._put_member),
            ("PATCH", r"/lists/([^/]+)/members/([0-9a-f]{32})", self._patch_member),
            ("DELETE", r"/lists/([^/]+)/members/([0-9a-f]{32})", self._delete_member),
            ("GET", r"/lists/([^/]+)/abuse-reports", self._abuse_reports),
        ]

    # -- answers and errors ------------------------------------------------------------------------

    def _raise(self, status: int, title: str, detail: str, errors: list | None = None) -> None:
        raise Reply(self._problem(status, title, detail, errors))

    @staticmethod
    def _problem(status: int, title: str, detail: str, errors: list | None = None) -> httpx.Response:
        body: dict[str, Any] = {"type": ERROR_DOCS, "title": title, "status": status, "detail": detail,
                                "instance": str(uuid.uuid4())}
        if errors:
            body["errors"] = errors
        return httpx.Response(status, content=json.dumps(body).encode(),
                              headers={"Content-Type": "application/problem+json"})

    def _audience(self, list_id: str) -> dict[str, dict]:
        if list_id not in self.audiences:
            self._raise(404, "Resource Not Found", "The requested resource could not be found.")
        return self.members[list_id]

    def _paging(self, params: dict) -> tuple[int, int]:
        try:
            count, offset = int(params.get("count", 10)), int(params.get("offset", 0))
        except ValueError:
            self._raise(400, "Invalid Resource", "count and offset must be integers")
        if not 1 <= count <= self.page_limit:
            self._raise(400, "Invalid Resource", f"count must be between 1 and {self.page_limit}")
        return count, offset

    def _time_param(self, params: dict, name: str) -> str | None:
        if name not in params:
            return None
        try:
            moment = datetime.fromisoformat(params[name].replace("Z", "+00:00"))
        except ValueError:
            self._raise(400, "Invalid Resource", f"{name} is not a valid ISO 8601 time")
        return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).astimezone(timezone.utc) \
            .replace(microsecond=0).isoformat()

    # -- handlers ---------------------------------------------------------------------------------------

    def _ping(self, params, body):
        return httpx.Response(200, json={"health_status": "Everything's Chimpy!"})

    def _stats(self, list_id: str) -> dict:
        statuses = [m["status"] for m in self.members[list_id].values()]
        return {"member_count": statuses.count("subscribed"), "unsubscribe_count": statuses.count("unsubscribed"),
                "cleaned_count": statuses.count("cleaned")}

    def _lists(self, params, body):
        count, offset = self._paging(params)
        audiences = [{**a, "stats": self._stats(a["id"])} for a in self.audiences.values()]
        return httpx.Response(200, json={"lists": audiences[offset:offset + count], "total_items": len(audiences)})

    def _list(self, params, body, list_id):
        self._audience(list_id)
        return httpx.Response(200, json={**self.audiences[list_id], "stats": self._stats(list_id)})

    def _members(self, params, body, list_id):
        members = list(self._audience(list_id).values())
        count, offset = self._paging(params)
        status = params.get("status")
        if status is not None and status not in STATUSES:
            self._raise(400, "Invalid Resource", f"status must be one of {', '.join(STATUSES)}")
        since = self._time_param(params, "since_last_changed")
        before = self._time_param(params, "before_last_changed")
        # ISO UTC texts of one format compare as times. [INFERRED] since is exclusive, before inclusive.
        chosen = [m for m in members if (status is None or m["status"] == status)
                  and (since is None or m["last_changed"] > since) and (before is None or m["last_changed"] <= before)]
        if params.get("sort_field") == "last_changed":
            chosen.sort(key=lambda m: (m["last_changed"], m["id"]), reverse=params.get("sort_dir") == "DESC")
        return httpx.Response(200, json={"members": chosen[offset:offset + count], "list_id": list_id,
                                         "total_items": len(chosen)})

    def _member(self, params, body, list_id, member_id):
        member = self._audience(list_id).get(member_id)
        if member is None:
            self._raise(404, "Resource Not Found", "The requested resource could not be found.")
        return httpx.Response(200, json={**member, "list_id": list_id})

    def _write_member(self, list_id: str, email: str, status: str, *, create: bool) -> dict | None:
        """Set one member's status the way every write path does; None when it would not be created."""
        members = self._audience(list_id)
        key = member_hash(email)
        if status in ("subscribed", "pending"):
            self.subscribe_writes.append((email.lower(), status))
        if key not in members:
            if not create:
                return None
            self.created_by_api.append(email.lower())
            members[key] = {"id": key, "email_address": email.lower(), "status": status,
                            "last_changed": self.stamp(), "unsubscribe_reason": None}
            return members[key]
        member = members[key]
        if member["status"] != status:
            member.update(status=status, last_changed=self.stamp())
            if status == "unsubscribed":
                member["unsubscribe_reason"] = "N/A (Unsubscribed by an admin)"  # [INFERRED] the wording
        return member

    def _batch(self, params, body, list_id):
        self._audience(list_id)
        if not isinstance(body, dict) or not isinstance(body.get("members"), list):
            self._raise(400, "Invalid Resource", "The resource submitted could not be validated.",
                        [{"field": "members", "message": "Required field"}])
        if len(body["members"]) > self.batch_limit:
            self._raise(400, "Invalid Resource", f"You may only submit a maximum of {self.batch_limit} members "
                        "per request.", [{"field": "members", "message": f"Maximum of {self.batch_limit} items"}])
        update_existing = bool(body.get("update_existing"))
        new, updated, errors = [], [], []
        for item in body["members"]:
            email = str(item.get("email_address", ""))
            status = item.get("status")
            if status not in STATUSES[:5]:
                errors.append({"email_address": email, "error": f"Invalid status {status!r}",
                               "error_code": "ERROR_GENERIC"})
                continue
            if not _EMAIL.match(email) or email.lower() in self.invalid_addresses:
                errors.append({"email_address": email, "error": f"{email} looks fake or invalid, please enter a "
                               "real email address.", "error_code": "ERROR_GENERIC"})
                continue
            exists = member_hash(email) in self.members[list_id]
            if exists and not update_existing:
                errors.append({"email_address": email, "error": f"{email} is already a list member, do you want "
                               "to update? please provide update_existing:true in the request body",
                               "error_code": "ERROR_CONTACT_EXISTS"})
                continue
            member = self._write_member(list_id, email, status, create=True)
            (updated if exists else new).append({"id": member["id"], "email_address": member["email_address"],
                                                 "status": member["status"]})
        return httpx.Response(200, json={"new_members": new, "updated_members": updated, "errors": errors,
                                         "total_created": len(new), "total_updated": len(updated),
                                         "error_count": len(errors)})

    def _put_member(self, params, body, list_id, member_id):
        body = body or {}
        email = str(body.get("email_address", ""))
        if member_hash(email) != member_id:
            self._raise(400, "Invalid Resource", "The email address does not match the subscriber hash.")
        exists = member_id in self._audience(list_id)
        status = body.get("status") if exists else body.get("status_if_new")
        member = self._write_member(list_id, email, status or "subscribed", create=True)
        return httpx.Response(200, json={**member, "list_id": list_id})

    def _patch_member(self, params, body, list_id, member_id):
        member = self._audience(list_id).get(member_id)
        if member is None:
            self._raise(404, "Resource Not Found", "The requested resource could not be found.")
        if (body or {}).get("status"):
            self._write_member(list_id, member["email_address"], body["status"], create=False)
        return httpx.Response(200, json={**member, "list_id": list_id})

    def _delete_member(self, params, body, list_id, member_id):
        member = self._audience(list_id).pop(member_id, None)
        if member is None:
            self._raise(404, "Resource Not Found", "The requested resource could not be found.")
        self.deletes.append(member["email_address"])
        return httpx.Response(204)

    def _abuse_reports(self, params, body, list_id):
        self._audience(list_id)
        count, offset = self._paging(params)
        reports = self.abuse_reports[list_id]
        return httpx.Response(200, json={"abuse_reports": reports[offset:offset + count], "list_id": list_id,
                                         "total_items": len(reports)})
