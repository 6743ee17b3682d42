"""The data that flows between adapters, the engine and the store.

Plain slotted dataclasses: a sync moves millions of these, so they stay small
and cheap to build. OptOut and ApplyResult are treated as immutable but not
declared frozen: a frozen dataclass's __init__ costs five times as much, and a
reconcile builds one per row of a full read.
"""

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

GLOBAL_SCOPE = "*"

REASONS = ("unsubscribed", "hard_bounce", "spam_complaint", "manual", "imported")
ORIGINS = ("recipient", "user", "system")

# How strongly an opt-out binds. A later observation replaces the stored
# reason/origin only when it binds more strongly, so a recipient's own
# unsubscribe or a spam complaint is never downgraded to a liftable user opt-out.
REASON_RANK = {"imported": 0, "manual": 1, "unsubscribed": 2, "hard_bounce": 3, "spam_complaint": 4}
ORIGIN_RANK = {"user": 0, "system": 1, "recipient": 2}


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string with microseconds (sortable as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def to_utc_iso(moment: datetime) -> str:
    """A datetime as the store's ISO-8601 UTC text; naive values are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


@dataclass(slots=True, unsafe_hash=True)
class OptOut:
    """One address out of one scope, as a source reported it.

    `address` is already normalised; `scope` is `*` (all email) or a topic key
    from settings; `occurred_at` is when the source says it happened (ISO UTC)
    or None when the source does not say.
    """

    address: str
    scope: str = GLOBAL_SCOPE
    reason: str = "unsubscribed"
    origin: str = "recipient"
    occurred_at: str | None = None
    details: dict[str, Any] | None = None


@dataclass(slots=True, frozen=True)
class Rejected:
    """An input item that could not become an opt-out, with where it was and why."""

    where: str
    value: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass(slots=True)
class Page:
    """One page read from a source: opt-outs, rejected items, and the cursor after it.

    `cursor` is None on pages of a full read (reconcile), which has no cursor.
    """

    optouts: list[OptOut] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    cursor: str | None = None
    # Observations worth a history line that are not opt-outs (a re-subscribe
    # seen at a vendor); recorded, never acted on.
    notices: list[OptOut] = field(default_factory=list)
    # Changes back to subscribed, with who made them: the store decides whether one releases an
    # opt-out (state.resubscribes); only a dated one the recipient made ever can.
    resubscribes: list["Resubscribe"] = field(default_factory=list)


# Who made a change back to subscribed, as a vendor says it. Only RECIPIENT can release an opt-out.
RECIPIENT = "recipient"
RESUBSCRIBERS = (RECIPIENT, "admin", "api", "import", "unknown")
RESUBSCRIBE_POLICIES = ("local", "everywhere", "ignore")


@dataclass(slots=True)
class Resubscribe:
    """A change back to subscribed seen at a vendor, with its evidence.

    `by` is who made it as the vendor reports it (one of RESUBSCRIBERS); `occurred_at`
    is when (ISO UTC) or None when the vendor does not say; `evidence` names the vendor's
    own record (its id or source field and value), kept in the event log.
    """

    address: str
    scope: str
    by: str
    occurred_at: str | None
    evidence: dict[str, Any]


APPLIED = "applied"          # the sink now holds the opt-out
ALREADY = "already"          # the sink held it already: a success
PERMANENT = "permanent"      # refused for good (invalid address, vendor rule)
TRANSIENT = "transient"      # may work later (timeout, 5xx, 429)


@dataclass(slots=True)
class ApplyResult:
    """The outcome of applying (or removing) one opt-out at one sink."""

    optout: OptOut
    outcome: str
    message: str = ""
    # How the sink will report an apply that took effect, where the opt-out as sent does not say:
    # `held_as` is the reason it records (a Postmark suppression is always `manual`; an SES entry is a
    # bounce or complaint); None means an unsubscribe, which is how most sinks hold any opt-out.
    held_as: str | None = None
    # Further scopes the write reached besides the one sent (an all-email opt-out written to every
    # topic stream): their read-backs are echoes of this apply, not new opt-outs.
    fanned_out: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.outcome in (APPLIED, ALREADY)
