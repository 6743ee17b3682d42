"""Webhook benchmarks: webhook -> every sink latency at a steady rate, and sustained ingest with RSS.

The real daemon runs with a `sendgrid` source whose signed Event Webhook is received, a
`csv_file` sink and a `sendgrid` sink whose API is a small fake HTTP server in this process (it
notes when each address arrives). The sender signs every request like SendGrid (ECDSA P-256).
"""

from __future__ import annotations

import base64
import json
import math
import re
import socket
import statistics
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FakeSinkApi(ThreadingHTTPServer):
    """Enough of SendGrid's API for a read-only source (empty lists) and a global-suppression sink."""

    daemon_threads = True

    def __init__(self):
        self.arrived: dict[str, float] = {}
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(200 if self.command == "GET" else 201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # every list is empty: the source finds nothing by polling
        self._answer([])

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        now = time.perf_counter()
        emails = body.get("recipient_emails", [])
        with self.server.lock:
            for email in emails:
                self.server.arrived.setdefault(email, now)
        self._answer({"recipient_emails": emails})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Signer:
    """Signs Event Webhook requests with a fresh P-256 key, as SendGrid does."""

    def __init__(self):
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        self._ec, self._hashes = ec, hashes
        self.key = ec.generate_private_key(ec.SECP256R1())
        der = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        self.public_key = base64.b64encode(der).decode()

    def request(self, addresses: list[str], ids: list[str]) -> tuple[dict, bytes]:
        stamp = str(int(time.time()))
        body = json.dumps([{"email": a, "event": "unsubscribe", "timestamp": int(time.time()), "sg_event_id": i}
                           for a, i in zip(addresses, ids)]).encode()
        signature = self.key.sign(stamp.encode() + body, self._ec.ECDSA(self._hashes.SHA256()))
        return {"Content-Type": "application/json", "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
                "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode()}, body


class Daemon:
    """`optout-sync run` with the webhook source, a csv_file sink and the fake API's sink."""

    def __init__(self, work: Path, cli: list[str], api: FakeSinkApi, signer: Signer, *, max_new: int):
        self.port = _free_port()
        self.csv = work / "out" / "sink.csv"
        settings = work / "settings.toml"
        settings.write_text(
            f'[store]\npath = "store.db"\n[webhooks]\nlisten = "127.0.0.1:{self.port}"\n'
            f'[[adapters]]\nname = "sendgrid"\ntype = "sendgrid"\nrole = "read"\napi_key = "SG.bench.key"\n'
            f'base_url = "{api.url}"\ninterval = 3600\nmax_new_per_cycle = {max_new}\n'
            f'webhook_public_key = "{signer.public_key}"\n'
            f'[[adapters]]\nname = "esp"\ntype = "sendgrid"\nrole = "write"\napi_key = "SG.bench.key"\n'
            f'base_url = "{api.url}"\ninterval = 3600\nreconcile_every = 0\n'
            # The fake API has no rate limit; the adapter's default pacing (100 calls per 10 s, for the
            # real SendGrid) would otherwise decide the latency once the first 100 pushes are spent.
            f'rate_limit_requests = 1000\nrate_limit_period = "1s"\n'
            f'[[adapters]]\nname = "sink"\ntype = "csv_file"\npath = "out/sink.csv"\ninterval = 3600\n'
            f'reconcile_every = 0\n')
        settings.chmod(0o600)
        self.log = work / "daemon.log"
        self.proc = subprocess.Popen([*cli, "--config", str(settings), "run"], cwd=work,
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while "webhooks_listening" not in self.log.read_text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the daemon did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}/hooks/sendgrid"

    def rss_mb(self) -> tuple[float, float]:
        """(current, peak) resident memory of the daemon in MB, from /proc."""
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        value = {k: float(re.search(rf"{k}:\s+(\d+)", text).group(1)) / 1024 for k in ("VmRSS", "VmHWM")}
        return value["VmRSS"], value["VmHWM"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _csv_watcher(path: Path, seen: dict[str, float], stop: threading.Event) -> None:
    """Note when each address first appears in the csv sink (polled every 20 ms)."""
    size = -1
    while not stop.is_set():
        try:
            stat = path.stat()
            if stat.st_size != size:
                size = stat.st_size
                now = time.perf_counter()
                for line in path.read_text().splitlines()[1:]:
                    email = line.split(",", 1)[0]
                    if email not in seen:
                        seen[email] = now
        except (OSError, ValueError):
            pass
        stop.wait(0.02)


def bench_webhook_latency(work: Path, cli: list[str], rate: float, seconds: float) -> tuple[float, float, int, float]:
    """Events sent one per request at `rate`/s for `seconds`: (p50, p99) to every sink, count, achieved rate."""
    import httpx

    api, signer = FakeSinkApi(), Signer()
    daemon = Daemon(work, cli, api, signer, max_new=10_000_000)
    csv_seen: dict[str, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_csv_watcher, args=(daemon.csv, csv_seen, stop), daemon=True)
    watcher.start()
    total = int(rate * seconds)
    sent_at: dict[str, float] = {}
    failures = []
    # Enough senders that one slow answer does not hold back the schedule (an open-loop rate, as vendors
    # post), and every request signed beforehand so that the sender's own CPU stays small.
    senders = 16
    signed = [signer.request([f"hook{n}@example.com"], [f"evt-{n}"]) for n in range(total)]

    def send(worker: int) -> None:
        client = httpx.Client(timeout=10)
        for n in range(worker, total, senders):
            due = start + n / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            address = f"hook{n}@example.com"
            headers, body = signed[n]
            sent_at[address] = time.perf_counter()
            answer = client.post(daemon.url, headers=headers, content=body)
            if answer.status_code != 200:
                failures.append(answer.status_code)
        client.close()

    try:
        started = start = time.perf_counter()
        threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        deadline = time.monotonic() + 60
        while (len(csv_seen) < total or len(api.arrived) < total) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        daemon.stop()
        api.shutdown()
    if failures or len(csv_seen) < total or len(api.arrived) < total:
        raise RuntimeError(f"{len(failures)} refused, {len(csv_seen)} in the csv sink, {len(api.arrived)} at the "
                           f"API sink, of {total}")
    latencies = sorted(max(csv_seen[a], api.arrived[a]) - sent for a, sent in sent_at.items())
    p99 = latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)]
    return statistics.median(latencies), p99, total, total / elapsed


def bench_webhook_ingest(work: Path, cli: list[str], seconds: float, batch: int, senders: int
                         ) -> tuple[float, float, float]:
    """Batches of `batch` events, `senders` at once, as fast as accepted: (events/s, requests/s, peak RSS MB)."""
    import httpx

    api, signer = FakeSinkApi(), Signer()
    daemon = Daemon(work, cli, api, signer, max_new=100_000_000)
    counts = [0] * senders
    requests = [0] * senders
    peak = [0.0]
    stop = threading.Event()

    def send(worker: int) -> None:
        client = httpx.Client(timeout=30)
        n = 0
        while not stop.is_set():
            ids = [f"w{worker}-{n + i}" for i in range(batch)]
            headers, body = signer.request([f"{i}@example.com" for i in ids], ids)
            if client.post(daemon.url, headers=headers, content=body).status_code == 200:
                counts[worker] += batch
                requests[worker] += 1
            n += batch
        client.close()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], daemon.rss_mb()[1])
            stop.wait(0.5)

    try:
        threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        time.sleep(seconds)
        stop.set()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        peak[0] = max(peak[0], daemon.rss_mb()[1])
    finally:
        stop.set()
        daemon.stop()
        api.shutdown()
    return sum(counts) / elapsed, sum(requests) / elapsed, peak[0]
