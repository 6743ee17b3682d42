"""A fake Amazon SES v2 account suppression list, written from ../shared/specs/esp.md and the SES v2 reference.

It checks every request's Signature V4 (recomputed with botocore from the signed
headers, so a wrong key, region or tampered request is refused as AWS would), pages
with NextToken and PageSize, filters by Reason and StartDate/EndDate, and answers
errors with `x-amzn-ErrorType` and `{"message": ...}`. [INFERRED]: the PageSize maximum
(1000) and the message texts.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from .common import Fault, FakeVendor, Reply

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_AUTH = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                   r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})$")


@dataclass
class SesFault(Fault):
    """An injected answer with its AWS error type."""

    error_type: str = "InternalFailure"


class FakeSes(FakeVendor):
    """A stateful SES v2 account (one region) behind `handle(request)`."""

    fault_type = SesFault

    def __init__(self, access_key: str = "AKIAFAKEFAKEFAKE0001", secret_key: str = "fake/secret/key/0123456789",
                 region: str = "eu-west-1", *, max_page: int = 1000, clock: Callable[[], float] = time.time):
        super().__init__(clock)
        self.access_key, self.secret_key, self.region = access_key, secret_key, region
        self.max_page = max_page
        self.entries: dict[str, dict] = {}  # address -> {EmailAddress, Reason, LastUpdateTime}

    def suppress(self, address: str, reason: str = "BOUNCE", *, at: float | None = None) -> None:
        """SES adds an address after a hard bounce or a complaint."""
        with self._lock:
            self.entries[address.lower()] = {"EmailAddress": address.lower(), "Reason": reason,
                                             "LastUpdateTime": self.moment(at)}

    def fail(self, status: int, error_type: str = "InternalFailure", **kwargs) -> Fault:
        """Answer the next matching request(s) with `status` and the AWS error `error_type` instead."""
        return super().fail(status, error_type=error_type, **kwargs)

    def held(self) -> dict[str, str]:
        return {a: e["Reason"] for a, e in self.entries.items()}

    # -- the HTTP side ------------------------------------------------------------------------------------------

    def _error(self, status: int, error_type: str, message: str, headers: dict | None = None) -> httpx.Response:
        return httpx.Response(status, json={"message": message},
                              headers={"x-amzn-ErrorType": f"{error_type}:", "x-amzn-RequestId": "req-1234",
                                       **(headers or {})})

    def _raise(self, status: int, error_type: str, message: str) -> None:
        raise Reply(self._error(status, error_type, message))

    def _handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        params: dict[str, list[str]] = {}
        for key, value in request.url.params.multi_items():
            params.setdefault(key, []).append(value)
        received = self.receive(request, params=params, headers=False)
        body = received.body
        self._verify_signature(request)
        fault = self.injected(received)
        if fault:
            return self._error(fault.status, fault.error_type, fault.message, fault.headers)
        if path == "/v2/email/account" and request.method == "GET":
            return httpx.Response(200, json={"SendingEnabled": True, "ProductionAccessEnabled": True,
                                             "SuppressionAttributes": {"SuppressedReasons": ["BOUNCE", "COMPLAINT"]}})
        if path == "/v2/email/suppression/addresses":
            if request.method == "GET":
                return self._list(params)
            if request.method == "PUT":
                return self._put(body)
        match = re.fullmatch(r"/v2/email/suppression/addresses/(.+)", path)
        if match:
            address = unquote(match.group(1)).lower()
            entry = self.entries.get(address)
            if entry is None:
                self._raise(404, "NotFoundException", f"Email address {address} does not exist on your "
                                                      "suppression list.")
            if request.method == "GET":
                return httpx.Response(200, json={"SuppressedDestination": {
                    "EmailAddress": address, "Reason": entry["Reason"], "LastUpdateTime": entry["LastUpdateTime"],
                    "Attributes": {}}})
            if request.method == "DELETE":
                del self.entries[address]
                return httpx.Response(200, json={})
        self._raise(404, "NotFoundException", "Unknown operation")

    def _verify_signature(self, request: httpx.Request) -> None:
        match = _AUTH.match(request.headers.get("authorization", ""))
        if not match:
            self._raise(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
        access_key, day, region, service, signed_headers, signature = match.groups()
        if access_key != self.access_key:
            self._raise(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
        stamp = request.headers.get("x-amz-date", "")
        if region != self.region or service != "ses" or not stamp.startswith(day):
            self._raise(403, "InvalidSignatureException", "Credential should be scoped to a valid region and "
                                                          "service.")
        headers = {name: request.headers[name] for name in signed_headers.split(";") if name in request.headers}
        checked = AWSRequest(method=request.method, url=str(request.url), data=request.content, headers=headers)
        checked.context["timestamp"] = stamp
        signer = SigV4Auth(Credentials(self.access_key, self.secret_key), "ses", self.region)
        expected = signer.signature(signer.string_to_sign(checked, signer.canonical_request(checked)), checked)
        if expected != signature:
            self._raise(403, "InvalidSignatureException", "The request signature we calculated does not match the "
                                                          "signature you provided.")

    def _list(self, params: dict[str, list[str]]) -> httpx.Response:
        def moment(name: str) -> float | None:
            if name not in params:
                return None
            try:
                return datetime.fromisoformat(params[name][0].replace("Z", "+00:00")).timestamp()
            except ValueError:
                self._raise(400, "BadRequestException", f"Invalid {name}")

        size = int(params.get("PageSize", ["1000"])[0])
        if not 1 <= size <= self.max_page:
            self._raise(400, "BadRequestException", f"PageSize must be between 1 and {self.max_page}")
        since, until, reasons = moment("StartDate"), moment("EndDate"), set(params.get("Reason", []))
        rows = sorted((e for e in self.entries.values()
                       if (since is None or e["LastUpdateTime"] >= since)
                       and (until is None or e["LastUpdateTime"] <= until)
                       and (not reasons or e["Reason"] in reasons)), key=lambda e: e["EmailAddress"])
        start = int(base64.b64decode(params["NextToken"][0]).decode()) if "NextToken" in params else 0
        chunk = rows[start:start + size]
        answer: dict[str, Any] = {"SuppressedDestinationSummaries": [dict(e) for e in chunk]}
        if start + size < len(rows):
            answer["NextToken"] = base64.b64encode(str(start + size).encode()).decode()
        return httpx.Response(200, json=answer)

    def _put(self, body: Any) -> httpx.Response:
        if not isinstance(body, dict) or body.get("Reason") not in ("BOUNCE", "COMPLAINT"):
            self._raise(400, "BadRequestException", "Reason must be BOUNCE or COMPLAINT")
        address = str(body.get("EmailAddress", "")).strip().lower()
        if not _EMAIL.match(address):
            self._raise(400, "BadRequestException", f"Invalid email address {address!r}")
        self.entries[address] = {"EmailAddress": address, "Reason": body["Reason"], "LastUpdateTime": self.clock()}
        return httpx.Response(200, json={})
