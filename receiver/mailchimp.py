"""Mailchimp audience webhooks.

Authenticity: Mailchimp's audience webhooks carry no signature [INFERRED: Mailchimp support and
third-party guides], so the webhook URL holds a long random secret as its last path segment,
`/hooks/NAME/SECRET` (`webhook_secret`), compared in constant time. When a webhook is saved,
Mailchimp checks the URL with a GET [INFERRED] (some say an empty POST): both are answered 200
without staging anything. No timestamp can bound a replay: repeats are only de-duplicated.

Events (`application/x-www-form-urlencoded`, `type`, `fired_at` `YYYY-MM-DD HH:MM:SS`,
`data[...]` [INFERRED: third-party captures]): `unsubscribe` with `data[action]` `unsub` (a
`delete` removes a member, which polling does not read as an opt-out either) and `cleaned`
(`data[reason]` `hard`, or `abuse` for a complaint). Each is mapped by the `mailchimp`
adapter's own conversion of a member or an abuse report. An event of another audience is
ignored. De-duplication on type, time, audience and address [INFERRED: no event id].
"""

from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import parse_qsl

from adapters.mailchimp import AbuseReport, MailchimpAdapter, Member
from state.models import Page

from .common import Event, Incoming, Verified, malformed, same_secret, unauthorized


class MailchimpHook:
    """Verifies (path secret) and maps the audience webhooks of one `mailchimp` adapter."""

    kind = "Mailchimp audience webhooks (secret in the path)"

    def __init__(self, adapter: MailchimpAdapter, max_age: float):
        self.adapter = adapter.name
        self._mailchimp = adapter
        self._list = adapter.settings.list_id
        self._secret = adapter.settings.webhook_secret.get_secret_value()

    def validation(self, request: Incoming) -> bool:
        """True for Mailchimp's check of a new webhook URL (a GET or HEAD): answered 200, nothing staged."""
        return request.method in ("GET", "HEAD")

    def verify(self, request: Incoming) -> Verified:
        if not request.path_rest:
            raise unauthorized("unsigned: the URL has no secret (/hooks/NAME/SECRET)")
        if not same_secret(request.path_rest, self._secret):
            raise unauthorized("wrong secret in the URL")
        if not request.body:
            return Verified(answer="validated")  # an empty POST: the other form of the URL check
        return Verified()

    def events(self, request: Incoming) -> list[Event]:
        try:
            fields = dict(parse_qsl(request.body.decode("utf-8"), keep_blank_values=True, strict_parsing=True,
                                    max_num_fields=1000))
        except (UnicodeDecodeError, ValueError):
            raise malformed("the body is not a form (application/x-www-form-urlencoded)") from None
        kind, fired = fields.get("type"), fields.get("fired_at")
        email, audience = fields.get("data[email]"), fields.get("data[list_id]")
        if not kind or not email:
            return [Event(key=None)]
        event = Event(key=f"e:{kind}:{fired}:{audience}:{email.strip().lower()}")
        if audience != self._list:
            return [event]  # another audience's webhook: not this adapter's
        moment = _fired_at(fired)
        page = Page()
        if kind == "unsubscribe" and fields.get("data[action]", "unsub") == "unsub":
            self._mailchimp._convert_member(Member(
                email_address=email, status="unsubscribed", last_changed=moment.isoformat() if moment else None,
                unsubscribe_reason=fields.get("data[reason]") or None), page, None)
        elif kind == "cleaned" and fields.get("data[reason]") == "abuse":
            self._mailchimp._convert_report(AbuseReport(email_address=email,
                                                        campaign_id=fields.get("data[campaign_id]") or None,
                                                        date=moment.isoformat() if moment else None),
                                            page, None, None)
        elif kind == "cleaned":
            self._mailchimp._convert_member(Member(
                email_address=email, status="cleaned", last_changed=moment.isoformat() if moment else None),
                page, None)
        event.optouts, event.rejected = page.optouts, page.rejected
        return [event]


def _fired_at(text: str | None) -> datetime | None:
    """Mailchimp's `fired_at` (`YYYY-MM-DD HH:MM:SS`, taken as UTC [INFERRED]); None when unreadable."""
    try:
        return datetime.strptime(text or "", "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
