"""A fake Mailgun, written by hand from ../shared/specs/esp.md and Mailgun's API reference.

Per sending domain: unsubscribes (records with tags, `*` = all mail), bounces and
complaints; lists paged by `page=next&address=<divider>` with full `paging` URLs and a
1000 limit; JSON batch adds of up to 1000 records that merge tags into existing records;
per-tag deletes; the domain lookup; HTTP Basic `api:<key>`; `{"message": ...}` on every
error. What the reference leaves open (message texts, whether a batch add with one bad
address is refused whole, rate-limit headers) is a constructor argument or noted below.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

import httpx

from .common import FakeVendor, RateWindow, Reply

LISTS = ("unsubscribes", "bounces", "complaints")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class FakeMailgun(FakeVendor):
    """A stateful Mailgun account behind `handle(request)`."""

    def __init__(self, api_key: str = "key-0123456789abcdef", *, domains: tuple[str, ...] = ("mg.example.com",),
                 max_limit: int = 1000, max_batch: int = 1000, rate_limit: int | None = None,
                 retry_after: str | None = None, refuse: set[str] | None = None,
                 clock: Callable[[], float] = time.time):
        super().__init__(clock)
        self.api_key = api_key
        self.domains = {d: {name: {} for name in LISTS} for d in domains}
        self.max_limit = max_limit
        self.max_batch = max_batch
        self.rate_limit = rate_limit          # requests per rolling second, None = unlimited
        self.retry_after = retry_after        # Retry-After on a 429, when set
        self.refuse = {a.lower() for a in refuse or ()}  # addresses Mailgun refuses although they look valid
        self.window = RateWindow(lambda: self.rate_limit, 1.0, lambda: self.clock())

    # -- things that happen "at Mailgun" --------------------------------------------------------------------

    def _list(self, name: str, domain: str | None) -> dict[str, dict]:
        return self.domains[domain or next(iter(self.domains))][name]

    def recipient_unsubscribes(self, address: str, tags: list[str] | None = None, *, at: float | None = None,
                               domain: str | None = None) -> None:
        """A recipient used an unsubscribe link (all mail when no tags are given)."""
        with self._lock:
            self._merge_unsubscribe(self._list("unsubscribes", domain), address, tags or ["*"], at)

    def bounce(self, address: str, code: str = "550", error: str = "5.1.1 The email account does not exist",
               *, at: float | None = None, domain: str | None = None) -> None:
        with self._lock:
            self._list("bounces", domain)[address.lower()] = {
                "address": address.lower(), "code": code, "error": error, "created_at": self.moment(at)}

    def complaint(self, address: str, *, at: float | None = None, domain: str | None = None) -> None:
        with self._lock:
            self._list("complaints", domain)[address.lower()] = {"address": address.lower(),
                                                                 "created_at": self.moment(at)}

    # -- what tests look at -----------------------------------------------------------------------------------

    def tags_of(self, address: str, domain: str | None = None) -> list[str]:
        record = self._list("unsubscribes", domain).get(address.lower())
        return sorted(record["tags"]) if record else []

    # -- the HTTP side ------------------------------------------------------------------------------------------

    def _handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        params = dict(request.url.params.multi_items())
        body = self._body(request)
        received = self.receive(request, body=body, headers=False)
        expected = "Basic " + base64.b64encode(f"api:{self.api_key}".encode()).decode()
        if request.headers.get("authorization") != expected:
            # [DOC] a 401 with a `message` (Mailgun has been seen to answer "Forbidden").
            self._raise(401, "Forbidden")
        fault = self.injected(received)
        if fault:
            return self.error(fault.status, fault.message, fault)
        if not self.window.hit():
            raise Reply(httpx.Response(429, json={"message": "Too many requests"},
                                       headers={"Retry-After": self.retry_after} if self.retry_after else {}))
        base = f"{request.url.scheme}://{request.url.netloc.decode()}"
        match = re.fullmatch(r"/v4/domains/([^/]+)", path)
        if match and request.method == "GET":
            return self._domain(unquote(match.group(1)))
        match = re.fullmatch(r"/v3/([^/]+)/(unsubscribes|bounces|complaints)(?:/([^/]+))?", path)
        if not match:
            self._raise(404, "Not Found")
        domain, list_name, address = unquote(match.group(1)), match.group(2), match.group(3)
        if domain not in self.domains:
            self._raise(404, f"Domain not found: {domain}")
        records = self.domains[domain][list_name]
        if address is None and request.method == "GET":
            return self._page(base, domain, list_name, records, params)
        if address is None and request.method == "POST":
            return self._add(list_name, records, body)
        if address is not None and request.method == "GET":
            record = records.get(unquote(address).lower())
            if record is None:
                self._raise(404, f"Address not found in {list_name} table")
            return httpx.Response(200, json=self._render(list_name, record))
        if address is not None and request.method == "DELETE":
            return self._delete(list_name, records, unquote(address).lower(), params.get("tag"))
        self._raise(405, "Method not allowed")

    @staticmethod
    def _body(request: httpx.Request) -> Any:
        if not request.content:
            return None
        content_type = request.headers.get("content-type", "")
        if "application/json" in content_type:
            try:
                return json.loads(request.content)
            except ValueError:
                raise Reply(httpx.Response(400, json={"message": "Invalid JSON"})) from None
        # A single record sent as a form, the other documented way to add.
        return dict(parse_qsl(request.content.decode()))

    def _raise(self, status: int, message: str) -> None:
        raise Reply(httpx.Response(status, json={"message": message}))

    def _domain(self, name: str) -> httpx.Response:
        if name not in self.domains:
            self._raise(404, "Domain not found")
        return httpx.Response(200, json={"domain": {"name": name, "state": "active", "type": "custom",
                                                    "created_at": "Tue, 01 Jan 2024 00:00:00 GMT"},
                                         "receiving_dns_records": [], "sending_dns_records": []})

    def _page(self, base: str, domain: str, list_name: str, records: dict, params: dict) -> httpx.Response:
        try:
            limit = int(params.get("limit", 100))
        except ValueError:
            self._raise(400, "Invalid limit")
        if not 1 <= limit <= self.max_limit:
            self._raise(400, f"Limit must be between 1 and {self.max_limit}")
        ordered = sorted(records)
        term = params.get("term")
        if term:
            ordered = [a for a in ordered if a.startswith(term.lower())]
        page, divider = params.get("page", ""), params.get("address", "")
        if page == "next":
            chosen = [a for a in ordered if a > divider][:limit]
        elif page == "previous":
            chosen = [a for a in ordered if a < divider][-limit:]
        elif page == "last":
            chosen = ordered[-limit:]
        else:
            chosen = ordered[:limit]
        url = f"{base}/v3/{domain}/{list_name}"

        def link(**query: str) -> str:
            return f"{url}?{urlencode({**query, 'limit': limit})}"

        # An empty page keeps the divider, so following `next` from the end stays at the end.
        last_seen = chosen[-1] if chosen else divider
        first_seen = chosen[0] if chosen else divider
        return httpx.Response(200, json={
            "items": [self._render(list_name, records[a]) for a in chosen],
            "paging": {"first": link(page="first", address=""), "last": link(page="last", address=""),
                       "next": link(page="next", address=last_seen),
                       "previous": link(page="previous", address=first_seen)}})

    def _add(self, list_name: str, records: dict, body: Any) -> httpx.Response:
        items = body if isinstance(body, list) else [body] if isinstance(body, dict) else None
        if not items:
            self._raise(400, "Expected a JSON array of records or one record as form data")
        if len(items) > self.max_batch:
            self._raise(400, f"Too many records in one request; the limit is {self.max_batch}")
        # [INFERRED] a batch with a bad record is refused whole, naming the address.
        for item in items:
            address = str(item.get("address", "")).strip().lower() if isinstance(item, dict) else ""
            if not _EMAIL.match(address) or address in self.refuse:
                self._raise(400, f"'address' parameter is not a valid email address: {address!r}")
        for item in items:
            address = item["address"].strip().lower()
            at = self._time(item.get("created_at"))
            if list_name == "unsubscribes":
                if isinstance(body, list):
                    # [SEEN] in a JSON array only `tags` counts; a singular `tag` is ignored (-> "*").
                    tags = item.get("tags") or ["*"]
                else:
                    tags = [item.get("tag") or "*"]
                self._merge_unsubscribe(records, address, [str(t) for t in tags], at)
            elif list_name == "bounces":
                records[address] = {"address": address, "code": str(item.get("code") or "550"),
                                    "error": item.get("error") or "", "created_at": self.moment(at)}
            else:
                records[address] = {"address": address, "created_at": self.moment(at)}
        return httpx.Response(200, json={"message": f"{len(items)} addresses have been added to the "
                                                    f"{list_name} table"})

    def _merge_unsubscribe(self, records: dict, address: str, tags: list[str], at: float | None) -> None:
        record = records.setdefault(address.lower(), {"address": address.lower(), "tags": [],
                                                      "created_at": self.moment(at)})
        for tag in tags:
            if tag.lower() not in {t.lower() for t in record["tags"]}:
                record["tags"].append(tag)
        record["created_at"] = self.moment(at)

    def _delete(self, list_name: str, records: dict, address: str, tag: str | None) -> httpx.Response:
        record = records.get(address)
        if record is None:
            self._raise(404, f"Address not found in {list_name} table")
        if list_name == "unsubscribes" and tag is not None:
            kept = [t for t in record["tags"] if t.lower() != tag.lower()]
            if len(kept) == len(record["tags"]):
                self._raise(404, "Unsubscribe event for this tag does not exist")
            if kept:
                record["tags"] = kept
            else:
                del records[address]
            return httpx.Response(200, json={"message": "Unsubscribe event has been removed", "address": address})
        del records[address]
        return httpx.Response(200, json={"message": f"{list_name.rstrip('s').capitalize()} event has been "
                                                    "removed", "address": address})

    def _time(self, text: Any) -> float | None:
        if not text:
            return None
        try:
            return parsedate_to_datetime(str(text)).timestamp()
        except (TypeError, ValueError, IndexError):
            self._raise(400, f"Invalid created_at {text!r}: expected RFC 2822")

    @staticmethod
    def _render(list_name: str, record: dict) -> dict:
        rendered = {k: v for k, v in record.items() if k != "created_at"}
        moment = datetime.fromtimestamp(record["created_at"], timezone.utc)
        rendered["created_at"] = format_datetime(moment).replace("+0000", "UTC").replace("-0000", "UTC")
        if list_name == "unsubscribes":
            rendered["tags"] = list(record["tags"])
        return rendered
