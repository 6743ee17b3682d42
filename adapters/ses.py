"""`ses`: opt-out sync with the account-level suppression list of Amazon SES (API v2), one region.

A source of hard bounces and spam complaints; a sink for them too. Requests are signed with
AWS Signature V4 by botocore (the optional `ses` extra): botocore signs and finds the
credentials, while the shared client policy sends, retries and paces as for every vendor.

What this relies on from the SES v2 API reference ([DOC]):
- [DOC] Endpoint https://email.{region}.amazonaws.com; requests signed with SigV4, service `ses`.
- [DOC] `GET /v2/email/suppression/addresses` with `Reason` (BOUNCE, COMPLAINT), `StartDate`,
  `EndDate` (added after/before a date), `NextToken`, `PageSize`; answers
  `{SuppressedDestinationSummaries: [{EmailAddress, Reason, LastUpdateTime}], NextToken}`,
  LastUpdateTime in epoch seconds. The page maximum (1000 here) is [INFERRED]: a setting.
- [DOC] `PUT /v2/email/suppression/addresses` with `{EmailAddress, Reason}` (BOUNCE or
  COMPLAINT only), 200 with an empty body; BadRequestException 400, TooManyRequestsException
  429. `GET|DELETE /v2/email/suppression/addresses/{EmailAddress}` (NotFoundException 404);
  `GET /v2/email/account` is read-only and gives the account's SuppressionAttributes.
- [DOC] Errors name their type in the `x-amzn-ErrorType` header (or `__type`) and carry a
  `message`; `x-amzn-RequestId` identifies the call. [DOC] Throttling can arrive as HTTP 400
  (AWS API references list `ThrottlingException` with status 400 for some services; others use
  `Throttling` or `RequestLimitExceeded`): the codes botocore's standard retry mode retries
  ([LIB] botocore/retries/standard.py) are transient here whatever the status. The call rate SES allows for these
  operations is not stated there: `rate_limit_requests` / `rate_limit_period` are settings.

Mapping: BOUNCE -> hard_bounce, COMPLAINT -> spam_complaint, scope `*`, origin system.
SES has no "unsubscribed" reason and no topics: writing an unsubscribe there would record it
as a bounce or complaint, so opt-outs of other reasons are refused per item unless
`write_other_reasons_as` names the SES reason to use. Each write looks the address up first,
so an existing entry is ALREADY and a complaint is never overwritten by a bounce.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from state.addresses import InvalidAddress, normalise_address
from state.errors import ConfigError, TransientError
from state.models import (
    ALREADY,
    APPLIED,
    GLOBAL_SCOPE,
    PERMANENT,
    TRANSIENT,
    ApplyResult,
    OptOut,
    Page,
    Rejected,
    to_utc_iso,
)

from .base import Capabilities, Duration
from .http import (
    Clock,
    HttpAdapterSettings,
    HttpClient,
    RetryBudgetSpent,
    VendorError,
    VendorPermanentError,
    generic_pause_hint,
    parse_retry_after,
)

try:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from botocore.exceptions import BotoCoreError
    from botocore.session import Session
except ImportError:  # the optional `ses` extra is not installed; the adapter says so when built
    SigV4Auth = None  # type: ignore[assignment,misc]

ADDRESSES = "/v2/email/suppression/addresses"
ACCOUNT = "/v2/email/account"
REASONS = {"BOUNCE": "hard_bounce", "COMPLAINT": "spam_complaint"}
SES_REASON_OF = {"hard_bounce": "BOUNCE", "spam_complaint": "COMPLAINT"}
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
CURSOR_VERSION = 1


class SesSettings(HttpAdapterSettings):
    """Settings of an `ses` adapter instance (one per AWS account and region).

    Without `access_key_id` / `secret_access_key` the credentials come from botocore's
    usual chain (environment, shared files with `profile`, container or instance role).
    """

    type: Literal["ses"] = "ses"
    base_url: str = ""  # https://email.{region}.amazonaws.com unless set
    region: str = Field(description="The AWS region of the SES account, such as eu-west-1.", examples=["eu-west-1"])
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    profile: str | None = None
    page_size: int = Field(default=1000, ge=1, le=1000)
    # Seconds re-read before the newest LastUpdateTime seen (late or re-suppressed entries).
    overlap: Duration = 3600.0
    # SES records only bounces and complaints; None refuses other opt-outs instead of mislabelling them.
    write_other_reasons_as: Literal["BOUNCE", "COMPLAINT"] | None = None
    rate_limit_requests: int = Field(default=1, ge=1)
    rate_limit_period: Duration = 1.0
    # SNS topics whose SES events are received at /hooks/<name>; empty: no receiver.
    webhook_topic_arns: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _endpoint_from_region(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("base_url") and isinstance(data.get("region"), str):
            data = {**data, "base_url": f"https://email.{data['region'].strip()}.amazonaws.com"}
        return data

    @model_validator(mode="after")
    def _region_and_keys(self) -> "SesSettings":
        if not _REGION.match(self.region):
            raise ValueError(f"expected an AWS region such as 'eu-west-1', got {self.region!r}")
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key are given together or not at all")
        if self.session_token is not None and self.access_key_id is None:
            raise ValueError("session_token needs access_key_id and secret_access_key")
        if self.topics:
            raise ValueError("SES has no topics: leave topics empty")
        return self


# -- SES's answers, as far as this adapter relies on them ------------------------------------------------


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Summary(_Answer):
    EmailAddress: str
    Reason: str
    LastUpdateTime: float | None = None


class SummaryPage(_Answer):
    SuppressedDestinationSummaries: list[Summary]
    NextToken: str | None = None


class Destination(_Answer):
    EmailAddress: str
    Reason: str


class DestinationAnswer(_Answer):
    SuppressedDestination: Destination


class Account(_Answer):
    SendingEnabled: bool | None = None
    SuppressionAttributes: dict[str, Any] | None = None


class UnexpectedAnswer(VendorPermanentError):
    """A 2xx answer that this adapter cannot read: an adapter-level failure, never an item's."""


