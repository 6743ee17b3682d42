"""A corpus of hostile webhook requests: forged, unsigned, stale, replayed, malformed, oversized, slow.

`corpus(replays)` yields (label, send) pairs; `send(host, port)` performs the request on its own
socket and returns the status code it got (0: the connection was closed without an answer).
`replays` are requests that were accepted before: sending them again is a replay.
"""

from __future__ import annotations

import json
import random
import socket
import time
from collections.abc import Callable, Iterator

from . import webhook_signing as sign

Send = Callable[[str, int], int]
LIST = "a1b2c3d4e5"


def _status(data: bytes) -> int:
    try:
        return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    except (IndexError, ValueError):
        return 0


def _exchange(host: str, port: int, payload: bytes, *, pause_after: int | None = None, pause: float = 0.0,
              timeout: float = 15.0) -> int:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            if pause_after is None:
                sock.sendall(payload)
            else:
                sock.sendall(payload[:pause_after])
                time.sleep(pause)
                sock.sendall(payload[pause_after:])
        except OSError:
            pass  # the server may answer (413, 400) and close before all of it is sent
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            return _status(data)
        return _status(data)


def http(method: str, path: str, headers: dict[str, str], body: bytes, *, stall: str | None = None,
         pause: float = 0.0) -> Send:
    """A raw request; `stall` = "headers" (in the middle of them) or "body" (half of it sent) pauses there."""
    lines = [f"{method} {path} HTTP/1.1", "Host: hooks.test", "Connection: close",
             *(f"{k}: {v}" for k, v in headers.items())]
    if not any(k.lower() in ("content-length", "transfer-encoding") for k in headers):
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    at = None if stall is None else 20 if stall == "headers" else len(head) + len(body) // 2
    return lambda host, port: _exchange(host, port, head + body, pause_after=at, pause=pause)


def signed(name: str, request: tuple[str, dict, bytes]) -> Send:
    suffix, headers, body = request
    return http("POST", f"/hooks/{name}{suffix}", headers, body)


def valid_requests() -> list[tuple[str, tuple[str, dict, bytes]]]:
    """Signed requests that are accepted (sent before the corpus, replayed within it)."""
    return [("sg", sign.sendgrid_request([sign.sendgrid_event(f"ok{i}@example.com")])) for i in range(10)] + [
        ("mg", sign.mailgun_request(sign.mailgun_event(f"ok{i}@example.com"))) for i in range(10)]


