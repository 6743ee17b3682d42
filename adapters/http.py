"""The shared HTTP client policy of every HTTP adapter: one httpx.Client, timeouts, retries, pacing.

Tenacity retries transient failures only (Retry-After first), token buckets pace calls, a per-cycle
retry budget parks what is left, and vendor errors become the project's exceptions, never with a secret.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json as jsonlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from state.errors import PermanentError, TransientError

from .base import AdapterSettings, Duration

# Statuses worth another try: timeouts, conflicts and locks that clear, "too early",
# rate limits, and every 5xx (checked separately).
RETRY_STATUSES = frozenset({408, 409, 423, 425, 429})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_LOG = logging.getLogger("optout_sync")

Model = TypeVar("Model", bound=BaseModel)

class VendorAnswer(BaseModel):
    """Base of the models a vendor's JSON is parsed into: unknown fields ignored, ids as text."""

    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)


# Who wants to hear of retries and 429s (the daemon's metrics): called as observer(kind, adapter)
# with kind "retry" or "rate_limited". Adapters do not know the connector, so it registers here.
OBSERVERS: list[Callable[[str, str], None]] = []


def _notify(kind: str, adapter: str) -> None:
    for observer in list(OBSERVERS):
        observer(kind, adapter)


def project_version() -> str:
    """The installed optout-sync version, read without importing `connector` (dependencies point one way)."""
    try:
        return importlib.metadata.version("optout-sync")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


USER_AGENT = f"optout-sync/{project_version()}"


def check_base_url(value: str) -> str:
    """A base URL that is https, or plain http only on the loopback interface (tests); no trailing slash."""
    try:
        url = httpx.URL(str(value).strip())
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"base_url {value!r} is not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"base_url must be an https:// URL with a host, got {value!r}")
    if url.scheme == "http" and url.host not in LOOPBACK_HOSTS:
        raise ValueError(f"base_url must use https (plain http is allowed only for 127.0.0.1, localhost "
                         f"or ::1), got {value!r}")
    if url.query or url.fragment:
        raise ValueError(f"base_url must not carry a query or fragment, got {value!r}")
    return str(url).rstrip("/")


class HttpAdapterSettings(AdapterSettings):
    """Settings every HTTP adapter has: where, how long to wait, how often to retry, how fast to call."""

    base_url: str
    connect_timeout: Duration = 5.0
    read_timeout: Duration = 30.0
    max_attempts: int = Field(default=5, ge=1, le=20)
    backoff_initial: Duration = 0.5
    backoff_max: Duration = 30.0
    # Seconds of back-off one cycle may spend waiting for retries before parking the rest.
    retry_budget: Duration = 60.0
    rate_limit_requests: int = Field(default=100, ge=1)
    rate_limit_period: Duration = 10.0

    @field_validator("base_url")
    @classmethod
    def _secure_base_url(cls, value: str) -> str:
        return check_base_url(value)


class Clock:
    """Real time and real sleep; tests pass an object with the same three methods that only pretends."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


# -- errors ---------------------------------------------------------------------------


class VendorErrorMixin:
    """What a vendor said about a failed call: status, its message, category and correlation id."""

    adapter: str
    endpoint: str
    status: int | None
    vendor_message: str
    category: str | None
    correlation_id: str | None

    def _describe(self) -> str:
        parts = [f"{self.adapter}: {self.endpoint}"]
        if self.status is not None:
            parts.append(f"answered {self.status}")
        if self.category:
            parts.append(self.category)
        text = " ".join(parts) + f": {self.vendor_message}"
        if self.correlation_id:
            text += f" (correlation id {self.correlation_id})"
        return text


class VendorTransientError(VendorErrorMixin, TransientError):
    """A call that may work later (timeout, connection failure, 5xx, 429, 408/409/423/425)."""

    def __init__(self, adapter: str, endpoint: str, message: str, *, status: int | None = None,
                 category: str | None = None, correlation_id: str | None = None,
                 retry_after: float | None = None, retry: bool = True):
        self.adapter, self.endpoint, self.status = adapter, endpoint, status
        self.vendor_message, self.category, self.correlation_id = message, category, correlation_id
        # False when retrying within this cycle cannot help (a daily quota): park at once.
        self.retry = retry
        super().__init__(self._describe(), retry_after=retry_after)


class VendorPermanentError(VendorErrorMixin, PermanentError):
    """A call the vendor refused for good (4xx other than the retryable ones), or an unusable answer."""

    def __init__(self, adapter: str, endpoint: str, message: str, *, status: int | None = None,
                 category: str | None = None, correlation_id: str | None = None):
        self.adapter, self.endpoint, self.status = adapter, endpoint, status
        self.vendor_message, self.category, self.correlation_id = message, category, correlation_id
        super().__init__(self._describe())


def explain_refusal(exc: BaseException, credential: str, needs: str | None) -> str | None:
    """A check's probe that the vendor refused, said plainly: the credential refused (401), or what it lacks (403).

    `needs` names the missing permission for the refused endpoint (a scope, a permission); None for other errors.
    """
    if not isinstance(exc, VendorPermanentError):
        return None
    answered = f"{exc.endpoint} answered {exc.status}{' ' + exc.category if exc.category else ''}"
    if exc.status == 401:
        return f"the {credential} was refused ({answered}): put a valid one in {credential} (or {credential}_file)"
    if exc.status == 403 and needs:
        return f"missing {needs} ({answered})"
    return None


class RetryBudgetSpent(TransientError):
    """This cycle's retry budget is spent: the caller parks what is left for the next cycle."""


