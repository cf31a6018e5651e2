"""The daemon's HTTP endpoint, served on 127.0.0.1 and scraped the way
Prometheus does: plain, with basic auth, over TLS and with client
certificates. Loopback only, so no root and no Docker."""

import base64
import gzip
import http.client
import json
import logging
import socket
import ssl
import threading
import time

import bcrypt
import pytest
from prometheus_client import CollectorRegistry, Counter

from tests.certs import Pki, make_pki
from tracer.daemon.httpserver import MetricsServer
from tracer.daemon.webconfig import TlsConfig, WebConfig
from tracer.errors import DockerUnavailableError, UsageError

LOOPBACK = "127.0.0.1"
TOPOLOGY = {"containers": [{"name": "web", "netns": 4026532185}]}
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("cntrace_test_scrapes", "Scrapes seen by the test.", registry=registry).inc(3)
    return registry


class State:
    """What the daemon would report: health and topology, changeable by tests."""

    def __init__(self):
        self.health = (True, "")
        self.topology_error: Exception | None = None

    def healthy(self):
        return self.health

    def topology(self):
        if self.topology_error is not None:
            raise self.topology_error
        return TOPOLOGY


@pytest.fixture
def state() -> State:
    return State()


@pytest.fixture
def serve(registry, state):
    """serve(web_config=None) -> a started MetricsServer on 127.0.0.1, stopped after."""
    servers = []

    def start(web_config: WebConfig | None = None) -> MetricsServer:
        server = MetricsServer(LOOPBACK, 0, registry, web_config, state.topology, state.healthy)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def request(port: int, path: str, headers: dict | None = None, context=None,
            method: str = "GET") -> tuple[int, http.client.HTTPMessage, bytes]:
    if context is None:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    else:
        conn = http.client.HTTPSConnection(LOOPBACK, port, timeout=10, context=context)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def wait_until_connections_end(timeout: float = 5.0) -> None:
    """Until the server has finished with every connection (and so has
    written whatever it was going to write to stderr)."""
    deadline = time.monotonic() + timeout
    while any("process_request_thread" in t.name for t in threading.enumerate()):
        assert time.monotonic() < deadline, "server connection threads still running"
        time.sleep(0.02)


def assert_nothing_said(capfd, caplog) -> None:
    """Neither stderr nor the log heard about the connections so far."""
    wait_until_connections_end()
    assert capfd.readouterr() == ("", "")
    assert [r.getMessage() for r in caplog.records] == []


