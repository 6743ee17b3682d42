"""The re-subscribe part of the `mailchimp` adapter (issue 17): members back to `subscribed` by their own
confirmation.

What the Marketing API says about who made a member `subscribed` again (found with the search tool):
- Confirmed [LIB: the official clients' member model, generated from the API spec]: a member has
  `timestamp_opt` ("the date and time the subscriber confirmed their opt-in status") and `ip_opt`
  ("the IP address the subscriber used to confirm their opt-in status"), and `last_changed`.
  No field names who changed the status: the member record has no "changed by".
- Confirmed [LIB]: `ip_opt` and `timestamp_opt` are also fields an API client may send when it adds
  or updates a member, so on their own they are not proof.
- Inferred (Stack Overflow answers quoting the API's error, not Mailchimp's reference): the API refuses
  to subscribe a member who unsubscribed ("Member In Compliance State ... cannot be subscribed"); the way
  back is status `pending`, which sends the person a confirmation email. So a formerly unsubscribed
  member becomes `subscribed` again only by the person's own action: a sign-up form or that confirmation.
- The audience webhook's `source` (user, admin, api) would name who; webhooks are not read here.
Hence: a `subscribed` member with an `ip_opt` and a `timestamp_opt` is read as the recipient's own
re-subscribe dated `timestamp_opt` (the store releases only if that is after the opt-out); without
them it is "unknown" and releases nothing. The IP address itself is not kept (it is personal data;
the evidence says only that Mailchimp recorded one).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING

from state.addresses import InvalidAddress, normalise_address
from state.models import Page, Resubscribe, to_utc_iso

from .kit import parse_time

if TYPE_CHECKING:
    from .mailchimp import MailchimpAdapter, Member


# Read on top of the adapter's own member fields.
EXTRA_FIELDS = "members.unique_email_id,members.timestamp_opt,members.ip_opt"


def resubscribe_of(member: Member, list_id: str, scope: str) -> Resubscribe | None:
    """A member back to `subscribed` as a Resubscribe with its evidence; None for a member we cannot read."""
    try:
        address = normalise_address(member.email_address)
    except InvalidAddress:
        return None  # listed where it matters: when it opted out
    confirmed = parse_time(member.timestamp_opt)
    by_recipient = bool(member.ip_opt) and confirmed is not None
    evidence = {"vendor": "mailchimp", "mailchimp_list": list_id, "mailchimp_member": member.unique_email_id,
                "mailchimp_status": member.status, "timestamp_opt": member.timestamp_opt,
                "ip_opt_recorded": bool(member.ip_opt), "last_changed": member.last_changed}
    # Dated by the confirmation when the person confirmed, else by the status change itself.
    moment = confirmed if by_recipient else parse_time(member.last_changed)
    return Resubscribe(address, scope, "recipient" if by_recipient else "unknown",
                       to_utc_iso(moment) if moment else None, evidence)


def resubscribe_pages(adapter: MailchimpAdapter, start: datetime | None, end: datetime | None) -> Iterator[Page]:
    """Members changed to `subscribed` in the window, as pages of re-subscribes (the store ignores
    members that never opted out)."""
    from .mailchimp import MEMBER_FIELDS  # here: mailchimp.py imports this module

    for members in adapter._members("subscribed", start, end, fields=f"{MEMBER_FIELDS},{EXTRA_FIELDS}"):
        found = [resubscribe_of(m, adapter.settings.list_id, adapter.settings.scope) for m in members]
        page = Page(resubscribes=[r for r in found if r is not None])
        if page.resubscribes:
            yield page
