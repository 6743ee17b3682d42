"""Amazon SES events through an SNS HTTPS subscription.

Verification [DOC docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html; LIB
aws-php-sns-message-validator]: the body is the SNS message as JSON (sent as text/plain). Its
`TopicArn` must be one of `webhook_topic_arns`; `SigningCertURL` must be https, end in `.pem`
and have a host `sns.<region>.amazonaws.com` (or `.com.cn`); the certificate found there
(fetched once per URL and kept) must verify `Signature` (base64 RSA PKCS#1 v1.5, SHA1 for
`SignatureVersion` 1, SHA256 for 2) over `key\\nvalue\\n` of Message, MessageId, Subject (if
present), SubscribeURL and Token (confirmations), Timestamp, TopicArn and Type, in that order.
SNS signs only values that travel inside the body, so the JSON is decoded to find them and
`Message` is read only after the check holds. `Timestamp` must be within `[webhooks]
sns_max_age` (a retry keeps its message's time; SNS retries for up to an hour [DOC]).

A `SubscriptionConfirmation` is confirmed by a GET of its `SubscribeURL` once the message is
verified and the URL's host passes the same check [DOC]. A `Notification`'s `Message` is an SES
event record [DOC]: `Bounce` with `bounceType` `Permanent` (each `bouncedRecipients[]`) and
`Complaint` (each `complainedRecipients[]`), under `eventType` (configuration-set event
publishing) or `notificationType` (identity notifications); each becomes the suppression SES
lists for it and is mapped by the `ses` adapter's own conversion. De-duplication on `MessageId`
(a retry keeps it [DOC]).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from adapters.ses import SesAdapter, Summary
from state.models import Page

from .common import Event, Incoming, Refused, Verified, json_body, malformed, text, unauthorized

CERT_HOST = re.compile(r"^sns\.[a-zA-Z0-9-]{3,}\.amazonaws\.com(\.cn)?$")
TYPES = ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation")
SIGNED_KEYS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}
# The SES reason each opt-out event stands for, as the suppression list names it (adapters.ses.REASONS).
RECIPIENTS = {"Bounce": ("bounce", "bouncedRecipients", "BOUNCE"),
              "Complaint": ("complaint", "complainedRecipients", "COMPLAINT")}

Fetch = Callable[[str], bytes]


def sns_url_ok(url: str | None, *, pem: bool) -> bool:
    """An https URL on an SNS host (and, for a certificate, ending in .pem)."""
    if not url:
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return (parts.scheme == "https" and parts.port in (None, 443) and not parts.username
            and CERT_HOST.match(parts.hostname or "") is not None and (not pem or parts.path.endswith(".pem")))


# Test-only, like state/failpoint.py: a JSON file {url: file} whose files stand in for SNS's URLs, so
# the end-to-end tests verify against a locally made certificate without any network. Never a setting.
from connector.settings_sources import SNS_TEST_URLS_ENV as TEST_URLS_ENV  # noqa: E402


def fetcher_from_environment() -> Fetch | None:
    """The test-only stand-in fetcher when OPTOUT_SYNC_TEST_SNS_URLS is set, else None."""
    import os

    mapping = os.environ.get(TEST_URLS_ENV)
    if not mapping:
        return None
    with open(mapping, encoding="utf-8") as handle:
        files = json.load(handle)

    def fetch(url: str) -> bytes:
        if url not in files:
            raise OSError(f"{url} is not among the test URLs")
        with open(files[url], "rb") as handle:
            return handle.read()
    return fetch


def fetch_https(url: str) -> bytes:
    """GET an SNS URL (a signing certificate or a SubscribeURL) with short timeouts; its body."""
    import httpx

    response = httpx.get(url, timeout=httpx.Timeout(10.0, connect=5.0), follow_redirects=False)
    response.raise_for_status()
    return response.content


class SesHook:
    """Verifies and maps the SNS deliveries of SES events for one `ses` adapter."""

    kind = "Amazon SES events through SNS (signed messages)"

    def __init__(self, adapter: SesAdapter, max_age: float, fetch: Fetch | None = None):
        self.adapter = adapter.name
        self._ses = adapter
        self._topics = frozenset(adapter.settings.webhook_topic_arns)
        self._max_age = max_age
        self._fetch = fetch or fetcher_from_environment() or fetch_https
        self._certs: dict[str, Any] = {}
        self._lock = threading.Lock()

    def verify(self, request: Incoming) -> Verified:
        try:
            message = json_body(request.body, dict)
        except Refused:
            raise unauthorized("unsigned: the body is not an SNS message") from None
        kind = message.get("Type")
        if kind not in TYPES:
            raise unauthorized("unsigned: not an SNS message type")
        if message.get("TopicArn") not in self._topics:
            raise unauthorized("the message's TopicArn is not in webhook_topic_arns")
        version = message.get("SignatureVersion")
        if version not in ("1", "2"):
            raise unauthorized("unknown SignatureVersion")
        if not sns_url_ok(text(message.get("SigningCertURL")), pem=True):
            raise unauthorized("SigningCertURL is not an https .pem URL on an SNS host")
        stamp = _time(message.get("Timestamp"))
        if stamp is None or abs(request.received_at - stamp) > self._max_age:
            raise unauthorized("stale: the message Timestamp is missing or outside sns_max_age")
        signed = "".join(f"{key}\n{message[key]}\n" for key in SIGNED_KEYS[kind]
                         if isinstance(message.get(key), str))
        try:
            signature = base64.b64decode(text(message.get("Signature")) or "", validate=True)
        except (binascii.Error, ValueError):
            raise unauthorized("the SNS signature is not base64") from None
        self._check(message["SigningCertURL"], signature, signed.encode(), version)
        if kind == "SubscriptionConfirmation":
            return Verified(answer=self._confirm(message))
        if kind == "UnsubscribeConfirmation":
            return Verified(answer="unsubscribe confirmation noted; nothing staged")
        return Verified()

    def _check(self, url: str, signature: bytes, signed: bytes, version: str) -> None:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        key = self._certificate_key(url)
        if not isinstance(key, rsa.RSAPublicKey):
            raise unauthorized("the SNS signing certificate has no RSA key")
        try:
            key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA1() if version == "1" else hashes.SHA256())
        except InvalidSignature:
            raise unauthorized("the SNS signature does not match") from None

    def _certificate_key(self, url: str):
        from cryptography import x509

        with self._lock:
            key = self._certs.get(url)
        if key is not None:
            return key
        try:
            key = x509.load_pem_x509_certificate(self._fetch(url)).public_key()
        except ValueError:
            raise unauthorized("the SNS signing certificate cannot be read") from None
        except Exception as exc:  # the network: answered 503 so that SNS retries
            raise Refused(503, f"the SNS signing certificate cannot be fetched ({type(exc).__name__})") from None
        with self._lock:
            self._certs[url] = key
        return key

    def _confirm(self, message: dict[str, Any]) -> str:
        url = text(message.get("SubscribeURL"))
        if not sns_url_ok(url, pem=False):
            raise unauthorized("SubscribeURL is not an https URL on an SNS host")
        try:
            self._fetch(url)
        except Exception as exc:  # the network: answered 503, SNS sends the confirmation again
            raise Refused(503, f"the subscription could not be confirmed ({type(exc).__name__})") from None
        return "subscription confirmed"

    def events(self, request: Incoming) -> list[Event]:
        message = json_body(request.body, dict)
        identity = text(message.get("MessageId"))
        event = Event(key=f"e:{identity}" if identity else None)
        try:
            record = json.loads(message.get("Message") or "")
        except (TypeError, ValueError):
            raise malformed("the SNS Message is not an SES event record (JSON)") from None
        if not isinstance(record, dict):
            raise malformed("the SNS Message is not an SES event record (JSON object)")
        kind = record.get("eventType") or record.get("notificationType")
        if kind not in RECIPIENTS:
            return [event]
        field, listed, reason = RECIPIENTS[kind]
        body = record.get(field) if isinstance(record.get(field), dict) else {}
        if kind == "Bounce" and body.get("bounceType") != "Permanent":
            return [event]  # Transient and Undetermined bounces are not opt-outs
        moment = _time(body.get("timestamp"))
        page = Page()
        for recipient in body.get(listed) or []:
            address = text(recipient.get("emailAddress")) if isinstance(recipient, dict) else None
            if address:
                self._ses._convert(Summary(EmailAddress=address, Reason=reason, LastUpdateTime=moment), page, True)
        event.optouts, event.rejected = page.optouts, page.rejected
        return [event]


def _time(value: Any) -> float | None:
    """Unix seconds from an ISO 8601 text such as SNS's and SES's `2026-11-28T12:00:00.000Z`."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
