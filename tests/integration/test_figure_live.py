"""The network as a picture, on the real testbed: `cntrace topology --format
svg` drawn by the real Graphviz and checked against Docker's own inspect
output and netlink; the daemon's landing page loaded in a real headless
browser (Chromium), its DOM and its screenshot checked for every container
it must show, with their rates beside the figure."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import types
import xml.etree.ElementTree as ET

import pytest

from tests.integration.helpers import CNTRACE, extra_container, hops_of, ip_json
from tests.integration.test_daemon_live import Daemon
from tracer.host.figure import container_colour
from tracer.ping.probe_socket import open_socket
from tracer.testbed import check_route

pytestmark = pytest.mark.integration

SVG = "{http://www.w3.org/2000/svg}"
PUBLISHED = 18083
BROWSERS = ("chromium-headless-shell", "chromium")
WINDOW = (1800, 1100)


def topology(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CNTRACE, "topology", *args], capture_output=True, timeout=120,
                          env=env)


def drawn(svg: bytes) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(node id -> its text, node title -> its id, edges as "a->b" with their
    label) from Graphviz's SVG."""
    root = ET.fromstring(svg)
    nodes, titles, edges = {}, {}, []
    for group in root.iter(f"{SVG}g"):
        kind = group.get("class")
        title = group.findtext(f"{SVG}title") or ""
        text = "\n".join(t.text or "" for t in group.iter(f"{SVG}text"))
        if kind == "node":
            nodes[group.get("id")] = text
            titles[title] = group.get("id")
        elif kind in ("edge", "cluster"):
            edges.append(f"{title} {text}")
    return nodes, titles, edges


@pytest.fixture(scope="module")
def web(testbed, docker_client):
    """A container with a published port: a DNAT to draw."""
    with extra_container(docker_client, "cntrace-test-figweb",
                         ports={"80/tcp": PUBLISHED}) as container:
        yield container


def test_the_svg_draws_what_docker_and_netlink_say(web, docker_client):
    done = topology("--format", "svg")
    assert done.returncode == 0, done.stderr
    nodes, titles, edges = drawn(done.stdout)
    everything = "\n".join([*nodes.values(), *edges])
    for summary in docker_client.api.containers():
        attrs = docker_client.api.inspect_container(summary["Id"])
        name = attrs["Name"].lstrip("/")
        node = f"container-{name}"
        assert node in nodes, name
        for endpoint in attrs["NetworkSettings"]["Networks"].values():
            assert f" {endpoint['IPAddress']}/" in nodes[node], (name, nodes[node])
        veth = hops_of(types.SimpleNamespace(pid=attrs["State"]["Pid"]))   # from netlink
        assert any(f"c_{attrs['Id']}->if{veth['veth']}" in edge for edge in edges), name
        assert any(text.startswith(f"{veth['veth_name']}/{veth['veth']}")
                   for text in nodes.values()), veth
    for net in docker_client.api.networks():
        if net["Driver"] != "bridge":
            continue
        for config in net["IPAM"]["Config"] or []:
            assert f"network {net['Name']} (bridge)" in everything
            assert config["Subnet"] in everything
            assert f"MASQUERADE {config['Subnet']}" in everything
    web.reload()
    ip = web.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
    assert any(f"host->c_{web.id}" in edge and f"DNAT 0.0.0.0:{PUBLISHED} -> {ip}:80/tcp"
               in edge for edge in edges), edges
    uplink = ip_json("route", "show", "default")[0]["dev"]
    assert any(text.startswith(f"{uplink}/") and "uplink (default route)" in text
               for text in nodes.values())
    assert any("cntrace-wan0/" in text and "198.51.100.1/24" in text for text in nodes.values())


def test_dot_is_the_source_of_the_same_figure(web):
    done = topology("--format", "dot")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"digraph cntrace {")
    rendered = subprocess.run(["dot", "-Tsvg"], input=done.stdout, capture_output=True,
                              check=True).stdout
    assert drawn(rendered)[0].keys() == drawn(topology("--format", "svg").stdout)[0].keys()