@dataclass(frozen=True)
class VendorError:
    """A vendor's error answer, parsed: what to show and how long it asks us to wait."""

    message: str
    category: str | None = None
    correlation_id: str | None = None
    retry_after: float | None = None
    retry: bool = True
    # The vendor says "try later" with a status that usually means a refusal (AWS throttling is a 400).
    transient: bool = False


def parse_http_date(text: str | None) -> datetime | None:
    """An aware datetime from an HTTP (RFC 822) date; naive ones are UTC; None when absent or unreadable."""
    if not text:
        return None
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP-date); None if absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    moment = parse_http_date(text)
    return None if moment is None else max(0.0, moment.timestamp() - now)


def generic_error(response: httpx.Response, now: float) -> VendorError:
    """Read the usual error fields (message, category/code, correlation or request id) from any JSON body."""
    body = _json_or_none(response)
    message, category, correlation = None, None, None
    if isinstance(body, dict):
        message = body.get("message") or body.get("error") or body.get("detail")
        if not message and isinstance(body.get("errors"), list) and body["errors"]:
            first = body["errors"][0]
            message = first.get("message") if isinstance(first, dict) else str(first)
        category = body.get("category") or body.get("code") or body.get("errorType")
        correlation = body.get("correlationId") or body.get("requestId") or body.get("request_id")
    correlation = correlation or response.headers.get("x-request-id")
    text = str(message) if message else (response.reason_phrase or "no message")
    return VendorError(text, str(category) if category else None, str(correlation) if correlation else None,
                       parse_retry_after(response.headers.get("retry-after"), now))


def generic_pause_hint(response: httpx.Response, now: float) -> float | None:
    """Seconds to hold back when the common rate-limit headers say nothing is left in this window."""
    for prefix in ("ratelimit-", "x-ratelimit-"):
        remaining = response.headers.get(prefix + "remaining")
        reset = response.headers.get(prefix + "reset")
        if remaining is None or reset is None:
            continue
        try:
            if float(remaining) > 0:
                return None
            seconds = float(reset)
        except ValueError:
            return None
        # Some vendors send the reset as epoch seconds, others as seconds from now.
        return max(0.0, seconds - now) if seconds > 1e9 else max(0.0, seconds)
    return None


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


# -- pacing and budget ------------------------------------------------------------------


class TokenBucket:
    """At most `capacity` calls in any `period` seconds: each spent token returns `period` after use.

    That is the rolling-window form of a token bucket, so a burst at the end of
    one window and another at the start of the next never exceed a vendor's
    rolling limit. `hold(seconds)` empties it when the vendor says so.
    """

    def __init__(self, capacity: int, period: float, clock: Clock):
        if capacity < 1 or period <= 0:
            raise ValueError("a token bucket needs capacity >= 1 and a positive period")
        self.capacity, self.period, self.clock = capacity, period, clock
        self._spent: deque[float] = deque()
        self._held_until = 0.0
        self._lock = threading.Lock()

    def hold(self, seconds: float) -> None:
        """Give out no token for the next `seconds` (the vendor reported its limit reached)."""
        with self._lock:
            self._held_until = max(self._held_until, self.clock.monotonic() + seconds)

    def held_for(self) -> float:
        """Seconds left of a vendor-imposed hold (0 when none)."""
        return max(0.0, self._held_until - self.clock.monotonic())

    def acquire(self) -> None:
        """Take a token, sleeping until one returns."""
        while True:
            with self._lock:
                now = self.clock.monotonic()
                while self._spent and self._spent[0] <= now - self.period:
                    self._spent.popleft()
                wait = self._held_until - now
                if wait <= 0 and len(self._spent) < self.capacity:
                    self._spent.append(now)
                    return
                if wait <= 0:
                    wait = self._spent[0] + self.period - now
            self.clock.sleep(max(wait, 0.001))


