"""The re-subscribe part of the `hubspot` adapter (issue 17): who made a timeline change back to SUBSCRIBED.

Confirmed (developers.hubspot.com, "Get subscriptions timeline", v1 legacy reference, found with
the search tool): every timeline change carries `source`, and the reference's own example shows
a recipient opting back in as `change: SUBSCRIBED`, `source: SOURCE_RECIPIENT`, with
`changeType` PORTAL_STATUS (all email) or SUBSCRIPTION_STATUS (one subscription), the item's
millisecond `timestamp` and a `causedByEvent.id`. So HubSpot says who re-subscribed, and when.
Inferred (the source names are not listed in the reference; they are the ones the timeline and
the v4 status `source` show): SOURCE_HUBSPOT_CUSTOMER is a portal user by hand, SOURCE_IMPORT an
import, SOURCE_API/SOURCE_INTEGRATION an API client. Any other or missing source is "unknown",
which never releases an opt-out. The store decides whether a re-subscribe releases anything.
"""

from __future__ import annotations

from datetime import datetime, timezone

from state.models import GLOBAL_SCOPE, Resubscribe, to_utc_iso

from .hubspot_answers import TimelineChange

RESUBSCRIBED_BY = {
    "SOURCE_RECIPIENT": "recipient",
    "SOURCE_HUBSPOT_CUSTOMER": "admin",
    "SOURCE_IMPORT": "import",
    "SOURCE_API": "api",
    "SOURCE_INTEGRATION": "api",
}


def resubscribe_of(change: TimelineChange, address: str, scope: str | None, moment: int | None) -> Resubscribe | None:
    """A timeline change back to SUBSCRIBED as a Resubscribe with its evidence; None for anything else.

    `scope` is what the change covers here (None: nothing this adapter serves, such as another
    business unit or an unmapped subscription; such a change stays a history line or is ignored).
    `moment` is the change's time in milliseconds since the epoch.
    """
    if change.change != "SUBSCRIBED" or scope is None:
        return None
    evidence = {"vendor": "hubspot", "hubspot_source": change.source, "hubspot_change_type": change.changeType}
    if change.subscriptionId is not None:
        evidence["hubspot_subscription_id"] = str(change.subscriptionId)
    if change.causedByEvent and change.causedByEvent.get("id"):
        evidence["hubspot_event_id"] = str(change.causedByEvent["id"])
    when = to_utc_iso(datetime.fromtimestamp(moment / 1000, timezone.utc)) if moment else None
    return Resubscribe(address, scope, RESUBSCRIBED_BY.get(change.source or "", "unknown"), when, evidence)


def resubscribe_scope(change: TimelineChange, business_unit_id: int, topic_of: dict[str, str]) -> str | None:
    """The scope a status change covers at the adapter instance of `business_unit_id`, or None."""
    if change.changeType == "PORTAL_STATUS":
        unit = change.businessUnitId
        return GLOBAL_SCOPE if unit is None or unit == business_unit_id else None
    if change.changeType == "SUBSCRIPTION_STATUS":
        return topic_of.get(str(change.subscriptionId))
    return None
