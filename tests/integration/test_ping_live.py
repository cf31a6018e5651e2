"""trace-ping on the real testbed: each scenario of the seed story, working
and broken.  Every test restores what it changed (iptables rules, sysctls,
extra containers) in a finally, even when it fails."""

from __future__ import annotations

import time

import pytest

from tests.integration.helpers import (
    extra_container,
    ip_of,
    iptables_rule,
    link,
    link_by_index,
    sysctl,
    trace_ping,
)
from tracer.testbed import check_route

pytestmark = pytest.mark.integration


@pytest.mark.kernel
def test_container_to_container_on_the_default_bridge(testbed):
    a, b = testbed.containers["a"], testbed.containers["b"]
    check_route(b.ip, [b.bridge])
    code, result, _ = trace_ping(a.name, b.name, "--json")
    assert code == 0 and result["reachable"] and result["answered"] == 1
    assert result["address"] == b.ip
    veth_a = link_by_index(link("eth0", pid=a.pid)["link_index"])
    assert result["path"]["request_chain"] == [
        f"{a.name} eth0", f"{veth_a['ifname']}[{a.name}]", "docker0",
        result["path"]["request_chain"][3], f"{b.name} eth0"]
    assert result["path"]["request_chain"][3].endswith(f"[{b.name}]")
    assert result["path"]["reply_chain"][0] == f"{b.name} eth0"
    assert result["path"]["reply_chain"][-1] == f"{a.name} eth0"
    offsets = [h["offset_us"] for h in result["path"]["request"]]
    assert offsets == sorted(offsets) and offsets[0] >= 0


@pytest.mark.kernel
def test_container_to_container_on_a_user_network(testbed, docker_client):
    c = testbed.containers["c"]
    with extra_container(docker_client, "cntrace-test-d", network=testbed.user_network) as d:
        d_ip = ip_of(d, testbed.user_network)
        check_route(d_ip, [c.bridge])
        code, result, _ = trace_ping(c.name, "cntrace-test-d", "--json")
    assert code == 0, result
    assert result["address"] == d_ip
    assert c.bridge in result["path"]["request_chain"]
    assert result["path"]["request_chain"][-1] == "cntrace-test-d eth0"


@pytest.mark.kernel
def test_container_to_wan_shows_the_snat(testbed):
    a = testbed.containers["a"]
    check_route(testbed.wan_ip, [testbed.wan_host_ifname])
    code, result, _ = trace_ping(a.name, testbed.wan_ip, "--json")
    assert code == 0, result
    assert f"snat {a.ip} -> {testbed.wan_host_ip}" in result["nat"]
    leaving = [h for h in result["path"]["request"]
               if h["hook"] == "tx" and h["device"] == testbed.wan_host_ifname]
    assert leaving and leaving[0]["src"] == testbed.wan_host_ip


def test_text_output_draws_the_path(testbed):
    a = testbed.containers["a"]
    check_route(testbed.wan_ip, [testbed.wan_host_ifname])
    code, text, _ = trace_ping(a.name, testbed.wan_ip)
    assert code == 0
    assert f"[snat {a.ip} -> {testbed.wan_host_ip}]" in text
    assert "REACHABLE: 1/1 answered" in text


@pytest.mark.kernel
def test_wan_to_a_published_port_shows_the_dnat(testbed, docker_client):
    with extra_container(docker_client, "cntrace-test-web", ports={"80/tcp": 18080},
                         command=["httpd", "-f", "-p", "80", "-h", "/"]) as web:
        web_ip = ip_of(web, "bridge")
        time.sleep(0.3)  # httpd listening
        code, result, _ = trace_ping(f"netns:{testbed.wan_netns}",
                                     f"{testbed.wan_host_ip}:18080", "--json")
    assert code == 0, result
    assert result["protocol"] == "tcp"
    assert f"dnat {testbed.wan_host_ip}:18080 -> {web_ip}:80" in result["nat"]
    assert result["path"]["request_chain"][-1] == "cntrace-test-web eth0"