# AWS error codes that mean "slow down" or "try again", whatever the HTTP status (throttling often
# arrives as a 400): the codes botocore's standard retry mode retries. Read from botocore where it
# keeps them (botocore/retries/standard.py: ThrottledRetryableChecker._THROTTLED_ERROR_CODES and
# TransientRetryableChecker._TRANSIENT_ERROR_CODES); the copy (botocore 1.44) stands in if a botocore
# release moves them.
_AWS_RETRY_CODES_COPY = (
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException", "TransactionInProgressException",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "LimitExceededException", "RequestThrottled",
    "SlowDown", "PriorRequestNotComplete", "EC2ThrottledException",
    "RequestTimeout", "RequestTimeoutException",
)


def _aws_retry_codes() -> frozenset[str]:
    try:
        from botocore.retries.standard import ThrottledRetryableChecker, TransientRetryableChecker
        found = (list(ThrottledRetryableChecker._THROTTLED_ERROR_CODES)
                 + list(TransientRetryableChecker._TRANSIENT_ERROR_CODES))
    except (ImportError, AttributeError, TypeError):
        found = []
    return frozenset(found) | frozenset(_AWS_RETRY_CODES_COPY)


AWS_RETRY_CODES = _aws_retry_codes()


def ses_error(response: httpx.Response, now: float) -> VendorError:
    """The AWS error type (x-amzn-ErrorType or `__type`), its message, request id and Retry-After.

    A throttling code is transient whatever the status: AWS sends `Throttling` and the like as 400.
    """
    try:
        body = response.json()
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else {}
    kind = response.headers.get("x-amzn-errortype") or str(body.get("__type") or body.get("code") or "")
    kind = kind.split(":")[0].split("#")[-1] or None
    message = str(body.get("message") or body.get("Message") or response.reason_phrase or "no message")
    return VendorError(message, kind, response.headers.get("x-amzn-requestid"),
                       parse_retry_after(response.headers.get("retry-after"), now),
                       transient=kind in AWS_RETRY_CODES)


