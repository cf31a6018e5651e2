"""Every query of the Grafana dashboard, run by a real Prometheus against a real
`cntrace daemon` on the testbed, returns data; the alerting rules load and
stay quiet on a healthy host; the static scrape config's relabeling gives
`instance` as the bare host.

Traffic first, so that every panel has something to show: pings a -> b and
a -> wan (SNAT), a connection from the wan netns to a published port (DNAT),
and pings a -> wan through a DOCKER-USER DROP rule (NETFILTER_DROP drops).
"""

from __future__ import annotations

import contextlib
import json
import socket

import pytest
import yaml

from tests.dashboard import (
    PROMETHEUS_DIR,
    RULES,
    TEMPLATE_VALUES,
    label_values_as_promql,
    load_dashboard,
    queries,
    substitute,
    variable_queries,
)
from tests.integration.prometheus import PrometheusServer, prometheus_available
from tests.integration.test_daemon_live import Daemon, wait_until
from tests.integration.test_ping_live import extra_container, iptables_rule
from tracer.host.topology import COMPOSE_PROJECT_LABEL, COMPOSE_SERVICE_LABEL
from tracer.ping.probe_socket import open_socket
from tracer.testbed import check_route

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not prometheus_available(),
                       reason="needs the `prometheus` binary (apt-get install prometheus)"),
]

WEB, WEB_PORT = "cntrace-test-dashweb", 18082   # a published port, for DNAT series
# WEB as Compose would label it: the project and service variables list it.
PROJECT, SERVICE = "cntrace-dash", "web"
DASHBOARD = load_dashboard()


class RulesPrometheus(PrometheusServer):
    """The harness's PrometheusServer, with rule files in its config."""

    def __init__(self, tmp_dir, scrape_configs: list[dict], rule_files: list) -> None:
        super().__init__(tmp_dir, scrape_configs)
        self.rule_files = [str(path) for path in rule_files]

    def write_config(self):
        path = super().write_config()
        config = json.loads(path.read_text())
        path.write_text(json.dumps({**config, "rule_files": self.rule_files}, indent=2) + "\n")
        return path

    def rule_groups(self) -> list[dict]:
        return self._api("rules")["groups"]


def static_job(target: str) -> dict:
    """The `cntrace` job of deploy/prometheus/scrape-static.yml, relabeling
    included, pointed at the test daemon and scraped every second."""
    (job,) = yaml.safe_load((PROMETHEUS_DIR / "scrape-static.yml").read_text())["scrape_configs"]
    return {**job, "scrape_interval": "1s", "scrape_timeout": "1s",
            "static_configs": [{"targets": [target]}]}


def make_traffic(testbed, docker_client) -> None:
    a, b = testbed.containers["a"], testbed.containers["b"]
    pinger = docker_client.containers.get(a.name)
    check_route(b.ip, [b.bridge])
    assert pinger.exec_run(["ping", "-c", "3", "-i", "0.2", "-W", "1", b.ip]).exit_code == 0
    check_route(testbed.wan_ip, [testbed.wan_host_ifname])
    assert pinger.exec_run(["ping", "-c", "3", "-i", "0.2", "-W", "1",
                            testbed.wan_ip]).exit_code == 0
    # The wan netns connects to the published port on the host's wan address.
    client = open_socket(f"/run/netns/{testbed.wan_netns}", socket.AF_INET, socket.SOCK_STREAM)
    with client:
        client.settimeout(5)
        client.connect((testbed.wan_host_ip, WEB_PORT))
        client.sendall(b"GET / HTTP/1.0\r\n\r\n")
        client.recv(100)
    with iptables_rule("DOCKER-USER", "-s", a.ip, "-d", testbed.wan_ip, "-j", "DROP"):
        pinger.exec_run(["ping", "-c", "2", "-i", "0.2", "-W", "1", testbed.wan_ip])