@pytest.mark.kernel
def test_drop_rule_in_docker_user_is_diagnosed(testbed):
    a = testbed.containers["a"]
    check_route(testbed.wan_ip, [testbed.wan_host_ifname])
    with iptables_rule("DOCKER-USER", "-s", a.ip, "-d", testbed.wan_ip, "-j", "DROP"):
        code, result, _ = trace_ping(a.name, testbed.wan_ip, "--json")
    assert code == 1 and not result["reachable"]
    assert [d["drop_reason"] for d in result["drops"]] == ["NETFILTER_DROP"]
    assert any("DOCKER-USER" in rule for rule in result["firewall_rules"])
    findings = [h["text"] for h in result["hints"] if h["finding"]]
    assert any("chain DOCKER-USER" in text for text in findings), findings


@pytest.mark.kernel
def test_ip_forwarding_disabled_is_diagnosed(testbed):
    a = testbed.containers["a"]
    check_route(testbed.wan_ip, [testbed.wan_host_ifname])
    with sysctl("net.ipv4.ip_forward", "0"):
        code, result, _ = trace_ping(a.name, testbed.wan_ip, "--json")
    assert code == 1
    findings = [h["text"] for h in result["hints"] if h["finding"]]
    assert any("net.ipv4.ip_forward=0" in text for text in findings), result["hints"]
    assert result["path"]["request"], "the probe was seen before it stopped"


def test_isolated_networks_are_diagnosed(testbed):
    a, c = testbed.containers["a"], testbed.containers["c"]
    code, result, _ = trace_ping(c.name, a.name, "--json")
    assert code == 1, result
    findings = [h["text"] for h in result["hints"] if h["finding"]]
    assert any("isolates" in text for text in findings), result["hints"]
    assert any("DOCKER-ISOLATION" in rule for rule in result["firewall_rules"])


def test_udp_to_a_closed_port_is_diagnosed_as_no_listener(testbed):
    a, b = testbed.containers["a"], testbed.containers["b"]
    check_route(b.ip, [b.bridge])
    code, result, _ = trace_ping(a.name, b.name, "--udp", "9", "--json")
    assert code == 1, result
    assert result["icmp_errors"], "the port unreachable was traced"
    findings = [h["text"] for h in result["hints"] if h["finding"]]
    assert any("nothing listens on port 9" in text for text in findings), result["hints"]


def test_tcp_to_a_closed_port_is_diagnosed_as_no_listener(testbed):
    a, b = testbed.containers["a"], testbed.containers["b"]
    check_route(b.ip, [b.bridge])
    code, result, _ = trace_ping(a.name, f"{b.ip}:81", "--json")
    assert code == 1, result
    findings = [h["text"] for h in result["hints"] if h["finding"]]
    assert any("nothing listens on TCP port 81" in text for text in findings), result["hints"]


def test_stopped_destination(testbed, docker_client):
    a = testbed.containers["a"]
    with extra_container(docker_client, "cntrace-test-stopped") as stopped:
        stopped.stop(timeout=0)
        code, result, _ = trace_ping(a.name, "cntrace-test-stopped", "--json")
    assert code == 1
    assert "is not running" in result["hints"][0]["text"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["cntrace-test-a", "no-such-container"], "unknown container 'no-such-container'"),
        (["no-such-container", "198.51.100.2"], "unknown container 'no-such-container'"),
        (["cntrace-test-a", "300.1.2.3"], "malformed address '300.1.2.3'"),
        (["cntrace-test-a", "198.51.100.2:99999"], "invalid port 99999"),
        (["cntrace-test-a", "198.51.100.2", "--tcp", "0"], "invalid port 0"),
        (["cntrace-test-a", "198.51.100.2", "--count", "0"], "--count 0"),
        (["netns:nope", "198.51.100.2"], "unknown network namespace 'nope'"),
    ],
)
def test_bad_input_exits_2(testbed, args, message):
    code, _, err = trace_ping(*args)
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1
