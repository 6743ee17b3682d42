"""The daemon's local HTTP server: /metrics, /healthz, /readyz and a small HTML status page at /.

Standard-library ThreadingHTTPServer in a daemon thread; every request reads
the store on its own connection. The status page shows what `optout-sync
status` shows, with addresses always masked and every value HTML-escaped.
"""

from __future__ import annotations

import html
import json
import logging
import socket
import sqlite3
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from state import dashboard
from state.errors import ConfigError, OptOutSyncError

from . import commands, status_pictures
from .history import LagHistory
from .logs import log_event, mask_addresses
from .metrics import Metrics
from .progress import describe_progress
from .settings import Settings, listen_address

JSON_TYPE = "application/json"
HTML_TYPE = "text/html; charset=utf-8"
# The page reloads itself; no script needed.
PAGE_REFRESH_S = 10


class StatusServer:
    """Serves one daemon's metrics, health, readiness and status page until stopped."""

    def __init__(self, settings: Settings, metrics: Metrics, problems: Callable[[], list[str]],
                 stopping: Callable[[], bool], store_problem: Callable[[], str | None] = lambda: None,
                 history: LagHistory | None = None):
        self.settings = settings
        # The status page's pictures: the monitor's lag history, and per-day counts kept across requests.
        self.history = history
        self.daily = dashboard.DailyOptOutCounter()
        self.store_problem = store_problem
        self.metrics = metrics
        self.problems = problems
        self.stopping = stopping
        self.address: tuple[str, int] | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "StatusServer":
        """Bind the configured address and serve in a background thread; ConfigError if it cannot bind."""
        listen = self.settings.server.listen
        host, port = listen_address(listen)
        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        try:
            httpd = server_class((host, port), _Handler)
        except OSError as exc:
            raise ConfigError(f"{self.settings.source}: [server] listen = {listen!r}: cannot listen there: "
                              f"{exc.strerror or exc}") from None
        httpd.daemon_threads = True
        httpd.app = self
        self._httpd = httpd
        self.address = httpd.server_address[:2]
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="status-server", daemon=True)
        self._thread.start()
        threading.Thread(target=self.warm_pictures, name="status-page-warm-up", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    # -- the endpoints: (status code, content type, body) ---------------------------------

    def metrics_page(self, accept: str | None = None) -> tuple[int, str, bytes]:
        """The metrics in the format the scraper accepts."""
        body, content_type = self.metrics.render(accept)
        return 200, content_type, body

    def health(self) -> tuple[int, str, bytes]:
        """200 while the process runs its workers and the store can be written; 503 with the reason."""
        problems = list(self.problems())
        problem = (pg_write_problem(self.settings) if self.settings.store.postgresql
                   else store_write_problem(self.settings.store.path))
        if problem:
            problems.append(problem)
        if problems:
            return _json(503, {"status": "unhealthy", "reason": "; ".join(problems)})
        return _json(200, {"status": "ok"})

    def readiness(self) -> tuple[int, str, bytes]:
        """200 when every adapter had a successful cycle within its stale limit; 503 naming those that did not."""
        lost = self.store_problem()
        if lost:
            return _json(503, {"status": "not ready", "reason": lost, "adapters": []})
        if self.stopping():
            return _json(503, {"status": "not ready", "reason": "the daemon is stopping", "adapters": []})
        if not self.settings.store.postgresql and not self.settings.store.path.exists():
            return _json(503, {"status": "not ready", "reason": f"the store {self.settings.store.path} is missing",
                               "adapters": []})
        now = datetime.now(timezone.utc)
        adapters, stale = {}, []
        with commands.open_store(self.settings) as store:
            for config in self.settings.adapters:
                last = store.checkpoint(config.name).last_success_at
                age = round((now - datetime.fromisoformat(last)).total_seconds(), 3) if last else None
                limit = self.settings.server.stale_limit(config.interval)
                adapters[config.name] = {"last_success_at": last, "age_s": age, "stale_after_s": limit}
                if age is None or age > limit:
                    stale.append(config.name)
        if stale:
            described = ", ".join(f"{name} (last success {_ago(adapters[name]['age_s'])}, limit "
                                  f"{_duration(adapters[name]['stale_after_s'])})" for name in stale)
            return _json(503, {"status": "not ready", "adapters": stale,
                               "reason": f"no successful cycle within stale_after: {described}",
                               "detail": adapters})
        return _json(200, {"status": "ready", "detail": adapters})

    def status_page(self) -> tuple[int, str, bytes]:
        """The HTML page with what `optout-sync status` shows."""
        if not self.settings.store.postgresql and not self.settings.store.path.exists():
            page = render_missing_store(self.settings.store.path)
            return 503, HTML_TYPE, page.encode()
        return 200, HTML_TYPE, render_status_page(commands.status(self.settings), self.settings,
                                                  self.pictures()).encode()

    def warm_pictures(self) -> None:
        """Count the last 30 days' new opt-outs now, so the first page need not (0.7 s on 5,000,000)."""
        try:
            with commands.open_store(self.settings) as store:
                self.daily.refresh(store.conn)
        except Exception as exc:  # the first page counts them instead, and reports what fails
            log_event("status_page_warm_up_failed", logging.DEBUG, error_class=type(exc).__name__, error=str(exc))

    def pictures(self) -> str:
        """The page's charts and lists below the adapter table (connector/status_pictures.py)."""
        with commands.open_store(self.settings) as store:
            return status_pictures.render(self.settings, store, self.history, self.daily)


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server_version = "optout-sync"
    routes: dict[str, Callable[[StatusServer, "_Handler"], tuple[int, str, bytes]]] = {
        "/metrics": lambda app, request: app.metrics_page(request.headers.get("Accept")),
        "/healthz": lambda app, request: app.health(),
        "/readyz": lambda app, request: app.readiness(),
        "/": lambda app, request: app.status_page(),
    }

    def do_GET(self) -> None:  # noqa: N802 (the name http.server looks for)
        path = urlsplit(self.path).path
        endpoint = self.routes.get(path)
        if endpoint is None:
            code, content_type, body = _json(404, {"status": "not found", "endpoints": sorted(self.routes)})
        else:
            try:
                code, content_type, body = endpoint(self.server.app, self)
            except Exception as exc:  # the edge: answer 500 and log it; the daemon goes on
                log_event("server_error", logging.WARNING, path=path, error_class=type(exc).__name__,
                          error=str(exc))
                code, content_type, body = _json(500, {"status": "error", "reason": f"{type(exc).__name__}: {exc}"})
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        # Scrapes every few seconds would drown the sync events; requests are not logged.
        pass


def _json(code: int, data: dict) -> tuple[int, str, bytes]:
    # Reasons quote paths and error messages, which may hold an address.
    return code, JSON_TYPE, (mask_addresses(json.dumps(data, indent=2)) + "\n").encode()


def store_write_problem(path: Path) -> str | None:
    """None when the store can take a write transaction now (or another connection is writing); else why not.

    It opens the existing file only, so a missing store is reported, never created.
    """
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True, timeout=0.2)
    except sqlite3.Error as exc:
        return f"cannot open the store {path}: {exc}"
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY:
            return None  # a worker is writing right now: the store is writable
        return f"cannot write to the store {path}: {exc}"
    finally:
        conn.close()
    return None