class RetryBudget:
    """Seconds of retry waiting allowed in one cycle; reset when a cycle starts.

    While `held()` (the engine holds it for one whole cycle or reconcile),
    `reset()` does nothing: every call an adapter makes in that cycle, each of which
    starts with a reset of its own, then shares the one budget.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.spent = 0.0
        self._holders = 0

    def reset(self) -> None:
        if not self._holders:
            self.spent = 0.0

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """A fresh budget for the whole `with` block, not reset by the calls inside it."""
        if not self._holders:
            self.spent = 0.0
        self._holders += 1
        try:
            yield
        finally:
            self._holders -= 1

    @property
    def remaining(self) -> float:
        return max(0.0, self.seconds - self.spent)

    def spend(self, seconds: float) -> None:
        self.spent += seconds


class wait_vendor(wait_base):
    """Wait what the vendor asked for (Retry-After or its rate-limit headers), else the fallback strategy."""

    def __init__(self, fallback: wait_base):
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        asked = getattr(error, "retry_after", None)
        return float(asked) if asked is not None else self.fallback(retry_state)


class stop_when_budget_spent(stop_base):
    """Stop when the next wait would not fit in what is left of the cycle's retry budget."""

    def __init__(self, budget: RetryBudget):
        self.budget = budget

    def __call__(self, retry_state: RetryCallState) -> bool:
        upcoming = getattr(retry_state, "upcoming_sleep", 0.0) or 0.0
        return upcoming > self.budget.remaining


def _worth_retrying(error: BaseException) -> bool:
    return isinstance(error, TransientError) and getattr(error, "retry", True) \
        and not isinstance(error, RetryBudgetSpent)


# -- the client -------------------------------------------------------------------------------


