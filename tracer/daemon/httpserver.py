"""The daemon's HTTP endpoint: the metrics (/metrics, or --web.telemetry-path),
/healthz, /topology (JSON, SVG or DOT) and a landing page with the live figure.

A ThreadingHTTPServer, one thread per connection, in a daemon thread. Basic
auth, when the web config has users, guards every path, unknown ones included.

TLS wraps the listening socket but leaves the handshake to each connection's
own thread (do_handshake_on_connect=False). With the default, accept() does the
handshake in the serving loop, so one client that connects and sends nothing
(a port scanner, a stuck proxy) would hold back every scrape behind it.

Nothing is logged per request. Disconnects, timeouts and failed TLS handshakes
are the client's business and stay silent; an endpoint that raises is logged
once, as one line, and answered with 500.
"""

from __future__ import annotations

import gzip
import json
import logging
import socket
import socketserver
import ssl
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from prometheus_client.exposition import choose_encoder, gzip_accepted

from tracer import __version__
from tracer.daemon import landing_page
from tracer.daemon.webconfig import WebConfig
from tracer.errors import CntraceError, UsageError

log = logging.getLogger(__name__)

# Idle keep-alive connections and TLS handshakes give up after this long.
CONNECTION_TIMEOUT = 30.0
REALM = "cntrace"
# How often the serving loop looks for stop(): the longest stop() waits.
POLL_INTERVAL = 0.1

_TEXT = "text/plain; charset=utf-8"
# What /topology?format= serves, with its content type.
TOPOLOGY_FORMATS = {"json": "application/json", "svg": "image/svg+xml",
                    "dot": "text/vnd.graphviz; charset=utf-8"}


class Response(NamedTuple):
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def _text(status: int, message: str) -> Response:
    return Response(status, _TEXT, f"{message}\n".encode())


class MetricsServer:
    """Serves `registry` and the daemon's state over HTTP(S) until stop()."""

    def __init__(self, address: str, port: int, registry: Any, web_config: WebConfig | None,
                 topology_json: Callable[[], dict], healthy: Callable[[], tuple[bool, str]],
                 telemetry_path: str = "/metrics",
                 topology_figure: Callable[[str], bytes] | None = None):
        """topology_figure(format) draws the topology as "svg" or "dot"
        (tracer/host/figure.py); without it /topology serves JSON only."""
        self.address = address
        self.requested_port = port
        self.registry = registry
        self.web_config = web_config
        self.topology_json = topology_json
        self.topology_figure = topology_figure
        self.healthy = healthy
        self.telemetry_path = telemetry_path
        self._routes: dict[str, Callable[[Any, str], Response]] = {
            "/": self._index, telemetry_path: self._metrics, "/healthz": self._healthz,
            "/topology": self._topology}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("MetricsServer already started")
        where = _host_port(self.address, self.requested_port)
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(
                self.address or None, self.requested_port,
                type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
            server = _Server(sockaddr[:2], family, self)
        except OSError as exc:  # socket.gaierror included
            raise UsageError(f"cannot listen on {where}: {exc.strerror or exc}") from None
        context = self.web_config.ssl_context() if self.web_config else None
        if context is not None:
            server.socket = context.wrap_socket(server.socket, server_side=True,
                                                do_handshake_on_connect=False)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(POLL_INTERVAL,),
                                        name="cntrace-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("MetricsServer not started")
        return self._server.server_address[1]

    def authorized(self, authorization: str | None) -> bool:
        return self.web_config is None or self.web_config.check_basic_auth(authorization)

    def respond(self, path: str, headers: Any, query: str = "") -> Response:
        """The response to an authorized GET of `path`."""
        route = self._routes.get(path)
        if route is None:
            return _text(404, f"{path}: not found (see /)")
        try:
            return route(headers, query)
        except Exception as exc:
            log.error("cntrace: GET %s failed: %s: %s", path, type(exc).__name__, exc)
            return _text(500, f"{path}: internal error: {exc}")

    def _metrics(self, headers: Any, query: str) -> Response:
        encoder, content_type = choose_encoder(headers.get("Accept", ""))
        body = encoder(self.registry)
        if gzip_accepted(headers.get("Accept-Encoding", "")):
            return Response(200, content_type, gzip.compress(body),
                            (("Content-Encoding", "gzip"),))
        return Response(200, content_type, body)

    def _healthz(self, headers: Any, query: str) -> Response:
        ok, reason = self.healthy()
        return _text(200, "ok") if ok else _text(503, reason)

    def _topology(self, headers: Any, query: str) -> Response:
        fmt = (parse_qs(query).get("format") or ["json"])[0]
        if fmt not in TOPOLOGY_FORMATS or (fmt != "json" and self.topology_figure is None):
            return _text(400, f"format '{fmt[:20]}': expected one of "
                              f"{', '.join(TOPOLOGY_FORMATS)}")
        try:
            if fmt == "json":
                body = json.dumps(self.topology_json()).encode() + b"\n"
            else:
                body = self.topology_figure(fmt)
        except CntraceError as exc:  # Docker down, Graphviz missing: a state, not a bug
            return _text(503, str(exc))
        return Response(200, TOPOLOGY_FORMATS[fmt], body)

    def _index(self, headers: Any, query: str) -> Response:
        return Response(200, "text/html; charset=utf-8",
                        landing_page.render(self.telemetry_path))


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily,
                 app: MetricsServer):
        self.address_family = family
        self.app = app
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves socket.getfqdn(host), a reverse DNS
        # lookup that can stall start-up for seconds; the name is never used.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exception()
        if isinstance(exc, OSError):
            return  # reset, broken pipe, timeout, failed TLS handshake
        log.error("cntrace: HTTP connection from %s failed", client_address[0], exc_info=exc)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive: Prometheus reuses the TLS session
    server_version = f"cntrace/{__version__}"
    sys_version = ""
    timeout = CONNECTION_TIMEOUT

    def setup(self) -> None:
        self.request.settimeout(self.timeout)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()
        super().setup()

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def _serve(self, send_body: bool) -> None:
        app = self.server.app
        if app.authorized(self.headers.get("Authorization")):
            url = urlsplit(self.path)
            response = app.respond(url.path, self.headers, url.query)
        else:
            response = _text(401, "unauthorized")._replace(
                headers=(("WWW-Authenticate", f'Basic realm="{REALM}"'),))
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: no line per request, nor for malformed ones or timeouts."""
