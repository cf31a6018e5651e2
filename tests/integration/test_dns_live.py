"""trace-ping --dns: the query goes where the container's own resolv.conf
sends it, is traced there and back, and the answer (or its absence) is
diagnosed.  Only names Docker serves (containers on a user-defined network)
and a resolver the tests run in their own wan netns are ever asked."""

from __future__ import annotations

import pytest

from tests.integration.dns_server import resolver_in_netns
from tests.integration.helpers import extra_container, ip_of, trace_ping
from tracer.testbed import check_route

pytestmark = pytest.mark.integration

ZONE = {"db.cntrace.test": "198.51.100.7"}
REFUSED = "refused.cntrace.test"
MISSING = "missing.cntrace.test"


def findings(result: dict) -> list[str]:
    return [h["text"] for h in result["hints"] if h["finding"]]


def test_docker_embedded_dns_answers_a_container_name(testbed, docker_client):
    c = testbed.containers["c"]
    with extra_container(docker_client, "cntrace-test-db", network=testbed.user_network) as db:
        code, result, _ = trace_ping(c.name, "--dns", "cntrace-test-db", "--json")
        expected = ip_of(db, testbed.user_network)
    assert code == 0, result["hints"]
    assert result["dns"] == {"name": "cntrace-test-db", "server": "127.0.0.11",
                             "rcode": "NOERROR", "addresses": [expected]}
    # Docker's DNAT inside the container's netns, to dockerd's own socket.
    dnat = [n for n in result["nat"] if n.startswith("dnat 127.0.0.11:53 -> 127.0.0.11:")]
    assert dnat, result["nat"]
    assert [h["device"] for h in result["path"]["request"]] == ["lo", "lo"]
    assert result["path"]["reply"], "the answer was traced back"


@pytest.fixture
def wan_resolver_client(testbed, docker_client):
    """A container on docker0 whose resolv.conf names the wan's test resolver."""
    check_route(testbed.wan_ip, [testbed.wan_host_ifname])
    with extra_container(docker_client, "cntrace-test-dnsclient",
                         dns=[testbed.wan_ip]) as client:
        yield client


def test_a_name_the_resolver_knows_is_resolved_through_the_snat(testbed,
                                                                 wan_resolver_client):
    with resolver_in_netns(testbed.wan_netns, testbed.wan_ip, ZONE):
        code, result, _ = trace_ping(wan_resolver_client.name, "--dns", "db.cntrace.test",
                                     "--json")
    assert code == 0, result["hints"]
    assert result["dns"]["server"] == testbed.wan_ip
    assert result["dns"]["addresses"] == ["198.51.100.7"]
    assert any(n.startswith("snat ") for n in result["nat"])


@pytest.mark.parametrize("name, kind, words", [
    (MISSING, "dns-nxdomain", f"answered NXDOMAIN: {MISSING} does not exist there"),
    (REFUSED, "dns-refused", f"refused the query for {REFUSED}"),
])
def test_a_negative_answer_is_diagnosed(testbed, wan_resolver_client, name, kind, words):
    with resolver_in_netns(testbed.wan_netns, testbed.wan_ip, ZONE, refuse=[REFUSED]):
        code, result, _ = trace_ping(wan_resolver_client.name, "--dns", name, "--json")
    assert code == 1
    assert result["hints"][0]["kind"] == kind and words in result["hints"][0]["text"]
    assert result["drops"] == []


def test_a_resolver_that_is_not_running_is_diagnosed(testbed, wan_resolver_client):
    code, result, _ = trace_ping(wan_resolver_client.name, "--dns", "db.cntrace.test",
                                 "--json")
    assert code == 1
    assert result["hints"][0]["kind"] == "dns-unreachable", result["hints"]
    assert f"no DNS server listens at {testbed.wan_ip}" in findings(result)[0]


def test_a_resolver_that_never_answers_is_diagnosed(testbed, wan_resolver_client):
    with resolver_in_netns(testbed.wan_netns, testbed.wan_ip, ZONE,
                           silent=["db.cntrace.test"]):
        code, result, _ = trace_ping(wan_resolver_client.name, "--dns", "db.cntrace.test",
                                     "--json")
    assert code == 1
    assert result["hints"][0]["kind"] == "dns-no-answer", result["hints"]
    assert f"{testbed.wan_ip} never answered" in result["hints"][0]["text"]


def test_an_explicit_server_is_asked_instead(testbed):
    a = testbed.containers["a"]
    check_route(testbed.wan_ip, [testbed.wan_host_ifname])
    with resolver_in_netns(testbed.wan_netns, testbed.wan_ip, ZONE):
        code, text, _ = trace_ping(a.name, testbed.wan_ip, "--dns", "db.cntrace.test")
    assert code == 0
    assert "dns:     db.cntrace.test -> NOERROR 198.51.100.7" in text
    assert "RESOLVED: 1/1 answered" in text


@pytest.mark.parametrize("args, message", [
    (["--dns", "bad..name"], "--dns: "),
    (["--dns", "db.test", "--tcp", "53"], "--dns sends its own UDP query"),
    ([], "a destination is needed (or --dns NAME)"),
])
def test_bad_dns_input_exits_2(testbed, args, message):
    code, _, err = trace_ping(testbed.containers["a"].name, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
