"""Loopback stand-ins for the HTTP APIs the project talks to (GitHub REST, Anthropic Messages).

Each fake is a real HTTP server on 127.0.0.1 (a free port) served from a background thread,
so the real clients (PyGithub, anthropic) can be pointed at it with `base_url=`. This module
holds the shared server plumbing; the fakes live in `github_api` and `anthropic_api`.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

POLL_SECONDS = 0.01  # how often serve_forever checks for shutdown; keeps teardown fast


@dataclass(frozen=True)
class Request:
    """One parsed HTTP request: header names are lower-cased, the query keeps the last value."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body decoded as JSON (None when empty); raises ValueError when malformed."""
        return json.loads(self.body) if self.body else None


@dataclass(frozen=True)
class RawBody:
    """A response body sent as is, not as JSON (an event stream); `missing` more bytes are
    promised in Content-Length but never sent: the connection closes instead, at once or
    when the client hangs up (waited for at most `hold_s`)."""

    data: bytes
    content_type: str
    missing: int = 0
    hold_s: float = 0.0


@dataclass
class Response:
    """One HTTP response: `body` is sent as JSON, or as is (a RawBody); None sends none."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class LoopbackServer:
    """Serve `handle()` over HTTP on 127.0.0.1 from a daemon thread; use as a context manager.
    With `tls` (a server-side SSL context), over HTTPS."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._tls = tls
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None

    @property
    def base_url(self) -> str:
        """`http(s)://127.0.0.1:<port>`; stays readable after `stop()` for post-mortem
        inspection."""
        if self._base_url is None:
            raise RuntimeError(f"{type(self).__name__} was never started")
        return self._base_url

    def start(self) -> Self:
        """Bind a free port and start serving; returns self."""
        if self._httpd is not None:
            return self
        self._httpd = _HTTPServer(self)
        if self._tls is not None:
            self._httpd.socket = self._tls.wrap_socket(self._httpd.socket, server_side=True)
        host, port = self._httpd.server_address[:2]
        self._base_url = f"{'https' if self._tls else 'http'}://{host!s}:{port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": POLL_SECONDS},
            name=type(self).__name__,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def handle(self, request: Request) -> Response:
        """Answer one request; subclasses implement the API."""
        raise NotImplementedError


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, app: LoopbackServer) -> None:
        self.app = app
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes; without this, Nagle's algorithm plus
        # delayed ACKs add ~40 ms to every keep-alive response
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=parts.path,
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        try:
            response = self.server.app.handle(request)
        except Exception as exc:  # a bug in a fake must surface as a clear 500, not a hang
            response = Response(500, {"message": f"fake server error: {exc!r}"})
        self._send(response)

    def _send(self, response: Response) -> None:
        body = response.body
        if body is None or isinstance(body, RawBody):
            raw = body or RawBody(b"", "")
        else:
            raw = RawBody(json.dumps(body).encode(), "application/json; charset=utf-8")
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if raw.data:
            self.send_header("Content-Type", raw.content_type)
        self.send_header("Content-Length", str(len(raw.data) + raw.missing))
        self.end_headers()
        self.wfile.write(raw.data)
        if raw.missing:
            self.close_connection = True
        if raw.hold_s:
            self.wfile.flush()
            self.connection.settimeout(raw.hold_s)
            with contextlib.suppress(OSError):
                self.rfile.read(1)  # b"" as soon as the client hangs up

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""
