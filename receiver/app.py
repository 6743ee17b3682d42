"""The receiver's HTTP side: Starlette on uvicorn, /hooks/<adapter name>, with its limits.

A request is answered only after what it carries is committed to the store: 200 with counts;
401 when it is unsigned, wrongly signed, stale or replayed (counted, nothing stored, the body
not decoded before the check); 400 for a body that cannot be read or headers or a body slower
than their timeout; 404 for a path without a receiver; 405 for another method; 413 for a body
larger than `max_body`; 503 when the store cannot be written (the vendor retries) or when more
than `max_concurrency` requests are open (uvicorn's own limit). uvicorn's access log is off: a
Mailchimp URL holds its secret. Nothing here logs a secret, a body or a signature.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from connector.logs import log_event
from connector.settings import listen_address
from state import receipts
from state.errors import ConfigError, OptOutSyncError, StoreError
from state.models import to_utc_iso
from state.store import Store

from .common import Event, Hook, Incoming, Refused, Verified
from .staging import Outcome, WindowGuard, stage

# Headers larger than this are refused by h11 (400) before the application sees the request.
MAX_HEADER_BYTES = 16 * 1024
# Store work runs in at most this many threads: SQLite takes one writer at a time anyway.
STORE_THREADS = 4
# Event ids are kept past every vendor's retry period (SendGrid retries for 24 h, the longest);
# nonces past twice the longest replay window. Pruned at most every PRUNE_EVERY seconds.
KEEP_EVENT_IDS = 3 * 86_400.0
PRUNE_EVERY = 600.0
OUTCOMES = ("accepted", "duplicate", "unauthorized", "malformed", "too_large", "too_slow", "not_found",
            "bad_method", "unavailable")


class _Counters:
    """The receiver's metrics, registered in the daemon's registry beside the others."""

    def __init__(self, registry: Any, adapters: list[str]):
        from prometheus_client import Counter

        self.requests = Counter("optout_sync_webhook_requests", "Webhook requests by adapter and outcome "
                                "(accepted, duplicate, unauthorized, malformed, too_large, too_slow, not_found, "
                                "bad_method, unavailable).", ["adapter", "outcome"], registry=registry)
        self.events = Counter("optout_sync_webhook_events", "Events in accepted webhook requests, by adapter and "
                              "what they were (new, duplicate).", ["adapter", "kind"], registry=registry)
        for name in [*adapters, "unknown"]:
            for outcome in OUTCOMES:
                self.requests.labels(name, outcome)

    def count(self, adapter: str, outcome: str) -> None:
        self.requests.labels(adapter, outcome).inc()


_STATUS_OUTCOME = {400: "malformed", 401: "unauthorized", 404: "not_found", 405: "bad_method", 413: "too_large",
                   503: "unavailable"}


class WebhookReceiver:
    """Serves /hooks/<adapter> for every adapter whose webhook key is set, until `stop()`."""

    def __init__(self, settings: Any, hooks: dict[str, Hook], *, registry: Any = None,
                 wake: Callable[[str], None] = lambda _name: None,
                 store_problem: Callable[[], str | None] = lambda: None,
                 open_store: Callable[[], Store] | None = None, clock: Callable[[], float] = time.time):
        from prometheus_client import CollectorRegistry

        self.settings = settings
        self.limits = settings.webhooks
        self.hooks = hooks
        self.wake = wake
        self.store_problem = store_problem
        self.clock = clock
        self.guard = WindowGuard()
        self.counters = _Counters(registry if registry is not None else CollectorRegistry(), list(hooks))
        self._open_store = open_store or self._configured_store
        self._local = threading.local()
        self._stores: list[Store] = []
        self._stores_lock = threading.Lock()
        self._pruned_at = float("-inf")
        self._write_lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.url = ""

    def _configured_store(self) -> Store:
        """The configured store, through the one place that chooses its backend (SQLite: never created here)."""
        from connector.commands import open_store

        return open_store(self.settings)

    # -- the application --------------------------------------------------------------

    def app(self):
        """The Starlette application (tests may drive it directly)."""
        from starlette.applications import Starlette
        from starlette.routing import Route

        methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        return Starlette(routes=[Route("/hooks/{name}", self._handle, methods=methods),
                                 Route("/hooks/{name}/{rest:path}", self._handle, methods=methods)])

    async def _handle(self, request):
        from starlette.responses import JSONResponse, PlainTextResponse

        name = request.path_params["name"]
        hook = self.hooks.get(name)
        label = name if hook is not None else "unknown"
        try:
            if hook is None:
                raise Refused(404, "no webhook receiver for this path")
            incoming = await self._incoming(request, hook)
            if getattr(hook, "validation", None) and hook.validation(incoming):
                self.counters.count(label, "accepted")
                return PlainTextResponse("ok\n")
            if incoming.method != "POST":
                raise Refused(405, "only POST is accepted here")
            from anyio import to_thread

            answer = await to_thread.run_sync(self._verify_and_stage, hook, incoming,
                                              limiter=self._limiter())
        except Refused as refusal:
            outcome = "too_slow" if refusal.reason.startswith("too slow") else _STATUS_OUTCOME.get(
                refusal.status, "malformed")
            self.counters.count(label, outcome)
            if refusal.status == 401:
                log_event("webhook_refused", logging.WARNING, adapter=label, status=401, reason=refusal.reason)
            return PlainTextResponse(refusal.reason + "\n", status_code=refusal.status,
                                     headers={"Retry-After": "5"} if refusal.status == 503 else None)
        except Exception as exc:  # the edge: one line, no traceback, and 503 so the vendor retries
            self.counters.count(label, "unavailable")
            log_event("webhook_error", logging.ERROR, adapter=label, error_class=type(exc).__name__, error=str(exc))
            logging.getLogger("optout_sync").debug("webhook traceback", exc_info=True)
            return PlainTextResponse("temporarily unavailable\n", status_code=503, headers={"Retry-After": "5"})
        if isinstance(answer, str):
            self.counters.count(label, "accepted")
            return PlainTextResponse(answer + "\n")
        outcome: Outcome = answer
        self.counters.count(label, "accepted" if outcome.duplicates < outcome.events or not outcome.events
                            else "duplicate")
        self.counters.events.labels(label, "new").inc(outcome.events - outcome.duplicates)
        self.counters.events.labels(label, "duplicate").inc(outcome.duplicates)
        return JSONResponse({"events": outcome.events, "duplicates": outcome.duplicates, "added": outcome.added,
                             "changed": outcome.changed, "rejected": outcome.rejected, "paused": outcome.paused})

    async def _incoming(self, request, hook: Hook) -> Incoming:
        """The request with its raw body, read within `body_timeout` and `max_body`."""
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limits.max_body):
            raise Refused(413 if declared.isdigit() else 400, "the body is larger than max_body"
                          if declared.isdigit() else "bad Content-Length")
        body = await self._body(request)
        rest = request.path_params.get("rest", "")
        return Incoming(request.method, str(request.url), rest, {k.lower(): v for k, v in request.headers.items()},
                        body, self.clock())

    async def _body(self, request) -> bytes:
        from starlette.requests import ClientDisconnect

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout
        stream = request.stream().__aiter__()
        chunks, size = [], 0
        while True:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                chunk = await asyncio.wait_for(stream.__anext__(), remaining)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise Refused(400, "too slow: the body did not arrive within body_timeout") from None
            except ClientDisconnect:
                raise Refused(400, "the client went away before the body was complete") from None
            size += len(chunk)
            if size > self.limits.max_body:
                raise Refused(413, "the body is larger than max_body")
            chunks.append(chunk)
        return b"".join(chunks)

    def _limiter(self):
        limiter = getattr(self, "_capacity", None)
        if limiter is None:
            from anyio import CapacityLimiter

            limiter = self._capacity = CapacityLimiter(STORE_THREADS)
        return limiter

    # -- verification and staging (in a worker thread) --------------------------------------

    def _verify_and_stage(self, hook: Hook, incoming: Incoming) -> Outcome | str:
        verified: Verified = hook.verify(incoming)
        if verified.answer is not None:
            return verified.answer
        events: list[Event] = hook.events(incoming)
        problem = self.store_problem()
        if problem:
            raise Refused(503, "the store is not available")
        config = self.settings.adapter(hook.adapter)
        try:
            # One receiver thread writes at a time: threads that raced for SQLite's write lock would sleep
            # in its busy handler (up to 100 ms a try), and so would the pushers waiting behind them.
            with self._write_lock:
                outcome = stage(self._store(), hook.adapter, events, verified.nonce,
                                max_new=config.max_new_per_cycle, window=config.interval, guard=self.guard)
        except StoreError as exc:
            self._drop_store()
            log_event("webhook_store_error", logging.ERROR, adapter=hook.adapter, error=str(exc))
            raise Refused(503, "the store cannot be written now") from None
        if outcome.added:
            self.wake(hook.adapter)
        try:
            self._prune_now_and_then()
        except StoreError:
            pass  # the request is kept; pruning waits for a store that can be written
        if outcome.paused:
            log_event("guard_paused", logging.WARNING, adapter=hook.adapter, staged=outcome.waiting_approval,
                      message=f"{outcome.waiting_approval} new opt-outs received by webhook exceed "
                              f"max_new_per_cycle={config.max_new_per_cycle}; paused until "
                              f"'optout-sync approve {hook.adapter} --count N'")
        if outcome.added or outcome.changed or outcome.rejected:
            log_event("webhook_received", adapter=hook.adapter, events=outcome.events, added=outcome.added,
                      changed=outcome.changed, duplicates=outcome.duplicates, rejected=outcome.rejected)
        return outcome

    def _prune_now_and_then(self) -> None:
        """Forget receipts past every retry window (event ids) or replay window (nonces), every 10 minutes."""
        now = self.clock()
        with self._stores_lock:
            if now - self._pruned_at < PRUNE_EVERY:
                return
            self._pruned_at = now
        from datetime import datetime, timezone

        def before(seconds: float) -> str:
            return to_utc_iso(datetime.fromtimestamp(now - seconds, timezone.utc))

        store = self._store()
        receipts.prune(store, before(KEEP_EVENT_IDS), "e:")
        receipts.prune(store, before(2 * max(self.limits.max_age, self.limits.sns_max_age)), "n:")

    def _store(self) -> Store:
        store = getattr(self._local, "store", None)
        if store is None:
            try:
                store = self._open_store()
            except OptOutSyncError as exc:
                raise StoreError(str(exc)) from None
            self._local.store = store
            with self._stores_lock:
                self._stores.append(store)
        return store

    def _drop_store(self) -> None:
        store = getattr(self._local, "store", None)
        self._local.store = None
        if store is not None:
            with self._stores_lock:
                if store in self._stores:
                    self._stores.remove(store)
            try:
                store.close()
            except Exception:  # a broken connection may fail to close; a fresh one is opened next time
                pass

    # -- serving ----------------------------------------------------------------------

    def start(self) -> "WebhookReceiver":
        """Bind `[webhooks] listen` and serve in a background thread; OSError if it cannot bind."""
        import uvicorn

        host, port = listen_address(self.limits.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._socket = socket.create_server((host, port), family=family, backlog=1024)
        except OSError as exc:
            raise ConfigError(f"{self.settings.source}: [webhooks] listen = {self.limits.listen!r}: cannot listen "
                              f"there: {exc.strerror or exc}") from None
        _quiet_uvicorn()
        config = uvicorn.Config(self.app(), log_config=None, access_log=False, lifespan="off",
                                http=_guarded_protocol(self.limits.header_timeout), loop="asyncio",
                                # uvicorn counts the new connection itself: N open requests need N + 1.
                                limit_concurrency=self.limits.max_concurrency + 1, timeout_keep_alive=30,
                                h11_max_incomplete_event_size=MAX_HEADER_BYTES, server_header=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="webhooks", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        bound_host, bound_port = self._socket.getsockname()[:2]
        shown = f"[{bound_host}]" if family == socket.AF_INET6 else bound_host
        self.url = f"http://{shown}:{bound_port}"
        return self

    def alive(self) -> bool:
        """Whether the server thread still serves (the daemon's readiness)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop serving (open requests get a moment to finish) and close the store connections."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(5)
        if self._socket is not None:
            self._socket.close()
        for adapter in getattr(self, "adapters", {}).values():
            adapter.close()
        with self._stores_lock:
            stores, self._stores = self._stores, []
        for store in stores:
            try:
                store.close()
            except Exception:  # closing at exit; nothing to keep
                pass


def _quiet_uvicorn() -> None:
    """uvicorn's own messages as one-line log events, errors only (its warnings repeat every bad request)."""

    class _AsEvent(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            log_event("webhook_server", logging.ERROR, message=record.getMessage())

    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = [_AsEvent()]
        logger.propagate = False
        logger.setLevel(logging.ERROR)


def _guarded_protocol(header_timeout: float):
    """uvicorn's h11 protocol with a header timeout: a connection that does not complete a request's
    headers within `header_timeout` gets a 400 and is closed (uvicorn has no such limit itself)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    answer = b"too slow: the headers did not arrive within header_timeout\n"
    late = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
            b"content-length: " + str(len(answer)).encode() + b"\r\n\r\n" + answer)

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            # The answer's head and body are two writes: without TCP_NODELAY the body waits for the
            # client's delayed ACK, 40 ms on Linux, on every request.
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
            self._arm()

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout, self._headers_late)

        def _headers_late(self) -> None:
            self._header_timer = None
            if self._waiting_for_headers() and not self.transport.is_closing():
                self.transport.write(late)
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            waiting = self._waiting_for_headers()
            if not waiting and self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            elif waiting and self._header_timer is None and not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


def start_receiver(settings: Any, *, registry: Any = None, wake: Callable[[str], None] = lambda _name: None,
                   store_problem: Callable[[], str | None] = lambda: None,
                   sns_fetch: Callable[[str], bytes] | None = None) -> WebhookReceiver:
    """Build every enabled adapter's hook and serve them on `[webhooks] listen`; ConfigError if it cannot."""
    from connector.commands import build_adapters

    from .hooks import build_hooks, enabled

    names = [c.name for c in settings.adapters if enabled(c)]
    adapters = build_adapters(settings, names) if names else {}
    try:
        hooks = build_hooks(settings, adapters, sns_fetch)
        receiver = WebhookReceiver(settings, hooks, registry=registry, wake=wake, store_problem=store_problem)
        receiver.adapters = adapters
        return receiver.start()
    except BaseException:
        for adapter in adapters.values():
            adapter.close()
        raise