def pg_write_problem(settings: Settings) -> str | None:
    """None when the PostgreSQL store answers and takes writes; else why not (a standby is read-only)."""
    try:
        with commands.open_store(settings) as store:
            if store.conn.execute("SHOW transaction_read_only").fetchone()[0] == "on":
                return f"cannot write to the store {store.path}: the server is read-only (a standby?)"
    except OptOutSyncError as exc:
        return str(exc)
    return None


# -- the status page -----------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1b1b1b; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
p.summary { margin: 0 0 1.25rem; color: #444; }
table { border-collapse: collapse; width: 100%; font-size: .95rem; }
th, td { text-align: left; padding: .45rem .6rem; border-bottom: 1px solid #ddd; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.state-active { color: #176317; font-weight: 600; }
.state-paused { color: #8a4b00; font-weight: 700; }
.state-error { color: #a40000; font-weight: 700; }
.alarm { color: #fff; background: #b00020; padding: .05rem .35rem; border-radius: .2rem; font-weight: 700;
         white-space: nowrap; }
.when { white-space: nowrap; }
.ago { color: #666; font-size: .85rem; }
.error { color: #a40000; font-family: ui-monospace, monospace; font-size: .85rem; overflow-wrap: anywhere; }
code { font-family: ui-monospace, monospace; font-size: .85rem; }
"""


def render_status_page(data: dict, settings: Settings, pictures: str = "") -> str:
    """The status page for the data of `commands.status`, then `pictures`; addresses masked, values escaped."""
    # Several daemons share a PostgreSQL store: each row says which drives it (on SQLite, the one daemon).
    shared = data.get("backend") == "postgresql"
    rows = "\n".join(_adapter_row(row, settings, shared) for row in data["adapters"])
    daemon = "running" if data["daemon_running"] else "not running"
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{PAGE_REFRESH_S}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>optout-sync status</title>
<style>{_STYLE}{status_pictures.STYLE}</style>
</head>
<body>
<h1>optout-sync status</h1>
<p class="summary" id="summary">Store {_code(data["store"])}: {_e(_count(data["suppressions"], "suppression"))};
daemon {_e(daemon)}; lag alarm after {_e(_duration(settings.server.max_lag))}. Generated {_e(generated)}.</p>
<div class="scroll"><table id="adapters">
<thead><tr><th>Adapter</th><th>Type</th><th>Role</th><th>State</th><th>Last run</th><th>Pending</th><th>Lag</th>
<th>Cursor age</th><th>Failures</th><th>Last error</th></tr></thead>
<tbody>
{rows}
</tbody>
</table></div>
{pictures}
</body>
</html>
"""


def _adapter_row(row: dict, settings: Settings, show_holder: bool = False) -> str:
    name = row["adapter"]
    if row["paused"]:
        approve = f"optout-sync approve {name} --count {row['staged']}"
        state = f'<span class="state-paused">PAUSED</span> with {_e(row["staged"])} staged; approve with {_code(approve)}'
    elif row["last_run_error"]:
        state = '<span class="state-error">FAILING</span>'
    else:
        state = '<span class="state-active">active</span>'
    if row.get("progress"):
        state += f'<br><span class="progress">{_e(describe_progress(row["progress"]))}</span>'
    if show_holder and (data_holder := row.get("holder")):
        state += (f'<br><span class="holder">driven by {_e(data_holder["daemon_id"])} on {_e(data_holder["host"])}'
                  f'{", since " + _e(data_holder["since"]) if data_holder["since"] else ""}</span>')
    lag = _e(_duration(row["lag_s"]) if row["lag_s"] is not None else "-")
    if row.get("lag_alarm"):
        lag = f'<span class="alarm">LAG ALARM</span> {lag} (max {_e(_duration(settings.server.max_lag))})'
    error = f'<span class="error">{_e(row["last_run_error"])}</span>' if row["last_run_error"] else ""
    cursor = _duration(row["cursor_age_s"]) if row["cursor_age_s"] is not None else "-"
    cells = [_e(name), _e(row["type"]), _e(row["role"]), state, _moment(row["last_run_at"]),
             _e(row["pending"]), lag, _e(cursor), _e(row["failures"]), error]
    tds = "".join(f'<td class="num">{cell}</td>' if index in (5, 8) else f"<td>{cell}</td>"
                  for index, cell in enumerate(cells))
    return f'<tr id="adapter-{_e(name)}">{tds}</tr>'


def render_missing_store(path: Path) -> str:
    """A page saying the store file is gone (the daemon's health check fails too)."""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>optout-sync status</title></head>'
            f"<body><h1>optout-sync status</h1><p>The store {_code(str(path))} is missing.</p></body></html>\n")


def _e(value: object) -> str:
    """Text for HTML: addresses masked (always, whatever --show-addresses says), then escaped."""
    return html.escape(mask_addresses(str(value)), quote=True)


def _code(text: str) -> str:
    return f"<code>{_e(text)}</code>"


def _duration(seconds: float) -> str:
    """'42s', '5m 3s', '2h 5m', '3d 4h'."""
    whole = int(round(seconds))
    if whole < 60:
        return f"{seconds:.0f}s" if seconds >= 1 or seconds == 0 else f"{seconds:.1f}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h" if hours else f"{days}d"


def _moment(iso: str | None) -> str:
    """A stored time as 'YYYY-MM-DD HH:MM:SS UTC' and how long ago, as HTML."""
    if not iso:
        return "never"
    moment = datetime.fromisoformat(iso)
    seconds = max(0.0, (datetime.now(timezone.utc) - moment).total_seconds())
    shown = moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f'<span class="when">{_e(shown)}</span> <span class="ago">({_e(_ago(seconds))})</span>'


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _ago(seconds: float | None) -> str:
    return "never" if seconds is None else f"{_duration(seconds)} ago"
