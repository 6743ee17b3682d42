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
`write_other_reasons_as` names the SES reason to use. A write looks the address up first, so
an existing entry is ALREADY and a complaint is never overwritten by a bounce, except a spam
complaint's: that is one idempotent PUT with no look-up (a complaint overwrites nothing it should
not, and the store holds the complaint already, so "already held" would change nothing).

Re-subscribes (issue 17): none. Confirmed (docs.aws.amazon.com, SES API v2
DeleteSuppressedDestination, found with the search tool): an entry leaves the account suppression
list only by that call (the account's own API or console); a recipient cannot remove it, and the
list keeps no record of a removal. Its entries are bounces and complaints, which a re-subscribe never
releases anyway. An entry removed at SES is drift: a reconcile re-applies it.
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
from state.errors import ConfigError
from state.models import ALREADY, APPLIED, GLOBAL_SCOPE, PERMANENT, ApplyResult, OptOut, Page, Rejected, to_utc_iso

from .base import Capabilities, Duration
from .http import Clock, HttpAdapterSettings, VendorError, VendorPermanentError, generic_pause_hint
from .kit import HttpAdapter, Outcomes, json_body, newest_on_last_page, vendor_error
from .kit import UnexpectedAnswer  # noqa: F401  (re-exported: callers catch it from the vendor module)

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
    body = json_body(response)
    kind = response.headers.get("x-amzn-errortype") or str(body.get("__type") or body.get("code") or "")
    kind = kind.split(":")[0].split("#")[-1] or None
    return vendor_error(response, now, str(body.get("message") or body.get("Message") or "") or None, kind,
                        response.headers.get("x-amzn-requestid"), transient=kind in AWS_RETRY_CODES)


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


class SesAdapter(HttpAdapter):
    """Reads and writes the SES account-level suppression list of one region."""

    settings_model = SesSettings
    shown = ("region",)

    def __init__(self, settings: SesSettings, topics: dict[str, str],
                 transport: httpx.BaseTransport | None = None, clock: Clock | None = None):
        if SigV4Auth is None:
            raise ConfigError(f"{settings.name}: the ses adapter needs botocore; install optout-sync[ses]")
        # botocore logs canonical requests at debug level, signed header values (a session token) included.
        logging.getLogger("botocore.auth").setLevel(logging.INFO)
        self.capabilities = Capabilities(read_changes=True, read_all=True, write=True, remove=True, batch_size=100)
        credentials = _credentials(settings)
        frozen = credentials.get_frozen_credentials()
        signing = SigV4Transport(transport or httpx.HTTPTransport(), credentials, settings.region)
        self.start(settings, describe_error=ses_error, pause_hint=generic_pause_hint, transport=signing, clock=clock,
                   secrets=[s for s in (frozen.secret_key, frozen.token) if s])

    # -- reading --------------------------------------------------------------------------------------

    def read_changes(self, cursor: str | None) -> Iterator[Page]:
        """Entries with LastUpdateTime after the newest seen minus `overlap`; the cursor goes with the last page."""
        self.http.new_cycle()
        newest = self.load_cursor(cursor, lambda saved: float(saved["newest"]) if saved.get("newest") is not None
                                  else None)
        params = {}
        if newest is not None:
            since = datetime.fromtimestamp(newest - self.settings.overlap, timezone.utc)
            params["StartDate"] = since.strftime("%Y-%m-%dT%H:%M:%SZ")
        # Key order as saved since the first release ("v" first): cursors compare as text in tests.
        yield from newest_on_last_page(self._pages(params, listed_up_to=newest), newest,
                                       lambda seen: json.dumps({"v": 1, "newest": seen}, separators=(",", ":")))

    def read_all(self) -> Iterator[Page]:
        """The whole suppression list, page by page (for reconcile)."""
        self.http.new_cycle()
        for page, _ in self._pages({}, listed_up_to=None, list_problems=False):
            if page.optouts:
                yield Page(page.optouts)

    def _pages(self, params: dict[str, str], listed_up_to: float | None,
               list_problems: bool = True) -> Iterator[tuple[Page, float | None]]:
        endpoint = f"GET {ADDRESSES}"

        def fetch(token: str | None) -> tuple[list[Summary], str | None]:
            query = {**params, "PageSize": str(self.settings.page_size), **({"NextToken": token} if token else {})}
            answer = self.get(ADDRESSES, SummaryPage, endpoint, params=query)
            return answer.SuppressedDestinationSummaries, answer.NextToken or None

        for items in self.follow(fetch, endpoint):
            page, newest = Page(), None
            for item in items:
                when = item.LastUpdateTime
                if when is not None and (newest is None or when > newest):
                    newest = when
                self._convert(item, page, list_problems and (listed_up_to is None or (when or 0) > listed_up_to))
            yield page, newest

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
        outcomes = Outcomes(self.name, batch)
        self.each(outcomes, range(len(batch)), self._put)
        return outcomes.finished()

    def _put(self, optout: OptOut) -> ApplyResult:
        wanted = SES_REASON_OF.get(optout.reason) or self.settings.write_other_reasons_as
        if optout.scope != GLOBAL_SCOPE:
            return ApplyResult(optout, PERMANENT, "SES has no topics; only all-email opt-outs can be written")
        if wanted is None:
            return ApplyResult(optout, PERMANENT, (
                f"SES records only bounces and complaints; a {optout.reason} opt-out is not written unless "
                "write_other_reasons_as is set"))
        # A spam complaint's write needs no look-up: the PUT is idempotent, a complaint overwrites nothing
        # it should not, and whether SES held one before changes nothing later (the store holds the
        # complaint already, and complaints are never lifted). Anything else is looked up first: a bounce
        # must never replace a complaint, and an opt-out written as a complaint (write_other_reasons_as)
        # must not hide one SES held before, which is news.
        held = None if optout.reason == "spam_complaint" else self._lookup(optout.address)
        if held is not None and (held == wanted or held == "COMPLAINT"):
            return ApplyResult(optout, ALREADY, f"SES holds it as {held}")
        self.http.request("PUT", ADDRESSES, endpoint=f"PUT {ADDRESSES}",
                          json={"EmailAddress": optout.address, "Reason": wanted})
        # Read back, the entry is a bounce or complaint: our echo, not news (held_as).
        return ApplyResult(optout, APPLIED, f"SES reason {wanted}", held_as=REASONS[wanted])

    def remove(self, batch: list[OptOut]) -> list[ApplyResult]:
        """For an audited lift: delete an entry, unless SES holds a complaint the lift is not about."""
        self.http.new_cycle()
        outcomes = Outcomes(self.name, batch)
        self.each(outcomes, range(len(batch)), self._delete,
                  lambda o, exc: ApplyResult(o, ALREADY if exc.status == 404 else PERMANENT, str(exc)))
        return outcomes.finished()

    def _delete(self, optout: OptOut) -> ApplyResult:
        held = self._lookup(optout.address)
        if held is None:
            return ApplyResult(optout, ALREADY, "SES holds no entry")
        if held == "COMPLAINT" and optout.reason != "spam_complaint":
            return ApplyResult(optout, PERMANENT, (
                "SES holds a complaint for this address; a complaint is never lifted by this daemon"))
        self.http.request("DELETE", self._address_path(optout.address), endpoint=f"DELETE {ADDRESSES}/{{email}}")
        return ApplyResult(optout, APPLIED)

    def _lookup(self, address: str) -> str | None:
        """The SES reason an address is held for, or None."""
        endpoint = f"GET {ADDRESSES}/{{email}}"
        try:
            response = self.http.request("GET", self._address_path(address), endpoint=endpoint)
        except VendorPermanentError as exc:
            if exc.status == 404:
                return None
            raise
        return self.parse(response, DestinationAnswer, endpoint).SuppressedDestination.Reason

    # -- operator checks --------------------------------------------------------------------------------

    def probe(self) -> list[str]:
        """Verify credentials and region with the read-only account lookup; changes nothing."""
        account = self.get(ACCOUNT, Account)
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

    def _address_path(self, address: str) -> str:
        return f"{ADDRESSES}/{quote(address, safe='@')}"

    def _parse(self, response: httpx.Response, model: type, endpoint: str):
        try:
            return self.http.parse(response, model, endpoint)
        except VendorPermanentError as exc:
            raise UnexpectedAnswer(self.name, endpoint, exc.vendor_message, status=exc.status) from None