class SigV4Transport(httpx.BaseTransport):
    """Signs each request (each retry anew) with AWS Signature V4 before the wrapped transport sends it."""

    def __init__(self, inner: httpx.BaseTransport, credentials: Any, region: str, service: str = "ses"):
        self.inner, self.credentials, self.region, self.service = inner, credentials, region, service

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        # Refreshable credentials (roles) are frozen per request, so one signature uses one key set.
        frozen = self.credentials.get_frozen_credentials()
        body = request.read()
        signed = AWSRequest(method=request.method, url=str(request.url), data=body,
                            headers={"Host": request.headers["host"],
                                     **({"Content-Type": request.headers["content-type"]}
                                        if "content-type" in request.headers else {})})
        SigV4Auth(frozen, self.service, self.region).add_auth(signed)
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
            if name in signed.headers:
                request.headers[name] = signed.headers[name]
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def _credentials(settings: SesSettings) -> Any:
    if settings.access_key_id is not None and settings.secret_access_key is not None:
        return Credentials(settings.access_key_id.get_secret_value(), settings.secret_access_key.get_secret_value(),
                           settings.session_token.get_secret_value() if settings.session_token else None)
    try:
        found = Session(profile=settings.profile).get_credentials()
    except BotoCoreError as exc:
        raise ConfigError(f"{settings.name}: cannot load AWS credentials: {exc}") from None
    if found is None:
        raise ConfigError(f"{settings.name}: no AWS credentials found (set access_key_id and secret_access_key, "
                          "or provide them through the environment, a profile or a role)")
    return found


# -- the adapter ----------------------------------------------------------------------------------------


