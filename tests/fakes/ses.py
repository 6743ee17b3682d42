"""A fake Amazon SES v2 account suppression list, written from ../shared/specs/esp.md and the SES v2 reference.

It checks every request's Signature V4 (recomputed with botocore from the signed
headers, so a wrong key, region or tampered request is refused as AWS would), pages
with NextToken and PageSize, filters by Reason and StartDate/EndDate, and answers
errors with `x-amzn-ErrorType` and `{"message": ...}`. [INFERRED]: the PageSize maximum
(1000) and the message texts.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_AUTH = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                   r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})$")


@dataclass
class Received:
    """One request the fake received, decoded for assertions."""

    method: str
    path: str
    params: dict[str, list[str]]
    body: Any


@dataclass
class Fault:
    """An answer to give instead of the real one, `times` times, to requests that match."""

    status: int
    error_type: str
    times: int = 1
    path: str | None = None
    method: str | None = None
    message: str = "injected fault"
    headers: dict[str, str] = field(default_factory=dict)


class _Reply(Exception):
    def __init__(self, response: httpx.Response):
        self.response = response


class FakeSes:
    """A stateful SES v2 account (one region) behind `handle(request)`."""

    def __init__(self, access_key: str = "AKIAFAKEFAKEFAKE0001", secret_key: str = "fake/secret/key/0123456789",
                 region: str = "eu-west-1", *, max_page: int = 1000, clock: Callable[[], float] = time.time):
        self.access_key, self.secret_key, self.region = access_key, secret_key, region
        self.max_page = max_page
        self.clock = clock
        self.entries: dict[str, dict] = {}  # address -> {EmailAddress, Reason, LastUpdateTime}
        self.requests: list[Received] = []
        self.statuses: list[int] = []
        self.faults: list[Fault] = []
        self._lock = threading.RLock()

    def suppress(self, address: str, reason: str = "BOUNCE", *, at: float | None = None) -> None:
        """SES adds an address after a hard bounce or a complaint."""
        with self._lock:
            self.entries[address.lower()] = {"EmailAddress": address.lower(), "Reason": reason,
                                             "LastUpdateTime": at if at is not None else self.clock()}

    def fail(self, status: int, error_type: str, **kwargs) -> Fault:
        fault = Fault(status, error_type, **kwargs)
        self.faults.append(fault)
        return fault

    def held(self) -> dict[str, str]:
        return {a: e["Reason"] for a, e in self.entries.items()}

    def calls(self, path: str = "", method: str | None = None) -> list[Received]:
        return [r for r in self.requests if path in r.path and (method is None or r.method == method)]

    # -- the HTTP side ------------------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            try:
                response = self._handle(request)
            except _Reply as reply:
                response = reply.response
            self.statuses.append(response.status_code)
            return response

    def _error(self, status: int, error_type: str, message: str, headers: dict | None = None) -> httpx.Response:
        return httpx.Response(status, json={"message": message},
                              headers={"x-amzn-ErrorType": f"{error_type}:", "x-amzn-RequestId": "req-1234",
                                       **(headers or {})})

    def _raise(self, status: int, error_type: str, message: str) -> None:
        raise _Reply(self._error(status, error_type, message))

    def _handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        params: dict[str, list[str]] = {}
        for key, value in request.url.params.multi_items():
            params.setdefault(key, []).append(value)
        body = json.loads(request.content) if request.content else None
        self.requests.append(Received(request.method, unquote(path), params, body))
        self._verify_signature(request)
        for fault in self.faults:
            if fault.times > 0 and (fault.path is None or fault.path in unquote(path)) \
                    and (fault.method is None or fault.method == request.method):
                fault.times -= 1
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
