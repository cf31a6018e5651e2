"""cntrace daemon on the real testbed: exact counters, NAT, drops, churn,
a real Prometheus scraping it, and its own configuration errors."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.helpers import (
    CNTRACE,
    bpf_gone,
    bpf_held,
    exit_devices,
    expected_attachments,
    hook_mechanisms,
    hops_of,
    scaled,
    tc_state,
    wait_until,
)
from tests.integration.prometheus import (
    PrometheusServer,
    prometheus_available,
    promtool_check_metrics,
    scrape_config,
    value,
)
from tests.integration.test_ping_live import extra_container, iptables_rule
from tracer.kernel import loader
from tracer.ping.probe_socket import open_socket
from tracer.testbed import check_route

pytestmark = pytest.mark.integration
A_NAME, B_NAME = "cntrace-test-a", "cntrace-test-b"
# What every per-container series carries besides `container` (prefixes).
CONTAINER_IDENTITY_LABELS = ("compose_project", "compose_service", "container_label_")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [*CNTRACE, "daemon", "--web.listen-address", f"127.0.0.1:{self.port}",
             "--reconcile-seconds", "2", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})})

    def wait_ready(self, url: str | None = None, timeout: float = 60, **kw) -> None:
        deadline = time.monotonic() + scaled(timeout)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited: {self.proc.stderr.read()}")
            try:
                with urllib.request.urlopen(f"{url or self.url}/healthz", timeout=2, **kw):
                    return
            except (OSError, urllib.error.URLError):
                time.sleep(0.2)
        raise AssertionError("daemon not ready")

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=scaled(20))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err

    def text(self, path: str = "/metrics") -> str:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as response:
            return response.read().decode()

    def scrape(self, path: str = "/metrics") -> dict[tuple[str, frozenset], float]:
        samples = {}
        for family in text_string_to_metric_families(self.text(path)):
            for s in family.samples:
                samples[(s.name, frozenset(s.labels.items()))] = s.value
        return samples


def get(samples, name, **labels) -> float:
    """The sample with exactly these labels; a per-container series's
    compose_project, compose_service and container_label_* are matched only
    when asked for."""
    exact = samples.get((name, frozenset(labels.items())))
    if exact is not None:
        return exact
    for (sample_name, sample_labels), sample_value in samples.items():
        if sample_name == name and {k: v for k, v in sample_labels
                                    if k in labels or not k.startswith(
                                        CONTAINER_IDENTITY_LABELS)} == labels:
            return sample_value
    return 0.0


def names_in(samples) -> set[str]:
    return {dict(labels).get("container") for _, labels in samples} - {None}


@pytest.fixture(scope="module")
def daemon(testbed):
    d = Daemon()
    try:
        d.wait_ready()
        # The engine's stream and the first reconcile come before the first
        # scrape: no window where a running testbed looks absent or unlinked.
        first = d.scrape()
        assert get(first, "cntrace_docker_connected") == 1
        assert {A_NAME, B_NAME} <= names_in(first)
        assert get(first, "cntrace_attribution_failures_total") == 0
        assert get(first, "cntrace_docker_reconnects_total") == 0
        yield d
    finally:
        code, err = d.stop()
        assert code == 0, err
        assert "detached all hooks" in err



def send_udp(src_pid: int, dst: str, port: int, count: int, payload: int) -> None:
    sock = open_socket(f"/proc/{src_pid}/ns/net", socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        for _ in range(count):
            sock.sendto(b"x" * payload, (dst, port))
            time.sleep(0.0002)   # stay under the receiver's socket buffer


def wait_for_quiet(daemon, *containers: str, quiet: float = 1.5, timeout: float = 20) -> None:
    """Fresh interfaces chatter for a while (IPv6 router solicitations, MLD);
    exact deltas need a window where nothing else moves these counters."""
    def totals():
        samples = daemon.scrape()
        return [get(samples, "cntrace_container_packets_total", container=c, direction=d)
                for c in containers for d in ("tx", "rx")]

    deadline = time.monotonic() + timeout
    last, since = totals(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = totals()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
    raise AssertionError("the containers never went quiet")


@pytest.mark.kernel
def test_exact_packet_and_byte_counts(daemon, testbed, record_property):
    # For the kernel matrix's table (tests/vm/matrix.py): which mechanism each hook used.
    record_property("daemon_hooks", json.dumps(hook_mechanisms(daemon.scrape())))
    assert_exact_counts(daemon, testbed)


def assert_exact_counts(daemon, testbed) -> None:
    """1,000 datagrams a -> b: exactly 1,000 packets and their IP bytes, per
    container, per peer and per direction, and one flow opened."""
    a, b = testbed.containers["a"], testbed.containers["b"]
    check_route(b.ip, [b.bridge])
    n, payload = 1000, 100
    ip_bytes = n * (20 + 8 + payload)   # README: IP header + UDP header + payload
    sink = open_socket(f"/proc/{b.pid}/ns/net", socket.AF_INET, socket.SOCK_DGRAM)
    with sink:
        sink.bind((b.ip, 9999))       # a listener: no ICMP errors come back
        # Fresh veths chatter (IPv6 router solicitations, MLD from the host):
        # per-peer counts must be exact every time; container totals in a
        # window where no other peer moved them.
        for _ in range(3):
            wait_for_quiet(daemon, a.name, b.name)
            before = daemon.scrape()
            send_udp(a.pid, b.ip, 9999, n, payload)
            time.sleep(0.5)
            after = daemon.scrape()
            delta = {key: after.get(key, 0) - before.get(key, 0) for key in after}
            assert get(delta, "cntrace_container_peer_packets_total", container=a.name,
                       peer=b.name, direction="tx") == n
            assert get(delta, "cntrace_container_peer_packets_total", container=b.name,
                       peer=a.name, direction="rx") == n
            assert get(delta, "cntrace_container_peer_bytes_total", container=b.name,
                       peer=a.name, direction="rx") == ip_bytes
            others = sum(v for (name, labels), v in delta.items()
                         if name == "cntrace_container_peer_packets_total"
                         and dict(labels)["container"] in (a.name, b.name)
                         and dict(labels)["peer"] not in (a.name, b.name))
            if others == 0:
                break
        else:
            raise AssertionError("no quiet window in three tries")
    assert get(delta, "cntrace_container_packets_total", container=a.name, direction="tx") == n
    assert get(delta, "cntrace_container_packets_total", container=b.name, direction="rx") == n
    assert get(delta, "cntrace_container_bytes_total", container=a.name, direction="tx") \
        == ip_bytes
    assert get(delta, "cntrace_container_bytes_total", container=b.name, direction="rx") \
        == ip_bytes
    assert get(delta, "cntrace_container_flows_opened_total", container=a.name) == 1


def active_flows(daemon, container: str) -> float:
    return get(daemon.scrape(), "cntrace_container_flows_active", container=container)


def test_a_steady_flow_stays_active_and_goes_idle_once_it_stops(testbed):
    """A steady stream's packets are counted from its container's row, not
    the flow table; the row asks the table again each flow epoch
    (bpf/accounting.h flow_epoch, which the daemon advances), and that
    keeps the flow's last packet time fresh, to within two epochs.  A stream
    three times longer than the idle time stays active to its end, and goes
    idle after it.  (Not in the kernel matrix: the daemon's clockwork, the
    same on every kernel, and under emulation its scrapes space the packets
    out by more than the idle time allows.)"""
    idle = 4.0
    d = Daemon("--flow-idle-seconds", str(idle), "--sample-seconds", "0.5")
    try:
        d.wait_ready()
        a, b = testbed.containers["a"], testbed.containers["b"]
        check_route(b.ip, [b.bridge])
        sink = open_socket(f"/proc/{b.pid}/ns/net", socket.AF_INET, socket.SOCK_DGRAM)
        source = open_socket(f"/proc/{a.pid}/ns/net", socket.AF_INET, socket.SOCK_DGRAM)
        with sink, source:
            sink.bind((b.ip, 9998))
            start = time.monotonic()
            late = []   # samples after the first packet's time has long gone idle
            while time.monotonic() - start < 3 * idle:
                source.sendto(b"x", (b.ip, 9998))   # one source port: one flow
                time.sleep(0.05)
                if time.monotonic() - start > 2 * idle:
                    late.append(active_flows(d, a.name))
            assert late and min(late) >= 1, late
            deadline = time.monotonic() + scaled(idle + 10)
            while active_flows(d, a.name) and time.monotonic() < deadline:
                time.sleep(0.25)
            assert active_flows(d, a.name) == 0
    finally:
        code, err = d.stop()
        assert code == 0, err


def test_classic_tc_counts_exactly_and_spares_other_tc_users(testbed, docker_client):
    """The counting path of kernels without tcx (Debian 12's 6.1), here with
    tcx turned off: exact counts, and another tool's clsact qdisc and filter
    on a container veth are left as they were when cntrace stops."""
    b_veth = hops_of(testbed.containers["b"])["veth_name"]
    subprocess.run(["tc", "qdisc", "add", "dev", b_veth, "clsact"], check=True)
    # Another tool's match-all filter, after ours (a verdict first would hide packets).
    foreign = ["tc", "filter", "add", "dev", b_veth, "egress", "prio", "50000", "protocol",
               "all", "u32", "match", "u32", "0", "0"]
    subprocess.run(foreign, check=True)
    try:
        filters_before, clsact_before = tc_state()
        d = Daemon(env={"CNTRACE_DISABLE_FEATURES": "tcx"})
        try:
            d.wait_ready()
            assert hook_mechanisms(d.scrape())["tc:container-veths"] == "cls_bpf"
            veths = len(docker_client.containers.list())
            wait_until(lambda: len(tc_state()[0] - filters_before)
                       == 2 * veths + exit_devices(d.scrape()),
                       "two cls_bpf filters per container veth, one per exit device")
            assert_exact_counts(d, testbed)
        finally:
            code, err = d.stop()
        assert code == 0, err
        assert tc_state() == (filters_before, clsact_before)
        shown = subprocess.run(["tc", "filter", "show", "dev", b_veth, "egress"],
                               capture_output=True, text=True, check=True).stdout
        assert "u32" in shown and "pref 50000" in shown, shown
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", b_veth, "clsact"], check=False)


@pytest.mark.kernel
def test_snat_to_the_wan_is_counted_per_container(daemon, testbed, docker_client):
    a = testbed.containers["a"]
    check_route(testbed.wan_ip, [testbed.wan_host_ifname])
    before = daemon.scrape()
    result = docker_client.containers.get(a.name).exec_run(
        ["ping", "-c", "3", "-i", "0.2", "-W", "1", testbed.wan_ip])
    assert result.exit_code == 0
    time.sleep(0.3)
    after = daemon.scrape()
    assert get(after, "cntrace_container_snat_packets_total", container=a.name) - \
        get(before, "cntrace_container_snat_packets_total", container=a.name) == 3
    assert get(after, "cntrace_container_snat_translations_total", container=a.name) - \
        get(before, "cntrace_container_snat_translations_total", container=a.name) == 1
    assert get(after, "cntrace_container_peer_packets_total", container=a.name,
               peer="external", direction="tx") >= 3


def test_nat_counts_the_same_at_netfilter_hooks_where_tc_cannot_read_conntrack(testbed,
                                                                              docker_client):
    """The NAT path of kernels whose tc programs may not read kernel memory,
    here with that probe turned off: netfilter hooks instead of the exit
    devices, and the same SNAT counts."""
    a = testbed.containers["a"]
    check_route(testbed.wan_ip, [testbed.wan_host_ifname])
    d = Daemon(env={"CNTRACE_DISABLE_FEATURES": "tc-conntrack"})
    try:
        d.wait_ready()
        before = d.scrape()
        hooks = hook_mechanisms(before)
        assert "tc:exit-devices" not in hooks and exit_devices(before) == 0
        assert hooks["netfilter:ipv4:POSTROUTING"] in ("netfilter_link", "fexit"), hooks
        result = docker_client.containers.get(a.name).exec_run(
            ["ping", "-c", "3", "-i", "0.2", "-W", "1", testbed.wan_ip])
        assert result.exit_code == 0
        time.sleep(0.3)
        after = d.scrape()
    finally:
        code, err = d.stop()
    assert code == 0, err
    for name, count in (("cntrace_container_snat_packets_total", 3),
                        ("cntrace_container_snat_translations_total", 1)):
        assert get(after, name, container=a.name) - get(before, name, container=a.name) \
            == count, name


@pytest.mark.kernel
def test_dnat_to_a_published_port_is_counted_per_container_and_port(daemon, testbed,
                                                                    docker_client):
    with extra_container(docker_client, "cntrace-test-web", ports={"80/tcp": 18081},
                         command=["httpd", "-f", "-p", "80", "-h", "/"]):
        wait_until(lambda: "cntrace-test-web" in names_in(daemon.scrape()), "web seen")
        time.sleep(0.3)
        client = open_socket(f"/run/netns/{testbed.wan_netns}", socket.AF_INET,
                             socket.SOCK_STREAM)
        with client:
            client.settimeout(5)
            client.connect((testbed.wan_host_ip, 18081))
            client.sendall(b"GET / HTTP/1.0\r\n\r\n")
            client.recv(100)
        time.sleep(0.3)
        after = daemon.scrape()
    labels = dict(container="cntrace-test-web", port="18081", protocol="tcp")
    assert get(after, "cntrace_container_dnat_translations_total", **labels) == 1
    assert get(after, "cntrace_container_dnat_packets_total", **labels) >= 3   # SYN, ACK, data


@pytest.mark.kernel
def test_docker_user_drop_is_counted_with_its_reason(daemon, testbed, docker_client):
    a = testbed.containers["a"]
    check_route(testbed.wan_ip, [testbed.wan_host_ifname])
    before = daemon.scrape()
    with iptables_rule("DOCKER-USER", "-s", a.ip, "-d", testbed.wan_ip, "-j", "DROP"):
        docker_client.containers.get(a.name).exec_run(
            ["ping", "-c", "2", "-i", "0.2", "-W", "1", testbed.wan_ip])
    after = daemon.scrape()
    labels = dict(container=a.name, reason="NETFILTER_DROP")
    assert get(after, "cntrace_container_drops_total", **labels) - \
        get(before, "cntrace_container_drops_total", **labels) == 2


def test_churn_keeps_attribution_exact_and_drops_gone_series(daemon, testbed, docker_client):
    b = testbed.containers["b"]
    check_route(b.ip, [b.bridge])
    a = docker_client.containers.get(testbed.containers["a"].name)
    a.exec_run(["sh", "-c", f"echo $$ > /tmp/pinger.pid; exec ping -i 0.2 {b.ip}"], detach=True)
    names = [f"cntrace-churn-{i:02d}" for i in range(50)]
    counts = {}
    maps = ("container_ifaces", "container_addrs")
    in_maps = {m: get(daemon.scrape(), "cntrace_map_entries", map=m) for m in maps}
    with contextlib.ExitStack() as stack:
        stack.callback(a.exec_run, ["sh", "-c", "kill $(cat /tmp/pinger.pid)"])
        for i, name in enumerate(names):
            container = stack.enter_context(extra_container(docker_client, name))
            if i % 5 == 0:   # every fifth sends a known number of datagrams to b
                # counting starts once the daemon has the container (Docker event)
                wait_until(lambda n=name: n in names_in(daemon.scrape()), f"{name} seen")
                send_udp(container.attrs["State"]["Pid"], b.ip, 9, 7 + i, 10)
                counts[name] = 7 + i
        samples = wait_until(
            lambda: (s := daemon.scrape()) and set(counts) <= names_in(s) and s, "churn seen")
        for name, count in counts.items():
            assert get(samples, "cntrace_container_peer_packets_total", container=name,
                       peer=b.name, direction="tx") == count, name
    wait_until(lambda: not (set(names) & names_in(daemon.scrape())), "series removed")
    # and their interfaces and addresses left the BPF maps: nothing leaks
    wait_until(lambda: {m: get(daemon.scrape(), "cntrace_map_entries", map=m) for m in maps}
               == in_maps, f"the maps back to {in_maps}")
    assert daemon.proc.poll() is None


def heard_from(samples, container: str, peers) -> dict[str, float]:
    return {peer: get(samples, "cntrace_container_peer_packets_total", container=container,
                      peer=peer, direction="rx") for peer in peers}


def test_more_peers_than_columns_each_count_exactly(daemon, testbed, docker_client):
    """b hears from more containers than its row has peer columns
    (tracer/kernel/loader.py PEER_COLUMNS): the first peers are counted in
    columns, the rest in the hash, each pair exactly.  Twice: the second
    time the first round's slots have new owners, which take over their
    columns in b's row from zero."""
    b = testbed.containers["b"]
    check_route(b.ip, [b.bridge])
    for round_ in range(2):
        names = [f"cntrace-peers-{round_}-{i}" for i in range(loader.PEER_COLUMNS + 3)]
        with contextlib.ExitStack() as stack:
            sent = {}
            for i, name in enumerate(names):
                container = stack.enter_context(extra_container(docker_client, name))
                wait_until(lambda n=name: n in names_in(daemon.scrape()), f"{name} seen")
                sent[name] = (container.attrs["State"]["Pid"], 5 + i)
            for pid, count in sent.values():
                send_udp(pid, b.ip, 9, count, 10)
            wanted = {name: count for name, (_, count) in sent.items()}
            samples = wait_until(lambda w=wanted: (s := daemon.scrape())
                                 and heard_from(s, b.name, w) == w and s,
                                 f"b's peers in round {round_}")
            for name, count in wanted.items():
                assert get(samples, "cntrace_container_peer_packets_total", container=name,
                           peer=b.name, direction="tx") == count, name
        wait_until(lambda n=names: not (set(n) & names_in(daemon.scrape())), "senders gone")


def test_trace_ping_alongside_the_daemon(daemon, testbed):
    """Both attach netfilter programs: the second takes the next free priority."""
    a = testbed.containers["a"]
    check_route(testbed.wan_ip, [testbed.wan_host_ifname])
    result = subprocess.run([*CNTRACE, "ping", a.name, testbed.wan_ip, "--json"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"snat {a.ip} -> {testbed.wan_host_ip}" in json.loads(result.stdout)["nat"]


def test_real_prometheus_scrapes_the_daemon(daemon, tmp_path):
    if not prometheus_available():
        pytest.skip("prometheus is not installed (deploy/setup.sh test installs it)")
    target = f"127.0.0.1:{daemon.port}"
    with PrometheusServer(tmp_path, [scrape_config("cntrace", target)]) as prom:
        prom.wait_for('up{job="cntrace"} == 1')
        result = prom.wait_for(
            f'cntrace_container_packets_total{{container="{A_NAME}",direction="tx"}}')
        scraped = get(daemon.scrape(), "cntrace_container_packets_total", container=A_NAME,
                      direction="tx")
        assert 0 < value(result) <= scraped


def test_promtool_accepts_the_exposition(daemon):
    code, output = promtool_check_metrics(daemon.text())
    assert code == 0, output


def test_sigterm_detaches_everything(testbed, docker_client):
    """Whatever this kernel offered (tcx or classic tc, netfilter links or
    fentry/fexit), SIGTERM leaves no program, link, filter or qdisc of ours.
    (Not in the kernel matrix: its SIGKILL test ends with a SIGTERM too, and a
    daemon start costs a minute under emulation.)"""
    filters_before, clsact_before = tc_state()
    d = Daemon()
    try:
        d.wait_ready()
        veths = len(docker_client.containers.list())   # one veth each on the testbed
        samples = d.scrape()
        links, filters = expected_attachments(hook_mechanisms(samples), veths,
                                              exit_devices(samples))
        wait_until(lambda: len(bpf_held(d.proc.pid)["link"]) == links
                   and len(tc_state()[0] - filters_before) == filters,
                   f"{links} links and {filters} cls_bpf filters")
        held = bpf_held(d.proc.pid)
    finally:
        code, err = d.stop()
    assert code == 0, err
    assert bpf_gone(held)
    assert tc_state() == (filters_before, clsact_before)


@pytest.mark.parametrize("args, env, message", [
    (["--flow-table-size", "10"], {}, "flow_table_size 10"),
    (["--config", "/nonexistent.yml"], {}, "cannot read config /nonexistent.yml"),
    (["--web.config.file", "/nonexistent-web.yml"], {}, "/nonexistent-web.yml"),
    (["--web.listen-address", "nowhere"], {}, "expected HOST:PORT"),
    ([], {"CNTRACE_FLOW_IDLE_SECONDS": "soon"}, "is not a finite number"),
    ([], {"CNTRACE_SAMPLE_SECONDS": "nan"}, "is not a finite number"),
])
def test_bad_config_exits_2_before_attaching(args, env, message):
    result = subprocess.run([*CNTRACE, "daemon", *args], capture_output=True, text=True,
                            timeout=60, env={**os.environ, **env})
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "attached" not in result.stderr


def test_tls_and_basic_auth(testbed, tmp_path):
    import base64
    import ssl

    import bcrypt

    from tests.certs import make_pki

    pki = make_pki(tmp_path)
    digest = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {pki.server_cert}\n"
                   f"  key_file: {pki.server_key}\nbasic_auth_users:\n  prom: '{digest}'\n")
    d = Daemon("--web.config.file", str(web))
    https = f"https://127.0.0.1:{d.port}"
    context = ssl.create_default_context(cafile=str(pki.ca))

    def fetch(url, password=None):
        request = urllib.request.Request(url)
        if password:
            token = base64.b64encode(f"prom:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""

    try:
        wait_until(lambda: d.proc.poll() is None and _answers(fetch, https), "TLS daemon up",
                   timeout=60)
        status, body = fetch(f"{https}/metrics", "s3cret")
        assert status == 200 and "cntrace_build_info" in body
        assert fetch(f"{https}/metrics", "wrong")[0] == 401
        assert fetch(f"{https}/metrics")[0] == 401
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics", timeout=5).read()
        if prometheus_available():
            job = scrape_config("cntrace-tls", f"127.0.0.1:{d.port}", scheme="https",
                                tls_config={"ca_file": str(pki.ca)},
                                basic_auth={"username": "prom", "password": "s3cret"})
            with PrometheusServer(tmp_path / "prom", [job]) as prom:
                prom.wait_for('up{job="cntrace-tls"} == 1')
    finally:
        code, err = d.stop()
    assert code == 0, err


def _answers(fetch, base) -> bool:
    try:
        return fetch(f"{base}/healthz")[0] == 401   # up, and asking for credentials
    except (urllib.error.URLError, OSError):
        return False
