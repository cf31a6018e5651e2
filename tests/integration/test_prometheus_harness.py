"""The Prometheus harness itself: a real Prometheus scrapes a tiny exporter on
127.0.0.1 and sees its counter; promtool tells good exposition text from bad;
a failed start or an unmet wait says why; no prometheus is left running."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest, start_http_server

from tests.integration.prometheus import (
    PrometheusError,
    PrometheusServer,
    prometheus_available,
    promtool_available,
    promtool_check_config,
    promtool_check_metrics,
    scrape_config,
    value,
)

pytestmark = pytest.mark.integration
needs_prometheus = pytest.mark.skipif(
    not prometheus_available(),
    reason="needs the `prometheus` binary (apt-get install prometheus)")
needs_promtool = pytest.mark.skipif(
    not promtool_available(), reason="needs `promtool` (apt-get install prometheus)")


def prometheus_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-x", "prometheus"], capture_output=True, text=True)
    return {int(pid) for pid in out.stdout.split()}


@pytest.fixture(autouse=True, scope="module")
def no_prometheus_left():
    """Whatever ran before (a host's own Prometheus) may stay; nothing we started may."""
    before = prometheus_pids()
    yield
    assert prometheus_pids() <= before, "a prometheus started by these tests is still running"


@pytest.fixture
def exporter():
    """A prometheus_client exporter on 127.0.0.1 with harness_test_total at 5."""
    registry = CollectorRegistry()
    Counter("harness_test", "Counts nothing; the harness test sets it to 5",
            registry=registry).inc(5)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield registry, f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again once the with block ends


@needs_prometheus
def test_prometheus_scrapes_exporter_counter(tmp_path, exporter):
    _, target = exporter
    with PrometheusServer(tmp_path, [scrape_config("harness", target)]) as prom:
        pid = prom.proc.pid
        assert prom.url.startswith("http://127.0.0.1:")
        prom.wait_for('up{job="harness"} == 1')
        result = prom.wait_for('harness_test_total{job="harness"}', lambda r: bool(r) and
                               value(r) == 5)
        assert result[0]["metric"]["instance"] == target
        (health,) = prom.targets()
        assert (health["scrapeUrl"], health["health"]) == (f"http://{target}/metrics", "up")
        print(f"prometheus ready in {prom.startup_seconds:.2f}s")
    assert prom.proc is None
    assert pid not in prometheus_pids()


@needs_prometheus
def test_query_error_is_raised(tmp_path):
    with PrometheusServer(tmp_path, []) as prom, pytest.raises(PrometheusError, match="bad_data"):
        prom.query("sum(")


@needs_prometheus
def test_wait_for_timeout_names_target_health(tmp_path):
    dead = f"127.0.0.1:{closed_port()}"
    with PrometheusServer(tmp_path, [scrape_config("dead", dead)]) as prom:
        prom.wait_for('up{job="dead"} == 0', timeout=15)  # scraped once, and failed
        with pytest.raises(AssertionError) as err:
            prom.wait_for('up{job="dead"} == 1', timeout=1)
    message = str(err.value)
    assert "last result []" in message
    assert f"http://{dead}/metrics" in message
    assert "'health': 'down'" in message and "connection refused" in message


@needs_prometheus
def test_failed_start_reports_log_and_leaves_nothing(tmp_path):
    server = PrometheusServer(tmp_path, [{"job_name": "bad", "no_such_field": 1}])
    with pytest.raises(PrometheusError, match="field no_such_field not found"):
        server.start(timeout=10)
    assert server.proc is None


@needs_promtool
def test_config_with_basic_auth_and_tls_is_written_as_given(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("")  # promtool 2.42 checks the config's shape, not the CA's contents
    secure = scrape_config(
        "secure", "127.0.0.1:9443", scheme="https",
        basic_auth={"username": "scraper", "password": "s3cret"},
        tls_config={"ca_file": str(ca), "server_name": "cntrace", "insecure_skip_verify": False})
    insecure = scrape_config("insecure", "127.0.0.1:9444", scheme="https",
                             tls_config={"insecure_skip_verify": True})
    path = PrometheusServer(tmp_path, [secure, insecure], scrape_interval="5s").write_config()

    assert json.loads(path.read_text()) == {
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
        "scrape_configs": [
            {"job_name": "secure", "static_configs": [{"targets": ["127.0.0.1:9443"]}],
             "scheme": "https", "basic_auth": {"username": "scraper", "password": "s3cret"},
             "tls_config": {"ca_file": str(ca), "server_name": "cntrace",
                            "insecure_skip_verify": False}},
            {"job_name": "insecure", "static_configs": [{"targets": ["127.0.0.1:9444"]}],
             "scheme": "https", "tls_config": {"insecure_skip_verify": True}},
        ]}
    code, output = promtool_check_config(path)
    assert code == 0, output  # Prometheus's own YAML parser accepts it


@needs_promtool
def test_promtool_accepts_client_python_output(exporter):
    registry, _ = exporter
    code, output = promtool_check_metrics(generate_latest(registry).decode())
    assert (code, output) == (0, "")


# What promtool 2.42 says, verbatim: exit 3 for lint problems, 1 for a parse error.
@needs_promtool
@pytest.mark.parametrize("text, code, lines", [
    ("# TYPE foo counter\nfoo 1\n", 3,
     ['foo counter metrics should have "_total" suffix', "foo no help text"]),
    ("# HELP foo_total Foos.\n# TYPE foo_total counter\nfoo_total 1\n", 0, []),
    ("# HELP foo_milliseconds Foo time.\n# TYPE foo_milliseconds gauge\nfoo_milliseconds 1\n", 3,
     ["foo_milliseconds use base unit \"seconds\" instead of \"milliseconds\""]),
    ("foo{ 1\n", 1,
     ["error while linting: text format parsing error in line 1: "
      "invalid label name for metric \"foo\""]),
], ids=["counter-without-total", "clean", "non-base-unit", "unparseable"])
def test_promtool_check_metrics_verdicts(text, code, lines):
    assert promtool_check_metrics(text) == (code, "".join(f"{line}\n" for line in lines))
