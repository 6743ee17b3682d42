"""The contact clean-up part of the `hubspot` adapter: find the contacts of addresses, archive contacts.

Used by `optout-sync cleanup` only (connector/cleanup.py). CRM search allows 4 requests
per second, outside the 10-second burst bucket: it has its own `search` bucket.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from state.errors import TransientError

from .base import chunks
from .http import VendorAnswer, VendorPermanentError
from .kit import HttpAdapter

SEARCH = "/crm/v3/objects/contacts/search"
ARCHIVE = "/crm/v3/objects/contacts/batch/archive"

class SearchHit(VendorAnswer):
    id: str
    properties: dict[str, str | None] = Field(default_factory=dict)


class SearchNext(VendorAnswer):
    after: str


class SearchPaging(VendorAnswer):
    next: SearchNext | None = None


class SearchPage(VendorAnswer):
    results: list[SearchHit]
    paging: SearchPaging | None = None


@dataclass(frozen=True, slots=True)
class ArchiveResult:
    """The outcome of archiving (deleting) one contact."""

    contact_id: str
    ok: bool
    message: str


class HubSpotContacts(HttpAdapter):
    """Contact look-up and archiving through HubSpot's CRM API (a part of `HubSpotAdapter`)."""

    def find_contact_ids(self, addresses: Sequence[str]) -> dict[str, list[str]]:
        """Contact ids per address, through CRM search (`email IN [...]`); addresses without a contact are absent."""
        self.http.new_cycle()
        endpoint = f"POST {SEARCH}"
        found: dict[str, list[str]] = {}
        for chunk in chunks(sorted(set(addresses)), self.settings.search_in_values):
            wanted = set(chunk)

            def fetch(after: str | None, chunk=chunk) -> tuple[list[SearchHit], str | None]:
                body: dict[str, Any] = {
                    "filterGroups": [{"filters": [{"propertyName": "email", "operator": "IN", "values": list(chunk)}]}],
                    "properties": ["email"], "limit": self.settings.search_page_size,
                    "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}]}
                if after:
                    body["after"] = after
                answer = self.parse(self.http.request("POST", SEARCH, endpoint=endpoint, bucket="search", json=body),
                                    SearchPage, endpoint)
                return answer.results, answer.paging.next.after if answer.paging and answer.paging.next else None

            for hits in self.follow(fetch, endpoint):
                for hit in hits:
                    email = (hit.properties.get("email") or "").strip().lower()
                    if email in wanted and hit.id not in found.get(email, []):
                        found.setdefault(email, []).append(hit.id)
        return found

    def archive_contacts(self, contact_ids: Sequence[str]) -> list[ArchiveResult]:
        """Archive (delete) contacts in batches; their per-address opt-outs stay at HubSpot."""
        self.http.new_cycle()
        endpoint = f"POST {ARCHIVE}"
        results: list[ArchiveResult] = []
        pending = list(contact_ids)
        size = self.settings.contact_batch_size
        while pending:
            part = pending[:size]
            try:
                self.http.request("POST", ARCHIVE, endpoint=endpoint, json={"inputs": [{"id": i} for i in part]})
            except VendorPermanentError as exc:
                if exc.status == 400 and self.limit_words.search(exc.vendor_message) and size > 1:
                    size = max(1, size // 2)
                    continue
                if exc.status in (401, 403) or exc.status is None:
                    raise
                results += [ArchiveResult(i, False, str(exc)) for i in part]
            except TransientError as exc:
                results += [ArchiveResult(i, False, str(exc)) for i in pending]
                return results
            else:
                results += [ArchiveResult(i, True, "archived") for i in part]
            pending = pending[len(part):]
        return results