class HttpClient:
    """One adapter's HTTP client: every call paced, retried within the budget, and checked.

    `describe_error(response, now)` and `pause_hint(response, now)` let an adapter
    read its vendor's error body and rate-limit headers; the defaults read the
    common ones. `secrets` are scrubbed from every message this client builds.
    """

    def __init__(self, adapter: str, settings: HttpAdapterSettings, *,
                 headers: Mapping[str, str] | None = None,
                 buckets: Mapping[str, tuple[int, float]] | None = None,
                 describe_error: Callable[[httpx.Response, float], VendorError] = generic_error,
                 pause_hint: Callable[[httpx.Response, float], float | None] = generic_pause_hint,
                 transport: httpx.BaseTransport | None = None,
                 clock: Clock | None = None,
                 secrets: Iterable[str] = ()):
        self.adapter = adapter
        self.clock = clock or Clock()
        self.base_url = settings.base_url
        self._describe_error = describe_error
        self._pause_hint = pause_hint
        self._secrets = [s for s in secrets if s]
        sizes = {"default": (settings.rate_limit_requests, settings.rate_limit_period), **(buckets or {})}
        self.buckets = {name: TokenBucket(n, period, self.clock) for name, (n, period) in sizes.items()}
        self.budget = RetryBudget(settings.retry_budget)
        self._max_attempts = settings.max_attempts
        self._backoff = wait_random_exponential(multiplier=settings.backoff_initial, max=settings.backoff_max)
        timeout = httpx.Timeout(connect=settings.connect_timeout, read=settings.read_timeout,
                                write=settings.read_timeout, pool=settings.connect_timeout)
        self._client = httpx.Client(base_url=settings.base_url, timeout=timeout, transport=transport,
                                    headers={"User-Agent": USER_AGENT, "Accept": "application/json",
                                             **(headers or {})},
                                    follow_redirects=False)

    def __repr__(self) -> str:
        return f"HttpClient(adapter={self.adapter!r}, base_url={self.base_url!r})"

    def new_cycle(self) -> None:
        """Start a new retry budget (the adapter calls this when a cycle's work begins)."""
        self.budget.reset()

    def cycle(self) -> contextlib.AbstractContextManager[None]:
        """Hold one retry budget for a whole engine cycle, across every call the adapter makes in it."""
        return self.budget.held()

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def request(self, method: str, path: str, *, endpoint: str, bucket: str = "default",
                params: Mapping[str, Any] | None = None, json: Any = None) -> httpx.Response:
        """Send one call with the retry policy; a 2xx response, else VendorTransientError/VendorPermanentError.

        `endpoint` names the call in messages and logs (a template such as
        'POST /v4/statuses/{email}'), so addresses in paths are never repeated.
        """
        retrying = Retrying(
            retry=retry_if_exception(_worth_retrying),
            stop=stop_after_attempt(self._max_attempts) | stop_when_budget_spent(self.budget),
            wait=wait_vendor(self._backoff),
            sleep=self._sleep_from_budget,
            before_sleep=lambda state: _notify("retry", self.adapter) or _LOG.info(
                "http_retry", extra={"fields": {"adapter": self.adapter, "endpoint": endpoint,
                                                "attempt": state.attempt_number,
                                                "wait_s": round(state.upcoming_sleep, 3),
                                                "error": str(state.outcome.exception())}}),
            retry_error_callback=lambda state: self._give_up(state, endpoint),
        )
        return retrying(self._attempt, method, path, endpoint, bucket, params, json)

    def parse(self, response: httpx.Response, model: type[Model], endpoint: str) -> Model:
        """The response body as `model`; a PermanentError naming adapter and endpoint if it has another shape."""
        try:
            body = response.json()
        except ValueError:
            raise VendorPermanentError(self.adapter, endpoint, "the answer is not JSON "
                                       f"(content type {response.headers.get('content-type', 'none')!r})",
                                       status=response.status_code) from None
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                                 for e in exc.errors(include_url=False)[:3])
            raise VendorPermanentError(self.adapter, endpoint, f"the answer has an unexpected shape ({problems})",
                                       status=response.status_code) from None

    # -- internals ---------------------------------------------------------------------------

    def _sleep_from_budget(self, seconds: float) -> None:
        self.budget.spend(seconds)
        self.clock.sleep(seconds)

    def _give_up(self, state: RetryCallState, endpoint: str) -> None:
        error = state.outcome.exception()
        upcoming = getattr(state, "upcoming_sleep", 0.0) or 0.0
        if upcoming > self.budget.remaining and state.attempt_number < self._max_attempts:
            raise RetryBudgetSpent(
                self._scrub(f"{self.adapter}: {endpoint}: the retry budget of {self.budget.seconds:g}s for this "
                            f"cycle is spent after {state.attempt_number} attempts; parked for the next cycle. "
                            f"Last error: {error}"),
                retry_after=max(upcoming, getattr(error, "retry_after", None) or 0.0)) from None
        raise error

    def _attempt(self, method: str, path: str, endpoint: str, bucket: str,
                 params: Mapping[str, Any] | None, json: Any) -> httpx.Response:
        limiter = self.buckets[bucket]
        held = limiter.held_for()
        if held > self.budget.remaining:
            raise RetryBudgetSpent(f"{self.adapter}: {endpoint}: the vendor asked for a {held:.1f}s pause, more than "
                                   "this cycle's retry budget has left; parked for the next cycle", retry_after=held)
        if held:
            self.budget.spend(held)
        limiter.acquire()
        try:
            response = self._client.request(method, path, params=params, json=json)
        except httpx.TimeoutException as exc:
            raise VendorTransientError(self.adapter, endpoint, self._scrub(f"timed out ({type(exc).__name__})")) \
                from None
        except httpx.TransportError as exc:
            # Connection refused or reset, DNS failure, a broken answer: the network, not the request.
            raise VendorTransientError(self.adapter, endpoint,
                                       self._scrub(f"connection failed ({type(exc).__name__}: {exc})")) from None
        except httpx.HTTPError as exc:
            raise VendorPermanentError(self.adapter, endpoint,
                                       self._scrub(f"request failed ({type(exc).__name__}: {exc})")) from None
        now = self.clock.time()
        pause = self._pause_hint(response, now)
        if pause:
            limiter.hold(pause)
        if response.is_success:
            self._check_complete(response, endpoint)
            return response
        info = self._describe_error(response, now)
        # Every part a vendor wrote is scrubbed: some quote the credential back, in any field.
        message = self._scrub(info.message)
        category = self._scrub(info.category) if info.category else None
        correlation = self._scrub(info.correlation_id) if info.correlation_id else None
        status = response.status_code
        if status == 429:
            _notify("rate_limited", self.adapter)
        if status in RETRY_STATUSES or status >= 500 or info.transient:
            raise VendorTransientError(self.adapter, endpoint, message, status=status, category=category,
                                       correlation_id=correlation,
                                       retry_after=info.retry_after if info.retry_after is not None else pause,
                                       retry=info.retry)
        if 300 <= status < 400:
            message = self._scrub(f"unexpected redirect to {response.headers.get('location', 'nowhere')!r}")
        raise VendorPermanentError(self.adapter, endpoint, message, status=status, category=category,
                                   correlation_id=correlation)

    def _check_complete(self, response: httpx.Response, endpoint: str) -> None:
        """A 2xx that says it is JSON but does not parse was cut short or garbled on the way: try again.

        Only the transport can break a body that way, so this is transient (a retry is
        safe, since every call is idempotent); valid JSON of the wrong shape is the
        caller's `parse` to report, as a permanent error.
        """
        if not response.content or "json" not in response.headers.get("content-type", "").lower():
            return
        try:
            jsonlib.loads(response.content)
        except ValueError:
            raise VendorTransientError(self.adapter, endpoint, f"the answer is not valid JSON ({len(response.content)} "
                                       "bytes; cut short or garbled on the way)", status=response.status_code) from None

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text