class SesAdapter:
    """Reads and writes the SES account-level suppression list of one region."""

    settings_model = SesSettings

    def __init__(self, settings: SesSettings, topics: dict[str, str],
                 transport: httpx.BaseTransport | None = None, clock: Clock | None = None):
        if SigV4Auth is None:
            raise ConfigError(f"{settings.name}: the ses adapter needs botocore; install optout-sync[ses]")
        # botocore logs canonical requests at debug level, signed header values (a session token) included.
        logging.getLogger("botocore.auth").setLevel(logging.INFO)
        self.settings = settings
        self.name = settings.name
        self.capabilities = Capabilities(read_changes=True, read_all=True, write=True, remove=True, batch_size=100)
        credentials = _credentials(settings)
        frozen = credentials.get_frozen_credentials()
        signing = SigV4Transport(transport or httpx.HTTPTransport(), credentials, settings.region)
        self.http = HttpClient(settings.name, settings, describe_error=ses_error, pause_hint=generic_pause_hint,
                               transport=signing, clock=clock,
                               secrets=[s for s in (frozen.secret_key, frozen.token) if s])
        self.clock = self.http.clock

    def __repr__(self) -> str:
        return f"SesAdapter(name={self.name!r}, region={self.settings.region!r})"

    # -- reading --------------------------------------------------------------------------------------

    def read_changes(self, cursor: str | None) -> Iterator[Page]:
        """Entries with LastUpdateTime after the newest seen minus `overlap`; the cursor goes with the last page."""
        self.http.new_cycle()
        newest = self._load_cursor(cursor)
        params = {}
        if newest is not None:
            since = datetime.fromtimestamp(newest - self.settings.overlap, timezone.utc)
            params["StartDate"] = since.strftime("%Y-%m-%dT%H:%M:%SZ")
        seen = newest
        held: Page | None = None
        for page, page_newest in self._pages(params, listed_up_to=newest):
            if page_newest is not None and (seen is None or page_newest > seen):
                seen = page_newest
            if held is not None:
                yield held
            held = page
        held = held or Page()
        held.cursor = json.dumps({"v": CURSOR_VERSION, "newest": seen}, separators=(",", ":"))
        yield held

    def read_all(self) -> Iterator[Page]:
        """The whole suppression list, page by page (for reconcile)."""
        self.http.new_cycle()
        for page, _ in self._pages({}, listed_up_to=None, list_problems=False):
            if page.optouts:
                yield Page(page.optouts)

    def _load_cursor(self, cursor: str | None) -> float | None:
        if cursor is None:
            return None
        try:
            saved = json.loads(cursor)
            if saved.get("v") != CURSOR_VERSION:
                raise ValueError("unknown cursor version")
            return float(saved["newest"]) if saved.get("newest") is not None else None
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise VendorPermanentError(self.name, "read cursor", f"the saved cursor is not one this adapter "
                                       f"wrote ({exc}); reset it to read from the start") from None

    def _pages(self, params: dict[str, str], listed_up_to: float | None,
               list_problems: bool = True) -> Iterator[tuple[Page, float | None]]:
        endpoint = f"GET {ADDRESSES}"
        token: str | None = None
        tokens_seen: set[str] = set()
        while True:
            query = {**params, "PageSize": str(self.settings.page_size), **({"NextToken": token} if token else {})}
            answer = self._parse(self.http.request("GET", ADDRESSES, endpoint=endpoint, params=query),
                                 SummaryPage, endpoint)
            page, newest = Page(), None
            for item in answer.SuppressedDestinationSummaries:
                when = item.LastUpdateTime
                if when is not None and (newest is None or when > newest):
                    newest = when
                self._convert(item, page, list_problems and (listed_up_to is None or (when or 0) > listed_up_to))
            yield page, newest
            if not answer.NextToken:
                return
            if answer.NextToken in tokens_seen:
                raise UnexpectedAnswer(self.name, endpoint, "NextToken repeats an earlier one", status=200)
            tokens_seen.add(answer.NextToken)
            token = answer.NextToken

    def _convert(self, item: Summary, page: Page, new: bool) -> None:
        try:
            address = normalise_address(item.EmailAddress)
        except InvalidAddress as exc:
            if new:
                page.rejected.append(Rejected("SES suppression list", item.EmailAddress,
                                              f"invalid address {item.EmailAddress!r}: {exc}"))
            return
        reason = REASONS.get(item.Reason)
        if reason is None:
            if new:
                page.rejected.append(Rejected("SES suppression list", address,
                                              f"{address}: unknown SES reason {item.Reason!r}; not applied"))
            return
        occurred = (to_utc_iso(datetime.fromtimestamp(item.LastUpdateTime, timezone.utc))
                    if item.LastUpdateTime is not None else None)
        page.optouts.append(OptOut(address, GLOBAL_SCOPE, reason, "system", occurred, {"ses_reason": item.Reason}))

    # -- writing ----------------------------------------------------------------------------------------

    def apply(self, batch: list[OptOut]) -> list[ApplyResult]:
        """Put each opt-out on the suppression list (looked up first); one result per item."""
        self.http.new_cycle()
        results: list[ApplyResult | None] = [None] * len(batch)
        for position, optout in enumerate(batch):
            wanted = SES_REASON_OF.get(optout.reason) or self.settings.write_other_reasons_as
            if optout.scope != GLOBAL_SCOPE:
                results[position] = ApplyResult(optout, PERMANENT, "SES has no topics; only all-email opt-outs "
                                                                   "can be written")
                continue
            if wanted is None:
                results[position] = ApplyResult(optout, PERMANENT, (
                    f"SES records only bounces and complaints; a {optout.reason} opt-out is not written unless "
                    "write_other_reasons_as is set"))
                continue
            try:
                held = self._lookup(optout.address)
                if held is not None and (held == wanted or held == "COMPLAINT"):
                    results[position] = ApplyResult(optout, ALREADY, f"SES holds it as {held}")
                    continue
                self.http.request("PUT", ADDRESSES, endpoint=f"PUT {ADDRESSES}",
                                  json={"EmailAddress": optout.address, "Reason": wanted})
                # Read back, the entry is a bounce or complaint: our echo, not news (held_as).
                results[position] = ApplyResult(optout, APPLIED, f"SES reason {wanted}", held_as=REASONS[wanted])
            except VendorPermanentError as exc:
                if exc.status in (401, 403) or exc.status is None:
                    raise  # credentials or permissions: the adapter, not this address
                results[position] = ApplyResult(optout, PERMANENT, str(exc))
            except RetryBudgetSpent as exc:
                for rest in range(position, len(batch)):
                    results[rest] = results[rest] or ApplyResult(batch[rest], TRANSIENT, str(exc))
                break
            except TransientError as exc:
                results[position] = ApplyResult(optout, TRANSIENT, str(exc))
        return self._finished(batch, results)

    def remove(self, batch: list[OptOut]) -> list[ApplyResult]:
        """For an audited lift: delete an entry, unless SES holds a complaint the lift is not about."""
        self.http.new_cycle()
        results: list[ApplyResult | None] = [None] * len(batch)
        for position, optout in enumerate(batch):
            try:
                held = self._lookup(optout.address)
                if held is None:
                    results[position] = ApplyResult(optout, ALREADY, "SES holds no entry")
                    continue
                if held == "COMPLAINT" and optout.reason != "spam_complaint":
                    results[position] = ApplyResult(optout, PERMANENT, (
                        "SES holds a complaint for this address; a complaint is never lifted by this daemon"))
                    continue
                self.http.request("DELETE", self._address_path(optout.address),
                                  endpoint=f"DELETE {ADDRESSES}/{{email}}")
                results[position] = ApplyResult(optout, APPLIED)
            except VendorPermanentError as exc:
                if exc.status in (401, 403) or exc.status is None:
                    raise
                results[position] = ApplyResult(optout, ALREADY if exc.status == 404 else PERMANENT, str(exc))
            except RetryBudgetSpent as exc:
                for rest in range(position, len(batch)):
                    results[rest] = results[rest] or ApplyResult(batch[rest], TRANSIENT, str(exc))
                break
            except TransientError as exc:
                results[position] = ApplyResult(optout, TRANSIENT, str(exc))
        return self._finished(batch, results)

    def _lookup(self, address: str) -> str | None:
        """The SES reason an address is held for, or None."""
        endpoint = f"GET {ADDRESSES}/{{email}}"
        try:
            response = self.http.request("GET", self._address_path(address), endpoint=endpoint)
        except VendorPermanentError as exc:
            if exc.status == 404:
                return None
            raise
        return self._parse(response, DestinationAnswer, endpoint).SuppressedDestination.Reason

    def _finished(self, batch: list[OptOut], results: list[ApplyResult | None]) -> list[ApplyResult]:
        done = [r for r in results if r is not None]
        if len(done) != len(batch):
            raise UnexpectedAnswer(self.name, "apply", "some items got no outcome", status=None)
        if done and all(r.outcome == TRANSIENT for r in done):
            raise TransientError(f"{self.name}: no item of the batch could be sent: {done[0].message}")
        return done

    # -- operator checks --------------------------------------------------------------------------------

    def check(self) -> list[str]:
        """Verify credentials and region with the read-only account lookup; changes nothing."""
        self.http.new_cycle()
        endpoint = f"GET {ACCOUNT}"
        account = self._parse(self.http.request("GET", ACCOUNT, endpoint=endpoint), Account, endpoint)
        reasons = (account.SuppressionAttributes or {}).get("SuppressedReasons") or []
        # Shown as text whatever shape it has: an odd answer here must be reported, not crash the check.
        reasons = [str(r) for r in reasons] if isinstance(reasons, list) else [str(reasons)]
        lines = [f"region {self.settings.region}: credentials valid; sending "
                 f"{'enabled' if account.SendingEnabled else 'not enabled'}",
                 "account suppression list adds automatically on: " + (", ".join(reasons) or "nothing"),
                 "SES has no topics: topic opt-outs are skipped here (or sent as all email with "
                 "unmapped_topics = global)"]
        self.http.request("GET", ADDRESSES, endpoint=f"GET {ADDRESSES}", params={"PageSize": "1"})
        lines.append("suppression list: readable")
        return lines

    def close(self) -> None:
        """Close the HTTP connections."""
        self.http.close()

    def _address_path(self, address: str) -> str:
        return f"{ADDRESSES}/{quote(address, safe='@')}"

    def _parse(self, response: httpx.Response, model: type, endpoint: str):
        try:
            return self.http.parse(response, model, endpoint)
        except VendorPermanentError as exc:
            raise UnexpectedAnswer(self.name, endpoint, exc.vendor_message, status=exc.status) from None
