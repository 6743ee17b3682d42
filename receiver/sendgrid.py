"""SendGrid's signed Event Webhook.

Verification [DOC twilio.com/docs/sendgrid/for-developers/tracking-events/
getting-started-event-webhook-security-features; LIB sendgrid-python and sendgrid-go
`eventwebhook`]: ECDSA with SHA-256 over the X-Twilio-Email-Event-Webhook-Timestamp header
followed by the raw body; the X-Twilio-Email-Event-Webhook-Signature header is base64 of a
DER (r, s) pair; the verification key is base64 DER SubjectPublicKeyInfo. The curve is P-256
(the official libraries' test key is a prime256v1 key); any EC key SendGrid shows is accepted.
SendGrid states no timestamp tolerance: `[webhooks] max_age` is ours, and a signature accepted
once is refused after (a replay).

Events [DOC]: a JSON array; `unsubscribe` (all email), `group_unsubscribe` with `asm_group_id`,
`spamreport`, `bounce` with `type` `bounce` (permanent; `blocked` is temporary, not an opt-out).
Each is mapped by the `sendgrid` adapter's own conversion of the matching suppression list item,
so a pushed opt-out equals the polled one. `dropped`, `group_resubscribe` and the rest change
nothing. De-duplication on `sg_event_id` [DOC].
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

from adapters.sendgrid import Bounce, GroupSuppression, SendGridAdapter, SpamReport, Unsubscribe
from state.models import Page

from .common import Event, Incoming, Verified, json_body, malformed, text, unauthorized

SIGNATURE = "x-twilio-email-event-webhook-signature"
TIMESTAMP = "x-twilio-email-event-webhook-timestamp"


def load_public_key(value: str):
    """The EC public key from SendGrid's base64 DER text (or a PEM block); ValueError naming the problem."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

    value = value.strip()
    try:
        key = (load_pem_public_key(value.encode()) if value.startswith("-----BEGIN")
               else load_der_public_key(base64.b64decode(value, validate=True)))
    except (ValueError, binascii.Error, TypeError):
        raise ValueError("webhook_public_key is not a public key in base64 DER (as SendGrid shows it) "
                         "or PEM") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("webhook_public_key is not an elliptic-curve (ECDSA) key")
    return key


class SendGridHook:
    """Verifies and maps the Event Webhook of one `sendgrid` adapter."""

    kind = "sendgrid signed Event Webhook"

    def __init__(self, adapter: SendGridAdapter, max_age: float):
        self.adapter = adapter.name
        self._convert = adapter._convert
        self._key = load_public_key(adapter.settings.webhook_public_key or "")
        self._max_age = max_age

    def verify(self, request: Incoming) -> Verified:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        signature, stamp = request.headers.get(SIGNATURE), request.headers.get(TIMESTAMP)
        if not signature or not stamp:
            raise unauthorized("unsigned: the SendGrid signature headers are missing")
        if not stamp.isdigit() or len(stamp) > 12:
            raise unauthorized("the signature timestamp is not unix seconds")
        if abs(request.received_at - int(stamp)) > self._max_age:
            raise unauthorized("stale: the signature timestamp is outside max_age")
        try:
            der = base64.b64decode(signature, validate=True)
            self._key.verify(der, stamp.encode() + request.body, ec.ECDSA(hashes.SHA256()))
        except (binascii.Error, ValueError, InvalidSignature):
            raise unauthorized("the SendGrid signature does not match") from None
        return Verified(nonce="n:" + hashlib.sha256(der).hexdigest())

    def events(self, request: Incoming) -> list[Event]:
        items = json_body(request.body, list)
        return [self._event(item) for item in items]

    def _event(self, item: Any) -> Event:
        if not isinstance(item, dict):
            raise malformed("an event of the array is not an object")
        key = text(item.get("sg_event_id"))
        event = Event(key=f"e:{key}" if key else None)
        kind, email = item.get("event"), text(item.get("email"))
        if not email:
            return event
        stamp = item.get("timestamp")
        created = int(stamp) if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) else None
        page = Page()
        if kind == "unsubscribe":
            self._convert("unsubscribes", Unsubscribe(email=email, created=created), page, None)
        elif kind == "group_unsubscribe":
            group = item.get("asm_group_id")
            if isinstance(group, bool) or not isinstance(group, (int, str)) or not str(group).isdigit():
                return event  # without its group it is nothing this adapter could have read
            self._convert("groups", GroupSuppression(email=email, group_id=int(group), created_at=created),
                          page, None)
        elif kind == "spamreport":
            self._convert("spam_reports", SpamReport(email=email, created=created, ip=text(item.get("ip"))),
                          page, None)
        elif kind == "bounce" and item.get("type", "bounce") == "bounce":
            self._convert("bounces", Bounce(email=email, created=created, reason=text(item.get("reason")),
                                            status=text(item.get("status"))), page, None)
        event.optouts, event.rejected = page.optouts, page.rejected
        return event
