"""Sign webhook requests as each vendor does, with keys and a certificate made here (no network).

Each `*_request` returns (path suffix, headers, body) for one event, signed with the test keys;
the receiver's own verification code never sees these helpers.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
import time
from functools import lru_cache
from urllib.parse import urlencode

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

MAILGUN_KEY = "mailgun-webhook-signing-key-0123456789"
POSTMARK_USER, POSTMARK_PASSWORD = "optout-sync", "postmark-basic-auth-password-42"
MAILCHIMP_SECRET = "mailchimp-path-secret-0123456789abcdef"
TOPIC_ARN = "arn:aws:sns:eu-west-1:123456789012:ses-events"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"


@lru_cache(maxsize=None)
def sendgrid_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def sendgrid_public_key() -> str:
    """The verification key as SendGrid shows it: base64 DER SubjectPublicKeyInfo."""
    der = sendgrid_key().public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def sendgrid_request(events: list[dict], *, at: float | None = None, key=None) -> tuple[str, dict, bytes]:
    body = json.dumps(events).encode()
    stamp = str(int(at if at is not None else time.time()))
    signature = (key or sendgrid_key()).sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return "", {"Content-Type": "application/json", "X-Twilio-Email-Event-Webhook-Signature":
                base64.b64encode(signature).decode(), "X-Twilio-Email-Event-Webhook-Timestamp": stamp}, body


def sendgrid_event(email: str, event: str = "unsubscribe", **fields) -> dict:
    return {"email": email, "event": event, "timestamp": int(time.time()),
            "sg_event_id": fields.pop("sg_event_id", secrets.token_urlsafe(16)), **fields}


def mailgun_request(event_data: dict, *, at: float | None = None, key: str = MAILGUN_KEY,
                    token: str | None = None) -> tuple[str, dict, bytes]:
    stamp = str(int(at if at is not None else time.time()))
    token = token or secrets.token_hex(25)
    signature = hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    body = json.dumps({"signature": {"timestamp": stamp, "token": token, "signature": signature},
                       "event-data": event_data}).encode()
    return "", {"Content-Type": "application/json"}, body


def mailgun_event(recipient: str, event: str = "unsubscribed", **fields) -> dict:
    return {"event": event, "id": fields.pop("id", secrets.token_urlsafe(12)), "timestamp": time.time(),
            "recipient": recipient, **fields}


def postmark_request(payload: dict, *, user: str = POSTMARK_USER, password: str = POSTMARK_PASSWORD
                     ) -> tuple[str, dict, bytes]:
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
    return "", {"Content-Type": "application/json", "Authorization": f"Basic {credentials}"}, \
        json.dumps(payload).encode()


def postmark_unsubscribe(recipient: str, stream: str = "outbound", **fields) -> dict:
    return {"RecordType": "SubscriptionChange", "Recipient": recipient, "MessageStream": stream,
            "ChangedAt": dt.datetime.now(dt.timezone.utc).isoformat(), "SuppressSending": True,
            "SuppressionReason": "ManualSuppression", "Origin": "Recipient", **fields}


def mailchimp_request(fields: dict, *, secret: str = MAILCHIMP_SECRET) -> tuple[str, dict, bytes]:
    return f"/{secret}", {"Content-Type": "application/x-www-form-urlencoded"}, urlencode(fields).encode()


def mailchimp_unsubscribe(email: str, list_id: str, **extra) -> dict:
    return {"type": "unsubscribe", "fired_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
            "data[email]": email, "data[list_id]": list_id, "data[action]": "unsub", "data[reason]": "manual",
            **extra}


@lru_cache(maxsize=None)
def sns_key_and_cert() -> tuple[rsa.RSAPrivateKey, bytes]:
    """An RSA key and a self-signed certificate standing in for SNS's signing certificate."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256()))
    return key, cert.public_bytes(serialization.Encoding.PEM)


def sns_fetch_from(urls: dict[str, bytes], fetched: list[str] | None = None):
    """A fetcher for the receiver that serves `urls` from memory and records every URL asked for."""
    def fetch(url: str) -> bytes:
        if fetched is not None:
            fetched.append(url)
        if url not in urls:
            raise OSError(f"no such test URL {url}")
        return urls[url]
    return fetch


def sns_message(message: dict | str, *, kind: str = "Notification", topic: str = TOPIC_ARN,
                at: dt.datetime | None = None, version: str = "1", cert_url: str = CERT_URL, key=None,
                message_id: str | None = None, **extra) -> dict:
    fields = {"Type": kind, "MessageId": message_id or secrets.token_hex(16), "TopicArn": topic,
              "Message": message if isinstance(message, str) else json.dumps(message),
              "Timestamp": (at or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
              "SignatureVersion": version, "SigningCertURL": cert_url, **extra}
    order = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type") if kind == "Notification" else (
        "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
    signed = "".join(f"{k}\n{fields[k]}\n" for k in order if k in fields).encode()
    digest = hashes.SHA1() if version == "1" else hashes.SHA256()
    fields["Signature"] = base64.b64encode((key or sns_key_and_cert()[0]).sign(signed, padding.PKCS1v15(),
                                                                             digest)).decode()
    return fields


def ses_bounce(*addresses: str, bounce_type: str = "Permanent") -> dict:
    now = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    return {"eventType": "Bounce", "mail": {"messageId": secrets.token_hex(8), "timestamp": now},
            "bounce": {"bounceType": bounce_type, "bounceSubType": "General", "timestamp": now,
                       "bouncedRecipients": [{"emailAddress": a} for a in addresses]}}


def ses_request(message: dict) -> tuple[str, dict, bytes]:
    return "", {"Content-Type": "text/plain; charset=UTF-8", "x-amz-sns-message-type": message["Type"]}, \
        json.dumps(message).encode()
