"""HubSpot's answers, as far as the `hubspot` adapter relies on them, and how it reads its errors and rate limits.

The facts behind them are in adapters/hubspot.py's docstring (C = confirmed, I = inferred).
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import httpx
from pydantic import Field

from .http import VendorAnswer, VendorError, generic_pause_hint, parse_retry_after
from .kit import json_body

Result = TypeVar("Result")


class StandardError(VendorAnswer):
    message: str = ""
    category: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)


class PublicStatus(VendorAnswer):
    subscriberIdString: str
    subscriptionId: int
    status: str
    setStatusSuccessReason: str | None = None


class BulkStatuses(VendorAnswer):
    subscriberIdString: str
    statuses: list[PublicStatus] = Field(default_factory=list)


class WideStatus(VendorAnswer):
    status: str
    wideStatusType: str | None = None
    businessUnitId: int | None = None


class BulkWide(VendorAnswer):
    subscriberIdString: str
    wideStatuses: list[WideStatus] = Field(default_factory=list)


class Envelope(VendorAnswer, Generic[Result]):
    """A v4 answer: results, and per-input errors (a 207 multi-status)."""

    status: str
    results: list[Result]
    errors: list[StandardError] = Field(default_factory=list)


StatusEnvelope = Envelope[PublicStatus]
BulkStatusesEnvelope = Envelope[BulkStatuses]
BulkWideEnvelope = Envelope[BulkWide]


class TimelineChange(VendorAnswer):
    change: str
    changeType: str
    source: str | None = None
    subscriptionId: str | None = None
    businessUnitId: int | None = None
    timestamp: int | None = None
    causedByEvent: dict[str, Any] | None = None


class TimelineItem(VendorAnswer):
    timestamp: int
    recipient: str
    changes: list[TimelineChange]


class TimelinePage(VendorAnswer):
    hasMore: bool
    offset: str | None = None
    timeline: list[TimelineItem]


class Definition(VendorAnswer):
    id: str
    name: str
    businessUnitId: int | None = None
    isActive: bool | None = None


class DefinitionsEnvelope(VendorAnswer):
    results: list[Definition]


# -- error and rate-limit reading ---------------------------------------------------------------


# HubSpot's rate-limit policies, as a 429 body names them in `policyName` (see the module docstring).
TEN_SECONDLY = "TEN_SECONDLY_ROLLING"
SECONDLY = "SECONDLY"
DAILY = "DAILY"
TEN_SECONDLY_WAIT = 10.0  # the rolling burst window: after this long every call that filled it has left it
SECONDLY_WAIT = 1.0       # the search API's window


def rate_limit_policy(body: dict) -> str | None:
    """Which HubSpot limit a 429 body names: its `policyName`, else read from its message; None if neither says."""
    policy = str(body.get("policyName") or "").strip().upper()
    if policy in (TEN_SECONDLY, SECONDLY, DAILY):
        return policy
    # Older answers and some endpoints give only the message ("You have reached your
    # ten_secondly_rolling limit." / "... secondly limit." / "... daily limit."). The
    # ten-secondly test comes first: its message also contains the word "secondly".
    message = str(body.get("message") or "").lower()
    if "ten_secondly" in message or "ten secondly" in message:
        return TEN_SECONDLY
    if "daily" in message:
        return DAILY
    if "secondly" in message:
        return SECONDLY
    return policy or None


def hubspot_error(response: httpx.Response, now: float) -> VendorError:
    """HubSpot's Error body (message, category, correlationId, errors[]), and how long a 429 asks to wait.

    A 429 is classified by the limit its body names: the rolling 10-second burst
    limit is waited out whole (Retry-After, else the window HubSpot's headers
    give, else 10 s), the search API's per-second limit for 1 s, and the daily
    limit is not retried in this cycle.
    """
    body = json_body(response)
    message = str(body.get("message") or response.reason_phrase or "no message")
    details = [str(e.get("message")) for e in body.get("errors") or [] if isinstance(e, dict) and e.get("message")]
    if details:
        message += " (" + "; ".join(details[:3]) + ")"
    category = body.get("category") or body.get("errorType")
    retry_after = parse_retry_after(response.headers.get("retry-after"), now)
    retry = True
    if response.status_code == 429:
        policy = rate_limit_policy(body)
        if policy == DAILY:
            retry = False  # the daily quota resets at midnight in the account's time zone; park, do not spin
        elif retry_after is None and policy == TEN_SECONDLY:
            interval = number(response.headers.get("x-hubspot-ratelimit-interval-milliseconds"))
            retry_after = interval / 1000 if interval else TEN_SECONDLY_WAIT
        elif retry_after is None and policy == SECONDLY:
            retry_after = SECONDLY_WAIT
    correlation = body.get("correlationId") or body.get("requestId")
    return VendorError(message, str(category) if category else None, str(correlation) if correlation else None,
                       retry_after, retry)


def hubspot_pause_hint(response: httpx.Response, now: float) -> float | None:
    """Hold back when HubSpot's rate-limit headers say this window is used up (headers are optional)."""
    headers = response.headers
    if number(headers.get("x-hubspot-ratelimit-remaining")) == 0:
        return (number(headers.get("x-hubspot-ratelimit-interval-milliseconds")) or 10_000) / 1000
    if number(headers.get("x-hubspot-ratelimit-secondly-remaining")) == 0:
        return 1.0
    return generic_pause_hint(response, now)


def number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