def test_without_graphviz_svg_is_one_line_and_exit_7(web, tmp_path):
    bare = tmp_path / "bin"   # a PATH without Graphviz's dot (CNTRACE is a full path)
    bare.mkdir()
    done = topology("--format", "svg", env={**os.environ, "PATH": str(bare)})
    assert done.returncode == 7, done.stderr
    err = done.stderr.decode()
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "graphviz" in err


@contextlib.contextmanager
def streaming(src, dst, port: int = 9997):
    """UDP from src to dst (a listener there) until the block ends."""
    check_route(dst.ip, [dst.bridge])
    stop = threading.Event()
    sink = open_socket(f"/proc/{dst.pid}/ns/net", socket.AF_INET, socket.SOCK_DGRAM)
    sender = open_socket(f"/proc/{src.pid}/ns/net", socket.AF_INET, socket.SOCK_DGRAM)

    def send() -> None:
        while not stop.is_set():
            sender.sendto(b"x" * 64, (dst.ip, port))
            time.sleep(0.0005)

    with sink, sender:
        sink.bind((dst.ip, port))
        thread = threading.Thread(target=send, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def browser() -> str | None:
    return next(filter(None, map(shutil.which, BROWSERS)), None)


def load_in_browser(url: str, *mode: str) -> subprocess.CompletedProcess:
    """The page as a real browser renders it, its scripts run for a 10 s
    budget of virtual time (Chromium advances timers at once, and waits for
    the page's fetches)."""
    return subprocess.run(
        [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--window-size={WINDOW[0]},{WINDOW[1]}", "--virtual-time-budget=10000", *mode, url],
        capture_output=True, timeout=120, text=not mode[0].startswith("--screenshot"))


@pytest.mark.skipif(browser() is None, reason="needs Chromium (apt-get install "
                    "chromium-headless-shell)")
def test_the_landing_page_shows_the_live_figure_in_a_real_browser(testbed, tmp_path):
    from PIL import Image

    a, b = testbed.containers["a"], testbed.containers["b"]
    d = Daemon()
    try:
        d.wait_ready()
        names = [c.name for c in testbed.containers.values()]
        # The browser's clock is virtual (its timers fire at once), the
        # counters are real: a steady stream from a moves a's between the
        # page's two scrapes, however close together they come.
        with streaming(a, b):
            dom = load_in_browser(f"{d.url}/", "--dump-dom")
        assert dom.returncode == 0, dom.stderr
        page = dom.stdout
        assert "rates over the last" in page
        rows = dict(re.findall(r"</span>([\w.-]+)</td>(.*?)</tr>", page))
        for name in names:
            assert f'id="container-{name}"' in page, name
            assert name in rows, f"no rates row for {name}"
        tx_packets, rx_packets, tx_bytes, rx_bytes = re.findall(r"<td>([^<]*)</td>",
                                                                rows[a.name])
        assert tx_packets != "0" and tx_bytes != "0", rows[a.name]
        assert re.search(rf'id="container-{re.escape(a.name)}".*?class="rate"[^>]*>tx [1-9]', page,
                         re.S), "a's rate not beside its node"
        shot = tmp_path / "page.png"
        done = load_in_browser(f"{d.url}/", f"--screenshot={shot}")
        assert done.returncode == 0, done.stderr
    finally:
        code, err = d.stop()
    assert code == 0, err
    image = Image.open(shot).convert("RGB")
    assert image.size == WINDOW
    counts = {colour: n for n, colour in image.getcolors(maxcolors=1 << 20)}
    for name in names:
        fill = tuple(int(container_colour(name)[i:i + 2], 16) for i in (1, 3, 5))
        # A node is ~150 x 40 pixels: its fill shows, not a stray pixel.
        assert counts.get(fill, 0) > 1500, f"{name}'s node ({container_colour(name)}) " \
            f"not in the screenshot: {counts.get(fill, 0)} pixels"
