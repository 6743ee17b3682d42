"""Serve any `handle(httpx.Request) -> httpx.Response` callable over a real socket on 127.0.0.1.

End-to-end tests point the real daemon at an in-process vendor fake this way;
the server picks a free port and stops when the `with` block ends. A handler that
raises `DropConnection` gets the connection reset instead of an answer.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

Handler = Callable[[httpx.Request], httpx.Response]
# Framing headers are the server's business: it sends the body it has, whole.
_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}


class DropConnection(Exception):
    """Raised by a handler to reset the connection (TCP RST) without sending any answer."""


def _request_handler(handle: Handler, base_url: Callable[[], str]) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes; with Nagle on, the body waits for the client's delayed
        # ACK (40 ms on Linux), which made every served request take 40 ms.
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = httpx.Request(self.command, base_url() + self.path,
                                    headers=[(k, v) for k, v in self.headers.items() if k.lower() != "host"],
                                    content=body)
            try:
                response = handle(request)
                content = response.read()
            except DropConnection:
                # Linger 0 makes close() send a RST, as a crashed peer or a middlebox would.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            except Exception as exc:  # a crashing fake must show up as a 500, not a hung client
                response = httpx.Response(500, text=f"fake crashed: {type(exc).__name__}: {exc}")
                content = response.read()
            self.send_response(response.status_code)
            for key, value in response.headers.multi_items():
                if key.lower() not in _HOP_BY_HOP:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(content)))
            try:
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(content)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up waiting (a timeout test): nobody to answer

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

        def log_message(self, format: str, *args) -> None:  # keep test output quiet
            pass

    return _Handler


@contextmanager
def serve(handle: Handler) -> Iterator[str]:
    """Serve `handle` on a free port of 127.0.0.1 in a background thread; yields the base URL."""
    address: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _request_handler(handle, lambda: address[0]))
    server.daemon_threads = True
    address.append(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-server",
                              daemon=True)
    thread.start()
    try:
        yield address[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
