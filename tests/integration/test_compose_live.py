"""Compose on the real testbed: containers labelled the way `docker compose`
labels them (project, service, container number, on the project's default
network; the compose plugin itself is not needed), scaled up and down under
a running daemon, with exact counts per service; `--docker.label` exports
another label; and containers without a veth of their own (host network,
none, another container's netns, macvlan) are listed with their reason,
never silently absent."""

from __future__ import annotations

import contextlib
import itertools
import socket
import subprocess
import time

import docker
import pytest

from tests.integration.helpers import CNTRACE, IMAGE_TAG, LABEL, wait_until
from tests.integration.test_daemon_live import Daemon, get, send_udp
from tracer.host.topology import COMPOSE_PROJECT_LABEL, COMPOSE_SERVICE_LABEL
from tracer.ping.probe_socket import open_socket
from tracer.testbed import check_route

pytestmark = pytest.mark.integration

PROJECT = "cntrace-shop"
NETWORK = f"{PROJECT}_default"          # what Compose names a project's network
TEAM_LABEL = "com.example.team"         # exported with --docker.label
TEAM_SERIES_LABEL = "container_label_com_example_team"
PORT, COUNT, PAYLOAD = 9998, 200, 60


def compose_labels(service: str, number: int) -> dict[str, str]:
    return {COMPOSE_PROJECT_LABEL: PROJECT, COMPOSE_SERVICE_LABEL: service,
            "com.docker.compose.container-number": str(number),
            "com.docker.compose.oneoff": "False", "com.docker.compose.version": "2.29.1",
            "com.docker.compose.project.working_dir": "/srv/shop",
            TEAM_LABEL: "payments" if service == "web" else "data", LABEL: "cntrace-test"}