@pytest.fixture(scope="module")
def prom(testbed, docker_client, tmp_path_factory):
    """A daemon, a published-port container, traffic, and a Prometheus that has
    scraped all of it."""
    daemon = Daemon()
    try:
        with contextlib.ExitStack() as stack:
            # Prometheus's first scrape lands ~5 s after start: let that
            # overlap the daemon's BPF compile and the container start.
            server = stack.enter_context(RulesPrometheus(
                tmp_path_factory.mktemp("dashboard"), [static_job(f"127.0.0.1:{daemon.port}")],
                [RULES]))
            stack.enter_context(extra_container(
                docker_client, WEB, ports={"80/tcp": WEB_PORT},
                command=["httpd", "-f", "-p", "80", "-h", "/"],
                labels={COMPOSE_PROJECT_LABEL: PROJECT, COMPOSE_SERVICE_LABEL: SERVICE}))
            daemon.wait_ready()
            wait_until(lambda: WEB in daemon.text(), f"the daemon counts {WEB}")
            # A DNAT or drop series first appears with its first packet counted,
            # and rate() sees no increase before a series' first sample: send
            # once to create the series, again once Prometheus has them.
            make_traffic(testbed, docker_client)
            for series in (f'cntrace_container_dnat_packets_total{{container="{WEB}"}}',
                           'cntrace_container_drops_total{reason="NETFILTER_DROP"}'):
                server.wait_for(series)
            make_traffic(testbed, docker_client)
            yield server
    finally:
        code, err = daemon.stop()
    assert code == 0, err


def test_static_scrape_config_relabels_instance_to_the_host(prom):
    result = prom.wait_for('up{job="cntrace"} == 1')
    assert [r["metric"]["instance"] for r in result] == ["127.0.0.1"]


@pytest.mark.parametrize("query", queries(DASHBOARD), ids=lambda q: q.id)
def test_dashboard_query_returns_data(prom, query):
    # rates need two scrapes of a series: wait_for allows for that.
    result = prom.wait_for(substitute(query.expr, TEMPLATE_VALUES))
    assert result


def dashboard_query(panel: str, ref: str = "A") -> str:
    (query,) = [q for q in queries(DASHBOARD) if (q.panel, q.ref) == (panel, ref)]
    return substitute(query.expr, TEMPLATE_VALUES)


# The series each kind of traffic sent must put, non-zero, on its panel.
SHOWN = [
    ("Packets/s by container and direction", {"container": "cntrace-test-a",
                                               "direction": "tx"}),
    ("Top talkers: bytes/s by container and peer", {"container": "cntrace-test-a",
                                                    "peer": "cntrace-test-b"}),
    ("SNAT (MASQUERADE) packets/s and new bindings/s", {"container": "cntrace-test-a"}),
    ("DNAT (published ports) packets/s and new bindings/s",
     {"container": WEB, "port": str(WEB_PORT), "protocol": "tcp"}),
    ("Drops/s by container and reason", {"container": "cntrace-test-a",
                                         "reason": "NETFILTER_DROP"}),
    ("Packets/s by service and direction", {"compose_project": PROJECT,
                                            "compose_service": SERVICE, "direction": "rx"}),
    ("Containers per service", {"compose_project": PROJECT, "compose_service": SERVICE}),
]


@pytest.mark.parametrize("panel, labels", SHOWN, ids=[panel for panel, _ in SHOWN])
def test_panel_shows_the_traffic_sent(prom, panel, labels):
    def shown(result):
        return any(labels.items() <= r["metric"].items() and float(r["value"][1]) > 0
                   for r in result)

    prom.wait_for(dashboard_query(panel), shown)


@pytest.mark.parametrize("name", sorted(variable_queries(DASHBOARD)))
def test_dashboard_variable_lists_the_testbed(prom, testbed, name):
    promql, label = label_values_as_promql(variable_queries(DASHBOARD)[name])
    # a container not from Compose has an empty project: no label at all in PromQL
    values = {r["metric"].get(label, "")
              for r in prom.wait_for(substitute(promql, TEMPLATE_VALUES))}
    expected = {"instance": {"127.0.0.1"}, "project": {PROJECT}, "service": {SERVICE},
                "container": {c.name for c in testbed.containers.values()} | {WEB}}[name]
    assert expected <= values


def test_rules_load_and_stay_quiet_on_a_healthy_testbed(prom):
    def evaluated():
        groups = prom.rule_groups()
        rules = [r for g in groups for r in g["rules"]]
        return all(r["health"] == "ok" for r in rules) and groups

    (group,) = wait_until(evaluated, "every rule evaluated", timeout=15)
    assert group["name"] == "cntrace" and len(group["rules"]) == 8
    for rule in group["rules"]:
        assert rule["state"] == "inactive", (rule["name"], rule["alerts"])
