"""What every vendor module shares: the request as received, the parsed events, the refusals."""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from state.models import OptOut, Rejected


class Refused(Exception):
    """A request that is not answered 2xx: `status` (400, 401, 404, 405) and a short reason.

    The reason is sent to the caller and counted; it never holds a secret or a body's content.
    """

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def unauthorized(reason: str) -> Refused:
    return Refused(401, reason)


def malformed(reason: str) -> Refused:
    return Refused(400, reason)


@dataclass(slots=True)
class Incoming:
    """One HTTP request as the receiver read it: the raw body is never decoded before `verify`."""

    method: str
    url: str
    path_rest: str
    headers: dict[str, str]
    body: bytes
    received_at: float


@dataclass
class Event:
    """One vendor event: its de-duplication key (None: rely on idempotence) and what it says."""

    key: str | None
    optouts: list[OptOut] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


@dataclass
class Verified:
    """A request that passed its check: the nonce that may not be used again (None: no nonce)."""

    nonce: str | None = None
    # An answer that needs no staging (a Mailchimp validation, an SNS subscription confirmation).
    answer: str | None = None


class Hook(Protocol):
    """A vendor's receiver for one adapter instance."""

    adapter: str
    kind: str

    def verify(self, request: Incoming) -> Verified:
        """Check the request's signature or credentials; raise Refused(401) when they do not hold."""
        ...

    def events(self, request: Incoming) -> list[Event]:
        """The verified request's events; raise Refused(400) for a body that cannot be read."""
        ...


def same_secret(given: str | bytes, expected: str | bytes) -> bool:
    """Constant-time comparison of two secrets (texts are compared as UTF-8)."""
    a = given.encode() if isinstance(given, str) else given
    b = expected.encode() if isinstance(expected, str) else expected
    return hmac.compare_digest(a, b)


def json_body(body: bytes, expect: type) -> Any:
    """The body as JSON of the expected top-level type; Refused(400) otherwise."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise malformed("the body is not JSON") from None
    if not isinstance(value, expect):
        raise malformed(f"the body is not a JSON {'array' if expect is list else 'object'}")
    return value


def text(value: Any) -> str | None:
    """A JSON value as text for a vendor model field (numbers as digits), or None."""
    if value is None or isinstance(value, (dict, list, bool)):
        return None
    return str(value)


Clock = Callable[[], float]