class Project:
    """A Compose project's containers, created and removed as Compose would."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.containers: dict[str, docker.models.containers.Container] = {}

    def scale(self, service: str, replicas: int) -> None:
        for number in range(1, replicas + 1):
            name = f"{PROJECT}-{service}-{number}"
            if name not in self.containers:
                self.containers[name] = self.client.containers.run(
                    IMAGE_TAG, ["sleep", "3600"], name=name, detach=True, network=NETWORK,
                    labels=compose_labels(service, number))
        for name in [n for n in self.containers if n.startswith(f"{PROJECT}-{service}-")]:
            if int(name.rsplit("-", 1)[1]) > replicas:
                self.containers.pop(name).remove(force=True)

    def of(self, service: str) -> list[str]:
        return sorted(n for n in self.containers if n.startswith(f"{PROJECT}-{service}-"))

    def pid_ip(self, name: str) -> tuple[int, str]:
        container = self.containers[name]
        container.reload()
        return (container.attrs["State"]["Pid"],
                container.attrs["NetworkSettings"]["Networks"][NETWORK]["IPAddress"])

    def remove(self) -> None:
        for container in self.containers.values():
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
        self.containers.clear()


@pytest.fixture
def project(testbed, docker_client):
    with contextlib.suppress(docker.errors.NotFound):
        docker_client.networks.get(NETWORK).remove()
    network = docker_client.networks.create(
        NETWORK, driver="bridge", labels={"com.docker.compose.network": "default",
                                          COMPOSE_PROJECT_LABEL: PROJECT, LABEL: "cntrace-test"})
    shop = Project(docker_client)
    try:
        yield shop
    finally:
        shop.remove()
        network.remove()


def service_sum(samples, name: str, service: str, **labels) -> float:
    return sum(value for (sample, sample_labels), value in samples.items()
               if sample == name and dict(sample_labels).get("compose_service") == service
               and dict(sample_labels).get("compose_project") == PROJECT
               and labels.items() <= dict(sample_labels).items())


def series_of(samples, name: str) -> set[str]:
    return {dict(labels)["container"] for sample, labels in samples
            if sample == name and "container" in dict(labels)}


def counted(daemon: Daemon, names: list[str]) -> bool:
    return set(names) <= series_of(daemon.scrape(), "cntrace_container_packets_total")


def send_from_each(shop: Project, senders: list[str], db: str) -> None:
    _, db_ip = shop.pid_ip(db)
    bridge = f"br-{shop.client.networks.get(NETWORK).id[:12]}"
    check_route(db_ip, [bridge])
    for name in senders:
        pid, _ = shop.pid_ip(name)
        send_udp(pid, db_ip, PORT, COUNT, PAYLOAD)


def exact_service_counts(daemon: Daemon, shop: Project, senders: list[str], db: str) -> None:
    """Each web replica sends COUNT datagrams to db: web's service total, and
    db's from web, are exactly len(senders) * COUNT packets, and their bytes.
    Fresh veths chatter (IPv6 router solicitations): the service totals are
    taken in a window where no other peer moved them, as the daemon's own
    exactness test does."""
    db_pid, db_ip = shop.pid_ip(db)
    expected = len(senders) * COUNT
    sink = open_socket(f"/proc/{db_pid}/ns/net", socket.AF_INET, socket.SOCK_DGRAM)
    with sink:
        sink.bind((db_ip, PORT))    # a listener: no ICMP errors come back
        for _ in range(5):
            before = daemon.scrape()
            send_from_each(shop, senders, db)
            time.sleep(0.5)
            after = daemon.scrape()
            delta = {key: after[key] - before.get(key, 0) for key in after}
            assert service_sum(delta, "cntrace_container_peer_packets_total", "web",
                               peer=db, direction="tx") == expected
            for web in senders:
                assert get(delta, "cntrace_container_peer_bytes_total", container=db,
                           peer=web, direction="rx") == COUNT * (28 + PAYLOAD)
            web_tx = service_sum(delta, "cntrace_container_packets_total", "web",
                                 direction="tx")
            db_rx = service_sum(delta, "cntrace_container_packets_total", "db", direction="rx")
            if web_tx == expected and db_rx == expected:
                break
        else:
            raise AssertionError(f"no quiet window: web tx {web_tx}, db rx {db_rx}, "
                                 f"expected {expected}")
    assert service_sum(delta, "cntrace_container_bytes_total", "web", direction="tx") == \
        expected * (28 + PAYLOAD)


def test_compose_services_are_counted_exactly_across_a_scale_up_and_down(project):
    project.scale("db", 1)
    project.scale("web", 1)
    d = Daemon("--docker.label", TEAM_LABEL)
    try:
        d.wait_ready()
        db = project.of("db")[0]
        wait_until(lambda: counted(d, [db, *project.of("web")]), "web-1 and db-1 counted")
        exact_service_counts(d, project, project.of("web"), db)

        project.scale("web", 3)
        webs = project.of("web")
        assert len(webs) == 3
        wait_until(lambda: counted(d, webs), "the three web replicas counted")
        exact_service_counts(d, project, webs, db)
        samples = d.scrape()
        labels = {dict(ls)["container"]: dict(ls) for name, ls in samples
                  if name == "cntrace_container_packets_total"}
        for web in webs:
            assert labels[web]["compose_project"] == PROJECT
            assert labels[web]["compose_service"] == "web"
            assert labels[web][TEAM_SERIES_LABEL] == "payments"
        assert labels[db][TEAM_SERIES_LABEL] == "data"
        assert labels["cntrace-test-a"][TEAM_SERIES_LABEL] == ""   # not from Compose

        project.scale("web", 1)
        gone = set(webs) - set(project.of("web"))
        wait_until(lambda: not gone & series_of(d.scrape(), "cntrace_container_packets_total"),
                   "the removed replicas' series gone")
        assert not gone & {dict(ls).get("container") for _, ls in d.scrape()}
        exact_service_counts(d, project, project.of("web"), db)
        # A peer named by container still works: web-1's peer is db's name.
        assert get(d.scrape(), "cntrace_container_peer_packets_total",
                   container=project.of("web")[0], peer=db, direction="tx") >= 3 * COUNT
    finally:
        code, err = d.stop()
    assert code == 0, err


def test_topology_shows_the_compose_project_and_service(project):
    project.scale("web", 2)
    done = subprocess.run([*CNTRACE, "topology"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for name in project.of("web"):
        at = next(i for i, line in enumerate(lines) if line.strip().startswith(name))
        # the row, and the lines it wraps onto (indented under its columns)
        row = [lines[at], *itertools.takewhile(lambda line: line.startswith(" " * 4),
                                               lines[at + 1:])]
        assert f"compose {PROJECT}/web" in " ".join(row), row


MACVLAN_PARENT = "cntrace-mvp0"     # a bridge with no address: a parent that reaches nothing
MACVLAN_NETWORK = "cntrace-test-macvlan"
MACVLAN_SUBNET = "10.213.77.0/24"   # lives only inside the macvlan container: nothing is sent


@pytest.fixture
def uncountable(testbed, docker_client):
    """One container of each kind that has no veth of its own."""
    subprocess.run(["ip", "link", "add", MACVLAN_PARENT, "type", "bridge"], check=True)
    made: list = []
    network = None
    try:
        subprocess.run(["ip", "link", "set", MACVLAN_PARENT, "up"], check=True)
        network = docker_client.networks.create(
            MACVLAN_NETWORK, driver="macvlan", options={"parent": MACVLAN_PARENT},
            ipam=docker.types.IPAMConfig(pool_configs=[
                docker.types.IPAMPool(subnet=MACVLAN_SUBNET)]),
            labels={LABEL: "cntrace-test"})

        def run(name: str, **kwargs):
            with contextlib.suppress(docker.errors.NotFound):
                docker_client.containers.get(name).remove(force=True)
            made.append(docker_client.containers.run(
                IMAGE_TAG, ["sleep", "3600"], name=name, detach=True,
                labels={LABEL: "cntrace-test", COMPOSE_PROJECT_LABEL: "edge",
                        COMPOSE_SERVICE_LABEL: name.rsplit("-", 1)[1]}, **kwargs))

        a = docker_client.containers.get(testbed.containers["a"].name)
        run("cntrace-test-hostnet", network_mode="host")
        run("cntrace-test-nonet", network_mode="none")
        run("cntrace-test-joined", network_mode=f"container:{a.id}")
        run("cntrace-test-macvlan", network=MACVLAN_NETWORK)
        yield {"cntrace-test-hostnet": "host_network", "cntrace-test-nonet": "no_network",
               "cntrace-test-joined": "shared_netns", "cntrace-test-macvlan": "macvlan"}
    finally:
        for container in made:
            container.remove(force=True)
        if network is not None:
            network.remove()
        subprocess.run(["ip", "link", "del", MACVLAN_PARENT], check=True)


def uncounted_reasons(samples) -> dict[str, str]:
    return {dict(ls)["container"]: dict(ls)["reason"] for (name, ls), value in samples.items()
            if name == "cntrace_container_uncounted" and value == 1}


def test_containers_without_a_veth_are_listed_with_their_reason(uncountable, testbed):
    d = Daemon()
    try:
        d.wait_ready()
        wait_until(lambda: uncounted_reasons(d.scrape()) == uncountable,
                   "each veth-less container in cntrace_container_uncounted")
        samples = d.scrape()
        counted_now = series_of(samples, "cntrace_container_packets_total")
        assert not counted_now & set(uncountable)
        assert {c.name for c in testbed.containers.values()} <= counted_now
        # the joined container's traffic is its host's: a keeps its counters
        assert testbed.containers["a"].name in counted_now
        project = {dict(ls)["container"]: dict(ls)["compose_project"] for (name, ls) in samples
                   if name == "cntrace_container_uncounted"}
        assert set(project.values()) == {"edge"}
    finally:
        code, err = d.stop()
    assert code == 0, err
    done = subprocess.run([*CNTRACE, "topology"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    listed = done.stdout.split("not counted by the daemon", 1)[1].split("host netns")[0]
    words = listed.split()   # a long name has a line to itself, its reason under it
    assert {name: words[words.index(name) + 1] for name in uncountable} == uncountable, listed