def corpus(replays: list[tuple[str, tuple[str, dict, bytes]]], seed: int = 18) -> Iterator[tuple[str, Send]]:
    rng = random.Random(seed)
    other_ec = sign.ec.generate_private_key(sign.ec.SECP256R1())
    other_rsa = sign.rsa.generate_private_key(public_exponent=65537, key_size=2048)
    old = time.time() - 7200
    for i in range(5):
        a = f"forged{i}@example.com"
        yield "forged sendgrid", signed("sg", sign.sendgrid_request([sign.sendgrid_event(a)], key=other_ec))
        yield "forged mailgun", signed("mg", sign.mailgun_request(sign.mailgun_event(a), key="not-the-key"))
        yield "forged postmark", signed("pm", sign.postmark_request(sign.postmark_unsubscribe(a), password="guess"))
        yield "forged mailchimp", signed("mc", sign.mailchimp_request(sign.mailchimp_unsubscribe(a, LIST),
                                                                       secret=f"guessed-secret-{i:04d}"))
        yield "forged ses", signed("ses", sign.ses_request(sign.sns_message(sign.ses_bounce(a), key=other_rsa)))
        yield "stale sendgrid", signed("sg", sign.sendgrid_request([sign.sendgrid_event(a)], at=old))
        yield "stale mailgun", signed("mg", sign.mailgun_request(sign.mailgun_event(a), at=old))
        yield "stale ses", signed("ses", sign.ses_request(sign.sns_message(
            sign.ses_bounce(a), at=sign.dt.datetime.now(sign.dt.timezone.utc) - sign.dt.timedelta(hours=5))))
        yield "ses other topic", signed("ses", sign.ses_request(sign.sns_message(
            sign.ses_bounce(a), topic="arn:aws:sns:eu-west-1:999999999999:evil")))
        yield "ses foreign cert host", signed("ses", sign.ses_request(sign.sns_message(
            sign.ses_bounce(a), cert_url="https://evil.example.com/cert.pem")))
        for name, content_type in (("sg", "application/json"), ("mg", "application/json"),
                                   ("pm", "application/json"), ("mc", "application/x-www-form-urlencoded"),
                                   ("ses", "text/plain")):
            body = json.dumps([{"email": a, "event": "unsubscribe"}]).encode()
            yield f"unsigned {name}", http("POST", f"/hooks/{name}", {"Content-Type": content_type}, body)
    for name, request in replays:
        yield f"replayed {name}", signed(name, request)
    # Signed (so verified) but unreadable bodies: 400, nothing stored.
    garbage = [b"not json", b"{}", b'{"a": 1}', b"[1, 2, 3]", b"\xff\xfe\x00", b"[" * 5000]
    for body in garbage:
        stamp = str(int(time.time()))
        signature = sign.base64.b64encode(sign.sendgrid_key().sign(stamp.encode() + body, sign.ec.ECDSA(
            sign.hashes.SHA256()))).decode()
        yield "signed garbage sendgrid", http("POST", "/hooks/sg", {
            "X-Twilio-Email-Event-Webhook-Signature": signature, "X-Twilio-Email-Event-Webhook-Timestamp": stamp},
            body)
        yield "authorised garbage postmark", signed("pm", ("", sign.postmark_request({})[1], body))
        yield "authorised garbage mailchimp", signed("mc", (f"/{sign.MAILCHIMP_SECRET}", {}, body))
    yield "signed ses non-json message", signed("ses", sign.ses_request(sign.sns_message("{not json")))
    yield "signed mailgun without event-data", signed("mg", ("", {}, json.dumps(
        {"signature": json.loads(sign.mailgun_request({})[2])["signature"]}).encode()))
    # Oversized and lying about size.
    big = b"[" + b" " * (2 * 1024 * 1024) + b"]"
    for name in ("sg", "mg", "pm", "mc", "ses"):
        yield f"oversized {name}", http("POST", f"/hooks/{name}", {"Content-Type": "application/json"}, big)
        yield f"declared oversized {name}", http("POST", f"/hooks/{name}", {"Content-Length": "99999999"}, b"[]")
        yield f"bad length {name}", http("POST", f"/hooks/{name}", {"Content-Length": "-5"}, b"[]")
        yield f"chunked oversized {name}", http("POST", f"/hooks/{name}", {"Transfer-Encoding": "chunked"},
                                                b"".join(b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
                                                         for _ in range(20)) + b"0\r\n\r\n")
    yield "header bomb", http("POST", "/hooks/sg", {f"X-Pad-{i}": "y" * 200 for i in range(200)}, b"[]")
    # Slow: headers and bodies that stall past their timeouts.
    for name in ("sg", "mg", "pm", "mc", "ses"):
        for _ in range(2):
            suffix, headers, body = sign.sendgrid_request([sign.sendgrid_event("slow@example.com")])
            yield f"slow headers {name}", http("POST", f"/hooks/{name}", headers, body, stall="headers", pause=2.0)
            yield f"slow body {name}", http("POST", f"/hooks/{name}", headers, body, stall="body", pause=2.0)
    # Wrong paths and methods.
    for path in ("/", "/hooks", "/hooks/", "/hooks/sink", "/hooks/../etc/passwd", "/hooks/sg/../../x",
                 "/hooks/%00", "/metrics", "/hooks/" + "a" * 5000):
        yield "bad path", http("POST", path, {}, b"[]")
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
        yield "bad method", http(method, "/hooks/sg", {}, b"[]")
    yield "not http", lambda host, port: _exchange(host, port, b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
    # Accepted requests with one byte flipped: the signature no longer holds, or (Mailgun signs only
    # its timestamp and token) the token was used before.
    for i in range(50):
        name, (suffix, headers, body) = rng.choice(replays)
        spot = rng.randrange(len(body))
        flipped = body[:spot] + bytes([body[spot] ^ (1 << rng.randrange(8))]) + body[spot + 1:]
        yield f"flipped {name}", signed(name, (suffix, headers, flipped))
