"""Mailgun webhooks.

Verification [DOC documentation.mailgun.com …/securing-webhooks; LIB mailgun-go
`VerifyWebhookSignature`]: the body is one JSON object whose `signature` holds `timestamp`,
`token` and `signature`, the hex HMAC-SHA256 of timestamp + token keyed with the Webhook
Signing Key. Mailgun signs only those two values, which travel inside the body, so the JSON is
decoded to find them and nothing of `event-data` is read before the check holds. A token
accepted once is refused after (Mailgun's advice [DOC]); the timestamp must be within
`[webhooks] max_age` (our choice: Mailgun names none).

Events [DOC]: `unsubscribed`, `complained`, `failed` with `severity` `permanent` (a temporary
failure is not an opt-out). Each is mapped by the `mailgun` adapter's own conversion of the
matching list item (tags as topics, the 4xx rule, its `unsubscribe_origin`). De-duplication on
`event-data.id` with its timestamp (the id is said to be unique only within a day [INFERRED]).
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any

from adapters.mailgun import BounceItem, ComplaintItem, MailgunAdapter, UnsubscribeItem
from state.models import Page

from .common import Event, Incoming, Refused, Verified, json_body, malformed, same_secret, text, unauthorized


class MailgunHook:
    """Verifies and maps the webhooks of one `mailgun` adapter."""

    kind = "Mailgun signed webhooks"

    def __init__(self, adapter: MailgunAdapter, max_age: float):
        self.adapter = adapter.name
        self._convert = adapter._convert
        self._key = adapter.settings.webhook_secret.get_secret_value().encode()
        self._max_age = max_age

    def verify(self, request: Incoming) -> Verified:
        try:
            body = json_body(request.body, dict)
        except Refused:
            body = None  # no readable signature: unsigned, whatever else is wrong with it
        signed = body.get("signature") if isinstance(body, dict) else None
        if not isinstance(signed, dict):
            raise unauthorized("unsigned: the body has no Mailgun signature")
        stamp, token, signature = (text(signed.get(k)) for k in ("timestamp", "token", "signature"))
        if not stamp or not token or not signature:
            raise unauthorized("unsigned: the Mailgun signature lacks timestamp, token or signature")
        if not stamp.isdigit() or len(stamp) > 12:
            raise unauthorized("the signature timestamp is not unix seconds")
        if abs(request.received_at - int(stamp)) > self._max_age:
            raise unauthorized("stale: the signature timestamp is outside max_age")
        expected = hmac.new(self._key, (stamp + token).encode(), hashlib.sha256).hexdigest()
        if not same_secret(signature.lower(), expected):
            raise unauthorized("the Mailgun signature does not match")
        return Verified(nonce="n:" + hashlib.sha256(token.encode()).hexdigest())

    def events(self, request: Incoming) -> list[Event]:
        data = json_body(request.body, dict).get("event-data")
        if not isinstance(data, dict):
            raise malformed("the body has no event-data object")
        return [self._event(data)]

    def _event(self, data: dict[str, Any]) -> Event:
        stamp = data.get("timestamp")
        moment = None
        if isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
            try:
                moment = datetime.fromtimestamp(float(stamp), timezone.utc)
            except (OverflowError, OSError, ValueError):
                moment = None
        identity = text(data.get("id"))
        event = Event(key=f"e:{identity}:{stamp}" if identity else None)
        kind, address = data.get("event"), text(data.get("recipient"))
        if not address:
            return event
        created = format_datetime(moment) if moment else None
        page = Page()
        if kind == "unsubscribed":
            tags = data.get("tags")
            tags = [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else None
            self._convert("unsubscribes", UnsubscribeItem(address=address, tags=tags, created_at=created), page, None)
        elif kind == "complained":
            self._convert("complaints", ComplaintItem(address=address, created_at=created), page, None)
        elif kind == "failed" and data.get("severity") == "permanent":
            status = data.get("delivery-status") if isinstance(data.get("delivery-status"), dict) else {}
            self._convert("bounces", BounceItem(address=address, code=text(status.get("code")),
                                                error=text(status.get("message") or status.get("description")),
                                                created_at=created), page, None)
        event.optouts, event.rejected = page.optouts, page.rejected
        return event
