"""The `hubspot` adapter's use of HubSpot's v4 batch endpoints, which need the batch scopes (Marketing Hub Enterprise).

What the token may call is remembered in the adapter's `memory` (kept in the store by the
engine): a 403 on a batch read or write, with its time, so that a new process goes straight
to single calls; asked again after `batch_recheck_every`, forgotten when a single call is
refused too. Batch reads confirm a full read's opt-outs against current v4 statuses.
"""

from __future__ import annotations

from typing import Any

from state.models import GLOBAL_SCOPE, OptOut

from .base import chunks
from .http import VendorPermanentError
from .hubspot_answers import BulkStatusesEnvelope, BulkWideEnvelope, number
from .hubspot_contacts import HubSpotContacts
from .kit import UnexpectedAnswer

V4 = "/communication-preferences/v4"


class HubSpotBatches(HubSpotContacts):
    """Batch reads, the batch hooks of `send_batches`, and what the token may call (a part of `HubSpotAdapter`)."""

    _subscription_of: dict[str, int]

    def _confirmed(self, optouts: list[OptOut]) -> list[OptOut]:
        """Keep the timeline's unsubscribes that v4 says still hold (all of them without batch reads)."""
        if not optouts or not self.settings.full_read_confirm or not self._batch_allowed("read"):
            return optouts
        wide_candidates = sorted({o.address for o in optouts if o.scope == GLOBAL_SCOPE and _is_status(o)})
        topic_candidates = sorted({o.address for o in optouts if o.scope != GLOBAL_SCOPE})
        try:
            wide = self._opted_out_of_all(wide_candidates)
            held = self._unsubscribed_topics(topic_candidates)
        except VendorPermanentError as exc:
            if exc.status != 403 or isinstance(exc, UnexpectedAnswer):
                raise
            self._batch_refused("read")
            return optouts
        self._batch_granted("read")
        kept = []
        for optout in optouts:
            if not _is_status(optout):
                kept.append(optout)
            elif optout.scope == GLOBAL_SCOPE:
                if optout.address in wide:
                    kept.append(optout)
            elif self._subscription_of[optout.scope] in held.get(optout.address, ()):
                kept.append(optout)
        return kept

    def _opted_out_of_all(self, addresses: list[str]) -> set[str]:
        path = f"{V4}/statuses/batch/unsubscribe-all/read"
        endpoint = f"POST {path}"
        out: set[str] = set()
        for chunk in chunks(addresses, self._chunk_size):
            answer = self.parse(self.http.request("POST", path, endpoint=endpoint, params=self._unit_params(),
                                                   json={"inputs": list(chunk)}), BulkWideEnvelope, endpoint)
            for result in answer.results:
                if any(w.status == "UNSUBSCRIBED" and (w.wideStatusType == "PORTAL_WIDE" or w.businessUnitId
                                                        in (None, self.settings.business_unit_id))
                       for w in result.wideStatuses):
                    out.add(result.subscriberIdString.strip().lower())
        return out

    def _unsubscribed_topics(self, addresses: list[str]) -> dict[str, set[int]]:
        path = f"{V4}/statuses/batch/read"
        endpoint = f"POST {path}"
        out: dict[str, set[int]] = {}
        for chunk in chunks(addresses, self._chunk_size):
            answer = self.parse(self.http.request("POST", path, endpoint=endpoint, params=self._unit_params(),
                                                   json={"inputs": list(chunk)}), BulkStatusesEnvelope, endpoint)
            for result in answer.results:
                out[result.subscriberIdString.strip().lower()] = {
                    s.subscriptionId for s in result.statuses if s.status == "UNSUBSCRIBED"}
        return out

    # What a refused batch call means at HubSpot (the hooks of HttpAdapter.send_batches).

    def batch_allowed(self) -> bool:
        return self._batch_allowed("write")

    def batch_refused(self, exc: VendorPermanentError) -> bool:
        if exc.status != 403:
            return False
        self._batch_refused("write")  # no batch scopes (Marketing Hub Enterprise): one call each
        return True

    def batch_worked(self) -> None:
        self._batch_granted("write")

    def batch_refusal_is_items(self, exc: VendorPermanentError, items: list[OptOut]) -> bool:
        # Something in the batch is refused: one call each finds which, and only it fails.
        return exc.status in (400, 404, 422)

    def on_adapter_failure(self, exc: VendorPermanentError) -> None:
        if exc.status in (401, 403):
            # Even the single call is refused: the token or its scopes changed, so what was
            # learnt about the batch endpoints no longer holds; the next cycle asks again.
            self._forget_batch_answers()

    def _probe_batch(self) -> str:
        path = f"{V4}/statuses/batch/unsubscribe-all/read"
        try:
            self.http.request("POST", path, endpoint=f"POST {path}", params=self._unit_params(), json={"inputs": []})
        except VendorPermanentError as exc:
            if exc.status == 403:
                self._batch_refused("read")
                return "batch endpoints: not allowed for this token (one call per address; slower)"
            return f"batch endpoints: could not tell ({exc.vendor_message})"
        return "batch endpoints: available"

    # -- what this token may call (remembered across processes) ---------------------------------------

    def _batch_allowed(self, kind: str) -> bool:
        """False while a 403 on a batch `kind` ("read"/"write") call is remembered and not yet due a re-check."""
        if not self.settings.batch_endpoints:
            return False
        refused_at = number(self.memory.get(f"batch_{kind}_refused_at"))
        return refused_at is None or self.clock.time() - refused_at >= self.settings.batch_recheck_every

    def _batch_refused(self, kind: str) -> None:
        self.memory.set(f"batch_{kind}_refused_at", str(int(self.clock.time())))

    def _batch_granted(self, kind: str) -> None:
        self.memory.forget(f"batch_{kind}_refused_at")

    def _forget_batch_answers(self) -> None:
        for kind in ("read", "write"):
            self.memory.forget(f"batch_{kind}_refused_at")

    def _unit_params(self) -> dict[str, Any]:
        return {"channel": "EMAIL", "businessUnitId": self.settings.business_unit_id}


def _is_status(optout: OptOut) -> bool:
    """True for an opt-out read from a status change (which v4 can confirm), not a bounce or spam report."""
    return (optout.details or {}).get("hubspot_change_type") in ("PORTAL_STATUS", "SUBSCRIPTION_STATUS")