def basic(user: str, password: str) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def client_context(pki: Pki, with_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if with_cert:
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


def tls_config(pki: Pki, client_auth_type: str = "NoClientCert") -> WebConfig:
    ca = None if client_auth_type == "NoClientCert" else str(pki.ca)
    return WebConfig(tls=TlsConfig(str(pki.server_cert), str(pki.server_key),
                                   client_ca_file=ca, client_auth_type=client_auth_type))


# --- plain HTTP ---

def test_metrics_scrape_has_the_counter(serve):
    status, headers, body = request(serve().port, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"\ncntrace_test_scrapes_total 3.0\n" in body


def test_metrics_openmetrics_when_asked(serve):
    status, headers, body = request(serve().port, "/metrics", {"Accept": OPENMETRICS})
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert b"\ncntrace_test_scrapes_total 3.0\n" in body
    assert body.endswith(b"# EOF\n")


def test_metrics_gzip_when_asked(serve):
    status, headers, body = request(serve().port, "/metrics?x=1", {"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert b"cntrace_test_scrapes_total 3.0" in gzip.decompress(body)


def test_keep_alive_serves_several_requests_on_one_connection(serve):
    conn = http.client.HTTPConnection(LOOPBACK, serve().port, timeout=10)
    try:
        for path in ("/metrics", "/healthz", "/metrics"):
            conn.request("GET", path)
            response = conn.getresponse()
            assert response.status == 200
            assert response.read()
    finally:
        conn.close()


def test_head_has_headers_and_no_body(serve):
    status, headers, body = request(serve().port, "/metrics", method="HEAD")
    assert status == 200
    assert int(headers["Content-Length"]) > 0
    assert body == b""


def test_healthz(serve, state):
    server = serve()
    assert request(server.port, "/healthz")[::2] == (200, b"ok\n")
    state.health = (False, "no BPF program attached: tc ingress hook missing")
    assert request(server.port, "/healthz")[::2] == (
        503, b"no BPF program attached: tc ingress hook missing\n")


def test_topology_is_json(serve):
    status, headers, body = request(serve().port, "/topology")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == TOPOLOGY


def test_topology_unavailable_is_503(serve, state):
    state.topology_error = DockerUnavailableError("cannot reach the Docker engine")
    assert request(serve().port, "/topology")[::2] == (503, b"cannot reach the Docker engine\n")


def test_endpoint_that_raises_is_500_and_one_log_line(serve, state, caplog):
    state.topology_error = KeyError("netns")
    server = serve()
    with caplog.at_level(logging.ERROR, logger="tracer.daemon.httpserver"):
        status, _, body = request(server.port, "/topology")
    assert status == 500
    assert b"internal error" in body
    assert [r.getMessage() for r in caplog.records] == [
        "cntrace: GET /topology failed: KeyError: 'netns'"]
    assert request(server.port, "/metrics")[0] == 200


def test_index_links_the_endpoints(serve):
    status, headers, body = request(serve().port, "/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    for link in (b'href="metrics"', b'href="healthz"', b'href="topology"'):
        assert link in body


@pytest.mark.parametrize("path", ["/nope", "/metrics/", "/favicon.ico"])
def test_unknown_path_is_404(serve, path):
    assert request(serve().port, path)[0] == 404


def test_bind_failure_is_a_usage_error(serve):
    port = serve().port
    taken = MetricsServer(LOOPBACK, port, CollectorRegistry(), None, dict, lambda: (True, ""))
    with pytest.raises(UsageError, match=rf"^cannot listen on 127\.0\.0\.1:{port}: "
                                         "Address already in use$"):
        taken.start()


def test_client_disconnects_are_quiet(serve, capfd, caplog):
    port = serve().port
    with socket.create_connection((LOOPBACK, port)) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # then hang up mid-headers
    with socket.create_connection((LOOPBACK, port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # and reset, unread
    with socket.create_connection((LOOPBACK, port)) as sock:
        sock.sendall(b"BREW /metrics HTTP/1.1\r\n\r\n")  # answered, not logged
        assert sock.recv(100).startswith(b"HTTP/1.1 501")
    assert_nothing_said(capfd, caplog)
    assert request(port, "/metrics")[0] == 200


# --- basic auth ---

@pytest.fixture(scope="module")
def alice_config() -> WebConfig:
    hashed = bcrypt.hashpw(b"wonderland", bcrypt.gensalt(rounds=4))
    return WebConfig(basic_auth_users={"alice": hashed})


def test_basic_auth_right_password(serve, alice_config):
    status, _, body = request(serve(alice_config).port, "/metrics", basic("alice", "wonderland"))
    assert status == 200
    assert b"cntrace_test_scrapes_total" in body


@pytest.mark.parametrize("headers", [
    {},
    basic("alice", "looking-glass"),
    basic("bob", "wonderland"),
    {"Authorization": "Bearer wonderland"},
], ids=["missing", "wrong-password", "unknown-user", "not-basic"])
@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/topology", "/", "/nope"])
def test_basic_auth_refused_on_every_path(serve, alice_config, headers, path):
    status, response_headers, body = request(serve(alice_config).port, path, headers)
    assert status == 401
    assert response_headers["WWW-Authenticate"] == 'Basic realm="cntrace"'
    assert b"cntrace_test" not in body


# --- TLS ---

def test_https_scrape_with_the_ca(serve, pki):
    status, _, body = request(serve(tls_config(pki)).port, "/metrics",
                              context=client_context(pki))
    assert status == 200
    assert b"cntrace_test_scrapes_total 3.0" in body


def test_https_with_basic_auth(serve, pki, alice_config):
    config = WebConfig(tls=tls_config(pki).tls, basic_auth_users=alice_config.basic_auth_users)
    port = serve(config).port
    context = client_context(pki)
    assert request(port, "/metrics", basic("alice", "wonderland"), context)[0] == 200
    assert request(port, "/metrics", basic("alice", "nope"), context)[0] == 401


def test_plain_http_to_tls_port_fails_quietly(serve, pki, capfd, caplog):
    port = serve(tls_config(pki)).port
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        request(port, "/metrics")
    assert_nothing_said(capfd, caplog)
    assert request(port, "/metrics", context=client_context(pki))[0] == 200


def test_untrusted_server_certificate_is_refused_by_the_client(serve, pki):
    port = serve(tls_config(pki)).port
    with pytest.raises(ssl.SSLCertVerificationError):
        request(port, "/metrics", context=ssl.create_default_context())


def test_silent_client_does_not_hold_up_other_scrapes(serve, pki):
    port = serve(tls_config(pki)).port
    with socket.create_connection((LOOPBACK, port)):  # connects, never says hello
        started = time.monotonic()
        assert request(port, "/metrics", context=client_context(pki))[0] == 200
        assert time.monotonic() - started < 5


def test_client_cert_required(serve, pki, capfd, caplog):
    port = serve(tls_config(pki, "RequireAndVerifyClientCert")).port
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        request(port, "/metrics", context=client_context(pki))
    status, _, body = request(port, "/metrics", context=client_context(pki, with_cert=True))
    assert status == 200
    assert b"cntrace_test_scrapes_total 3.0" in body
    assert_nothing_said(capfd, caplog)


def test_client_cert_from_another_ca_is_refused(serve, pki, tmp_path):
    stranger = make_pki(tmp_path)
    port = serve(tls_config(pki, "RequireAndVerifyClientCert")).port
    context = client_context(pki)
    context.load_cert_chain(str(stranger.client_cert), str(stranger.client_key))
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        request(port, "/metrics", context=context)


def test_client_cert_optional(serve, pki):
    port = serve(tls_config(pki, "VerifyClientCertIfGiven")).port
    assert request(port, "/metrics", context=client_context(pki))[0] == 200
    assert request(port, "/metrics", context=client_context(pki, with_cert=True))[0] == 200
