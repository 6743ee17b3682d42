"""Postmark webhooks.

Authenticity [DOC postmarkapp.com/developer/webhooks/webhooks-overview]: Postmark signs nothing;
the webhook URL carries basic-auth credentials (`https://user:pass@host/hooks/NAME`), compared
here in constant time: `webhook_username` and `webhook_secret` (the password). Postmark sends
no timestamp to bound a replay, so a repeated event is only de-duplicated.

Events [DOC, LIB postmark.js]: one JSON object per request, named by `RecordType`.
`SubscriptionChange` with `SuppressSending` true (a reactivation changes nothing); `Bounce` of
`Type` `HardBounce`; `SpamComplaint`. Each becomes the suppression Postmark lists for it and is
mapped by the `postmark` adapter's own conversion (streams as topics; a recipient's own
unsubscribe is `ManualSuppression` with `Origin` `Recipient`). An event of a stream the adapter
does not keep is nothing to it, as when polling. De-duplication on the bounce or complaint `ID`,
and for a SubscriptionChange (no id) on recipient, stream, time and direction [INFERRED].
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from adapters.postmark import PostmarkAdapter, Suppression
from state.models import Page

from .common import Event, Incoming, Verified, json_body, same_secret, text, unauthorized


class PostmarkHook:
    """Verifies (basic auth) and maps the webhooks of one `postmark` adapter."""

    kind = "Postmark webhooks (basic auth)"

    def __init__(self, adapter: PostmarkAdapter, max_age: float):
        self.adapter = adapter.name
        self._postmark = adapter
        settings = adapter.settings
        self._expected = f"{settings.webhook_username}:{settings.webhook_secret.get_secret_value()}".encode()

    def verify(self, request: Incoming) -> Verified:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not value:
            raise unauthorized("unsigned: no basic-auth credentials")
        try:
            given = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise unauthorized("the basic-auth credentials are not base64") from None
        if not same_secret(given, self._expected):
            raise unauthorized("wrong basic-auth credentials")
        return Verified()

    def events(self, request: Incoming) -> list[Event]:
        return [self._event(json_body(request.body, dict))]

    def _event(self, item: dict[str, Any]) -> Event:
        record = item.get("RecordType")
        stream = text(item.get("MessageStream")) or "outbound"
        page = Page()
        if record == "SubscriptionChange":
            address, changed = text(item.get("Recipient")), text(item.get("ChangedAt"))
            event = Event(key=f"e:sc:{address}:{stream}:{changed}:{item.get('SuppressSending')}" if address else None)
            reason = text(item.get("SuppressionReason"))
            if item.get("SuppressSending") is True and address and reason:
                self._convert(stream, Suppression(EmailAddress=address, SuppressionReason=reason,
                                                  Origin=text(item.get("Origin")), CreatedAt=changed), page)
        elif record in ("Bounce", "SpamComplaint"):
            identity = text(item.get("ID"))
            event = Event(key=f"e:{record}:{identity}" if identity else None)
            address = text(item.get("Email"))
            kind = "SpamComplaint" if record == "SpamComplaint" else (
                "HardBounce" if item.get("Type") == "HardBounce" else None)
            if address and kind:
                self._convert(stream, Suppression(EmailAddress=address, SuppressionReason=kind,
                                                  CreatedAt=text(item.get("BouncedAt"))), page)
        else:
            event = Event(key=None)
        event.optouts, event.rejected = page.optouts, page.rejected
        return event

    def _convert(self, stream: str, item: Suppression, page: Page) -> None:
        if stream in self._postmark._scope_of:  # a stream the adapter keeps; others are not its business
            self._postmark._convert(stream, item, page, None, True)
