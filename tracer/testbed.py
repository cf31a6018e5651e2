"""The seed story as a throwaway testbed: two containers on docker0, one on a
user-defined bridge network, and a "wan" network namespace standing in for the
Internet.

    a, b  (default bridge, docker0)        c  (user network, br-xxxx)
          \\                               /
           host --- cntrace-wan0 198.51.100.1/24 <-veth-> eth0 198.51.100.2 [cntrace-wan]

Docker's MASQUERADE rule translates a container pinging 198.51.100.2 to
198.51.100.1, which is the "container reaches the Internet" path without any
traffic leaving the host. Traffic is only ever sent after `check_route` has
shown that the destination resolves to one of our own interfaces.

No image registry is reachable, so the container image is built locally from
Debian's busybox-static. When no Docker engine answers, `DockerEngine` starts
`dockerd` itself and later stops only that one. What must survive between
`cntrace testbed up` and a later `down` in another process (the dockerd we
started, the sysctls, bridge and iptables rules as they were before it)
lives in a small JSON state file.

Used by pytest fixtures (tests/conftest.py) and by `cntrace testbed up|down|status`.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import docker
from docker.constants import DEFAULT_TIMEOUT_SECONDS
from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from tracer.errors import CntraceError, DockerUnavailableError, UnsafeTargetError, UsageError
from tracer.host.join import parse_network

STATE_DIR = "/run/cntrace-testbed"
DEFAULT_SOCKET = "/var/run/docker.sock"
IMAGE_TAG = "cntrace/busybox:latest"
BUSYBOX = "/bin/busybox"
LABEL = "io.cntrace.testbed"  # value: the testbed prefix

WAN_NETNS = "cntrace-wan"
WAN_HOST_IFNAME = "cntrace-wan0"
WAN_IFNAME = "eth0"
WAN_HOST_IP = "198.51.100.1"
WAN_IP = "198.51.100.2"
WAN_PREFIXLEN = 24

# dockerd turns the host into a router; a dockerd we start must not leave it one.
ENGINE_SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
)


@dataclass
class ContainerInfo:
    name: str
    id: str
    pid: int
    ip: str
    network: str
    netns_inode: int
    bridge: str  # host bridge of `network`: what check_route must see for this ip


@dataclass
class TestbedInfo:
    """Everything a test needs, as plain data (json-able via asdict)."""

    __test__ = False  # not a pytest test class, despite the name

    containers: dict[str, ContainerInfo]
    user_network: str
    wan_netns: str = WAN_NETNS
    wan_host_ip: str = WAN_HOST_IP
    wan_ip: str = WAN_IP
    wan_host_ifname: str = WAN_HOST_IFNAME
    dockerd_pid: int | None = None  # set when the testbed started the engine


# ---------------------------------------------------------------- state file


class _State:
    """JSON facts that a later process (`cntrace testbed down`) must know."""

    def __init__(self, state_dir: str) -> None:
        self.path = Path(state_dir) / "state.json"

    def load(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def save(self, state: dict[str, Any]) -> None:
        if not state:
            self.path.unlink(missing_ok=True)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path)

    def set(self, key: str, value: Any) -> None:
        state = self.load()
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
        self.save(state)


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctl(name: str) -> str | None:
    try:
        return _sysctl_path(name).read_text().strip()
    except OSError:
        return None


def write_sysctl(name: str, value: str) -> None:
    _sysctl_path(name).write_text(value + "\n")


# --------------------------------------------- what dockerd leaves behind

# dockerd makes docker0 and its iptables chains (FORWARD policy DROP, its
# MASQUERADE) and leaves both when it stops; a dockerd we start must not.
DOCKER_BRIDGE = "docker0"
RULE_TOOLS = {"ip": "iptables", "ip6": "ip6tables"}   # nft family: the tool


def _rules(tool: str) -> str | None:
    """`TOOL-save`'s dump, None when the tool is missing or fails."""
    try:
        done = subprocess.run([f"{tool}-save"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def rule_tables(dump: str) -> dict[str, list[str]]:
    """An iptables-save dump by table, without comments and counters, which
    change between two dumps of the same rules."""
    tables: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in dump.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], [])
        elif current is not None and line != "COMMIT":
            current.append(line.split(" [", 1)[0] if line.startswith(":") else line)
    return tables


def rules_to_put_back(before: str, now: str, nft: bool) -> tuple[str, list[str]]:
    """What restores `before` over `now`: the restore input (the tables that
    were there, as they were) and the tables to remove (those that were not).
    Under iptables-nft a table that was not there is deleted; a legacy table
    always exists, and is emptied, its built-in chains set to ACCEPT."""
    was, present = rule_tables(before), rule_tables(now)
    restore = [f"*{name}\n" + "".join(f"{line}\n" for line in lines) + "COMMIT\n"
               for name, lines in was.items() if present.get(name) != lines]
    gone = [name for name in present if name not in was]
    if not nft:
        for name in gone:
            chains = [line[1:].split()[0] for line in present[name]
                      if line.startswith(":") and line.split()[1] != "-"]
            restore.append(f"*{name}\n" + "".join(f":{c} ACCEPT\n" for c in chains) + "COMMIT\n")
        gone = []
    return "".join(restore), gone


def host_network_state() -> dict[str, Any]:
    """Whether docker0 exists, and each family's rules: what a dockerd we
    start changes and does not put back (json-able, for the state file)."""
    with IPRoute() as ipr:
        bridge = bool(ipr.link_lookup(ifname=DOCKER_BRIDGE))
    rules = {family: _rules(tool) for family, tool in RULE_TOOLS.items()}
    return {"bridge": bridge, "rules": rules}


def put_back_host_network(saved: dict[str, Any]) -> None:
    """After our dockerd has stopped: the rules as they were, and no docker0
    unless there was one."""
    for family, before in saved.get("rules", {}).items():
        tool = RULE_TOOLS[family]
        now = _rules(tool)
        if before is None or now is None:
            continue
        version = subprocess.run([tool, "--version"], capture_output=True, text=True).stdout
        nft = "nf_tables" in version and shutil.which("nft") is not None
        restore, gone = rules_to_put_back(before, now, nft=nft)
        if restore:
            subprocess.run([f"{tool}-restore"], input=restore, text=True, check=True,
                           capture_output=True)
        for table in gone:
            subprocess.run(["nft", "delete", "table", family, table], check=True,
                           capture_output=True)
    if not saved.get("bridge", True):
        with IPRoute() as ipr:
            for index in ipr.link_lookup(ifname=DOCKER_BRIDGE):
                ipr.link("del", index=index)


# ---------------------------------------------------------------- the engine


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _pid_is_dockerd(pid: int) -> bool:
    """A live dockerd: a recorded pid may have been reused since."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return comm == "dockerd" and _alive(pid)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


class DockerEngine:
    """A Docker engine to talk to; starts `dockerd` only when none answers."""

    def __init__(self, socket: str = DEFAULT_SOCKET, state_dir: str = STATE_DIR) -> None:
        self.socket = socket
        self.state_dir = state_dir
        self.started_pid: int | None = None  # the dockerd WE started, if any
        self._proc: subprocess.Popen[bytes] | None = None
        self._saved_sysctls: dict[str, str] = {}
        self._saved_host: dict[str, Any] | None = None  # host_network_state() before our dockerd
        self._state = _State(state_dir)

    @property
    def base_url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log_path(self) -> Path:
        return Path(self.state_dir) / "dockerd.log"

    def client(self, timeout: float = 5.0) -> docker.DockerClient | None:
        """A client of the engine if one answers a ping within `timeout`, else None."""
        try:
            client = docker.DockerClient(base_url=self.base_url, timeout=timeout)
            client.ping()
        except Exception:  # DockerException, requests errors, OSError: all mean "not now"
            return None
        client.api.timeout = DEFAULT_TIMEOUT_SECONDS  # later calls may take longer
        return client

    def adopt(self) -> bool:
        """Take over a dockerd that an earlier process started (from the state file)."""
        entry = self._state.load().get("dockerd")
        if not entry or entry.get("socket") != self.socket:
            return False
        if not _pid_is_dockerd(entry["pid"]):
            self._state.set("dockerd", None)
            return False
        self.started_pid = entry["pid"]
        self._saved_sysctls = entry.get("sysctls", {})
        self._saved_host = entry.get("host")
        return True

    def ensure_running(self, timeout: float = 30.0) -> docker.DockerClient:
        client = self.client()
        if client is not None:
            return client
        self._start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            client = self.client(timeout=2.0)
            if client is not None:
                return client
            if self._proc is not None and self._proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = self._log_tail()
        self.stop()
        raise DockerUnavailableError(
            f"dockerd did not answer on {self.base_url} within {timeout:.0f}s"
            f" (log {self.log_path}): {tail}"
        )

    def _start(self) -> None:
        self._saved_sysctls = {
            name: value for name in ENGINE_SYSCTLS if (value := read_sysctl(name)) is not None
        }
        self._saved_host = host_network_state()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            try:
                # Own session: a `cntrace testbed up` process may exit and leave it running.
                self._proc = subprocess.Popen(
                    ["dockerd", "-H", self.base_url],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except FileNotFoundError as exc:
                raise DockerUnavailableError(
                    "no Docker engine answers and `dockerd` is not installed"
                ) from exc
        self.started_pid = self._proc.pid
        self.save_state()

    def save_state(self) -> None:
        """The dockerd we started, and the host as it was before it, for a
        later process's stop()."""
        self._state.set(
            "dockerd",
            {"pid": self.started_pid, "socket": self.socket, "sysctls": self._saved_sysctls,
             "host": self._saved_host},
        )

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1] if lines else "empty log"

    def stop(self) -> None:
        """Stop a dockerd we started (SIGTERM, wait, SIGKILL); leave any other alone."""
        pid = self.started_pid
        if pid is None:
            return
        if _pid_is_dockerd(pid):
            # Its managed containerd is a child; SIGTERM makes dockerd stop it.
            family = [pid, *_children(pid)]
            os.kill(pid, signal.SIGTERM)
            if not _wait_gone(family, timeout=20.0):
                for p in family:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p, signal.SIGKILL)
                _wait_gone(family, timeout=5.0)
        if self._proc is not None:
            self._proc.wait(timeout=5.0)  # reap our child; it is already gone
            self._proc = None
        for name, value in self._saved_sysctls.items():
            if read_sysctl(name) != value:
                write_sysctl(name, value)
        saved_host, self._saved_host = self._saved_host, None
        self._saved_sysctls = {}
        self.started_pid = None
        self._state.set("dockerd", None)
        if saved_host:
            try:
                put_back_host_network(saved_host)
            except (OSError, subprocess.CalledProcessError, NetlinkError) as exc:
                detail = getattr(exc, "stderr", "") or exc
                raise CntraceError(f"dockerd stopped, but what it left on the host could "
                                   f"not be removed: {str(detail).strip()}") from exc


# ---------------------------------------------------------------- the image


def build_busybox_image(client: docker.DockerClient, tag: str = IMAGE_TAG) -> str:
    """Import a one-binary image: Debian's static busybox plus its applet links.

    The tar is built in memory (bin/busybox and one symlink per `busybox --list`
    applet) and fed to the engine's import endpoint. Returns the image id.
    """
    try:
        return client.images.get(tag).id
    except docker.errors.ImageNotFound:
        pass
    applets = subprocess.run(
        [BUSYBOX, "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("bin", "dev", "etc", "proc", "sys", "tmp", "root"):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in applets:
            if applet == "busybox":
                continue
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
    repository, _, version = tag.rpartition(":")
    client.api.import_image_from_data(
        buf.getvalue(),
        repository=repository or tag,
        tag=version if repository else None,
        changes=["ENV PATH=/bin", 'CMD ["sh"]'],
    )
    return client.images.get(tag).id


# ---------------------------------------------------------------- safety


def check_route(dst: str, allowed: Iterable[str]) -> str:
    """Refuse `dst` unless the host routes it out of an interface in `allowed`.

    Only a route lookup (`ip route get`), never a send. Returns the interface name.
    """
    allowed = set(allowed)
    try:
        ipaddress.ip_address(dst)
    except ValueError as exc:
        raise UnsafeTargetError(f"refusing to send to {dst}: not an IP address") from exc
    with IPRoute() as ipr:
        try:
            routes = ipr.route("get", dst=dst)
        except NetlinkError as exc:
            raise UnsafeTargetError(f"refusing to send to {dst}: no route ({exc})") from exc
        oif = routes[0].get("RTA_OIF") if routes else None
        ifname = ipr.get_links(oif)[0].get("IFLA_IFNAME") if oif else None
    if ifname not in allowed:
        raise UnsafeTargetError(
            f"refusing to send to {dst}: it leaves by {ifname or 'no interface'},"
            f" not by {', '.join(sorted(allowed)) or 'an allowed interface'}"
        )
    return ifname


def ping(
    client: docker.DockerClient,
    container: str,
    dst: str,
    allowed: Iterable[str],
    count: int = 1,
) -> tuple[int, str]:
    """`ping` from inside `container` once `check_route` accepts dst.

    Returns (exit code, output) of busybox ping.
    """
    check_route(dst, allowed)
    result = client.containers.get(container).exec_run(["ping", "-c", str(count), "-W", "1", dst])
    return result.exit_code, result.output.decode(errors="replace")


# ---------------------------------------------------------------- wan netns


def _ensure_address(ipr: IPRoute, index: int, address: str, prefixlen: int) -> None:
    present = {a.get("IFA_ADDRESS") for a in ipr.get_addr(index=index)}
    if address not in present:
        ipr.addr("add", index=index, address=address, prefixlen=prefixlen)


def _wan_up() -> None:
    if WAN_NETNS not in netns.listnetns():
        netns.create(WAN_NETNS)
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=WAN_HOST_IFNAME)
        if not found:
            # Created with its peer directly in the wan netns: the host has an eth0.
            ipr.link(
                "add",
                ifname=WAN_HOST_IFNAME,
                kind="veth",
                peer={"ifname": WAN_IFNAME, "net_ns_fd": WAN_NETNS},
            )
            found = ipr.link_lookup(ifname=WAN_HOST_IFNAME)
        index = found[0]
        _ensure_address(ipr, index, WAN_HOST_IP, WAN_PREFIXLEN)
        ipr.link("set", index=index, state="up")
    with IPRoute(netns=WAN_NETNS, flags=0) as ns:
        inner = ns.link_lookup(ifname=WAN_IFNAME)
        if not inner:
            raise CntraceError(
                f"{WAN_HOST_IFNAME} exists but its peer is not {WAN_IFNAME} in netns"
                f" {WAN_NETNS}; run `cntrace testbed down` first"
            )
        _ensure_address(ns, inner[0], WAN_IP, WAN_PREFIXLEN)
        ns.link("set", index=inner[0], state="up")
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")


def _wan_down() -> None:
    with IPRoute() as ipr:
        for index in ipr.link_lookup(ifname=WAN_HOST_IFNAME):
            ipr.link("del", index=index)
    if WAN_NETNS in netns.listnetns():
        netns.remove(WAN_NETNS)


def _wan_status() -> dict[str, Any]:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=WAN_HOST_IFNAME)
    return {"netns": WAN_NETNS in netns.listnetns(), "veth": bool(found)}


# ---------------------------------------------------------------- the testbed


class Testbed:
    """Containers a, b (docker0), c (user network) and the wan netns; see module doc."""

    __test__ = False

    def __init__(
        self,
        prefix: str = "cntrace-test",
        engine: DockerEngine | None = None,
        state_dir: str = STATE_DIR,
    ) -> None:
        self.prefix = prefix
        self.engine = engine or DockerEngine(state_dir=state_dir)
        self.user_network = f"{prefix}-net"
        self._state = _State(state_dir)
        self._state_key = f"testbed:{prefix}"

    def container_name(self, key: str) -> str:
        return f"{self.prefix}-{key}"

    @property
    def layout(self) -> dict[str, str]:
        """Container key -> docker network it lives on."""
        return {"a": "bridge", "b": "bridge", "c": self.user_network}

    def __enter__(self) -> TestbedInfo:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> TestbedInfo:
        """Create what is missing, reuse what exists; return the testbed's facts."""
        client = self.engine.ensure_running()
        image = build_busybox_image(client)
        self._ensure_network(client)
        for key, network in self.layout.items():
            self._ensure_container(client, key, network, image)
        self._ensure_forwarding()
        _wan_up()
        return self.info(client)

    def _ensure_network(self, client: docker.DockerClient) -> None:
        try:
            net = client.networks.get(self.user_network)
        except docker.errors.NotFound:
            # No IPAM config: docker picks a free 172.x/16 from its default pools.
            client.networks.create(self.user_network, driver="bridge", labels={LABEL: self.prefix})
            return
        if (net.attrs.get("Labels") or {}).get(LABEL) != self.prefix:
            raise CntraceError(
                f"docker network {self.user_network} exists but was not made by the testbed"
            )

    def _ensure_container(
        self, client: docker.DockerClient, key: str, network: str, image: str
    ) -> None:
        name = self.container_name(key)
        try:
            container = client.containers.get(name)
        except docker.errors.NotFound:
            client.containers.run(
                image,
                ["sleep", "infinity"],
                name=name,
                hostname=key,
                network=network,
                labels={LABEL: self.prefix},
                detach=True,
            )
            return
        if (container.labels or {}).get(LABEL) != self.prefix:
            raise CntraceError(f"container {name} exists but was not made by the testbed")
        if container.status != "running":
            container.start()

    def _ensure_forwarding(self) -> None:
        # dockerd sets ip_forward=1 at start; if someone reset it, set it and
        # remember the old value for down().
        if read_sysctl("net.ipv4.ip_forward") == "1":
            return
        entry = self._state.load().get(self._state_key, {})
        saved = entry.setdefault("sysctls", {})
        saved.setdefault("net.ipv4.ip_forward", read_sysctl("net.ipv4.ip_forward"))
        self._state.set(self._state_key, entry)
        write_sysctl("net.ipv4.ip_forward", "1")

    def info(self, client: docker.DockerClient) -> TestbedInfo:
        containers: dict[str, ContainerInfo] = {}
        bridges: dict[str, str] = {}
        for key, network in self.layout.items():
            attrs = client.api.inspect_container(self.container_name(key))
            pid = attrs["State"]["Pid"]
            if network not in bridges:
                bridges[network] = parse_network(client.api.inspect_network(network)).bridge
            containers[key] = ContainerInfo(
                name=attrs["Name"].lstrip("/"),
                id=attrs["Id"],
                pid=pid,
                ip=attrs["NetworkSettings"]["Networks"][network]["IPAddress"],
                network=network,
                netns_inode=os.stat(f"/proc/{pid}/ns/net").st_ino,
                bridge=bridges[network],
            )
        return TestbedInfo(
            containers=containers,
            user_network=self.user_network,
            dockerd_pid=self.engine.started_pid,
        )

    def down(self) -> None:
        """Remove containers, network, wan netns and veth; restore sysctls.

        Every step runs even if an earlier one failed; the failures are raised
        together at the end. The busybox image stays: it is inert, other tests
        may run their own containers from it, and removing it would fail while
        they do.
        """
        errors: list[str] = []

        def attempt(what: str, step: Callable[..., object], *args: Any) -> None:
            try:
                step(*args)
            except Exception as exc:  # collect and carry on: never stop half-way
                errors.append(f"{what}: {exc}")

        client = self.engine.client()
        if client is not None:
            for key in self.layout:
                attempt(
                    f"container {self.container_name(key)}",
                    self._remove_container,
                    client,
                    self.container_name(key),
                )
            attempt(f"network {self.user_network}", self._remove_network, client)
        attempt(f"wan netns {WAN_NETNS}", _wan_down)
        attempt("sysctls", self._restore_sysctls)
        if errors:
            raise CntraceError("testbed down incomplete: " + "; ".join(errors))

    @staticmethod
    def _remove_container(client: docker.DockerClient, name: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            client.containers.get(name).remove(force=True)

    def _remove_network(self, client: docker.DockerClient) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            client.networks.get(self.user_network).remove()

    def _restore_sysctls(self) -> None:
        entry = self._state.load().get(self._state_key, {})
        for name, value in entry.get("sysctls", {}).items():
            if value is not None:
                write_sysctl(name, value)
        self._state.set(self._state_key, None)

    def status(self) -> dict[str, Any]:
        """What exists now, without creating anything."""
        client = self.engine.client()
        result: dict[str, Any] = {
            "engine": None,
            "containers": {},
            "user_network": None,
            "wan": _wan_status(),
        }
        if client is None:
            return result
        result["engine"] = {
            "socket": self.engine.socket,
            "version": client.version().get("Version"),
            "started_by_testbed_pid": (self._state.load().get("dockerd") or {}).get("pid"),
        }
        for key in self.layout:
            try:
                c = client.containers.get(self.container_name(key))
            except docker.errors.NotFound:
                continue
            result["containers"][key] = {"name": c.name, "id": c.id[:12], "status": c.status}
        try:
            net = client.networks.get(self.user_network)
            result["user_network"] = {
                "name": net.name,
                "bridge": parse_network(net.attrs).bridge,
                "subnets": [c["Subnet"] for c in (net.attrs["IPAM"]["Config"] or [])],
            }
        except docker.errors.NotFound:
            pass
        return result


# ---------------------------------------------------------------- the command


def _format_info(info: TestbedInfo) -> str:
    lines = []
    if info.dockerd_pid:
        lines.append(f"engine   dockerd pid {info.dockerd_pid} (started by the testbed)")
    networks: dict[str, list[tuple[str, ContainerInfo]]] = {}
    for key, c in info.containers.items():
        networks.setdefault(c.network, []).append((key, c))
    for network, members in networks.items():
        lines.append(f"network  {network} ({members[0][1].bridge})")
        lines.extend(
            f"  {key}  {c.name:<18} {c.ip:<15} pid {c.pid} netns {c.netns_inode}"
            for key, c in members
        )
    lines.append(
        f"wan      netns {info.wan_netns} {info.wan_ip}"
        f" <-> {info.wan_host_ifname} {info.wan_host_ip}"
    )
    return "\n".join(lines)


def _format_status(status: dict[str, Any]) -> str:
    engine = status["engine"]
    if engine is None:
        lines = ["engine   not reachable"]
    else:
        lines = [f"engine   dockerd {engine['version']} on {engine['socket']}"]
        if engine["started_by_testbed_pid"]:
            lines.append(f"         started by the testbed, pid {engine['started_by_testbed_pid']}")
    net = status["user_network"]
    lines.append(
        f"network  {net['name']} {' '.join(net['subnets'])} ({net['bridge']})"
        if net
        else "network  absent"
    )
    for key in ("a", "b", "c"):
        c = status["containers"].get(key)
        lines.append(f"{key:<8} {c['name']} {c['id']} {c['status']}" if c else f"{key:<8} absent")
    wan = status["wan"]
    lines.append(
        f"wan      netns {WAN_NETNS} {'present' if wan['netns'] else 'absent'},"
        f" veth {WAN_HOST_IFNAME} {'present' if wan['veth'] else 'absent'}"
    )
    return "\n".join(lines)


def start_demo_traffic(client: docker.DockerClient, info: TestbedInfo) -> None:
    """Slow background pings from container a, so the demo has something to
    show: a -> b over docker0, and a -> wan through MASQUERADE.  They end
    with the containers."""
    a, b = info.containers["a"], info.containers["b"]
    for dst, allowed in ((b.ip, [b.bridge]), (info.wan_ip, [info.wan_host_ifname])):
        check_route(dst, allowed)
        client.containers.get(a.name).exec_run(["ping", "-i", "2", dst], detach=True)


def command(
    action: str, as_json: bool = False, state_dir: str = STATE_DIR, traffic: bool = False
) -> int:
    """`cntrace testbed up|down|status`. Raises CntraceError subclasses on failure."""
    engine = DockerEngine(state_dir=state_dir)
    engine.adopt()  # a dockerd an earlier `up` started stays ours to stop
    testbed = Testbed(engine=engine, state_dir=state_dir)
    if action == "up":
        info = testbed.up()
        if traffic:
            start_demo_traffic(engine.ensure_running(), info)
        print(json.dumps(asdict(info), indent=2) if as_json else _format_info(info))
        return 0
    if action == "down":
        try:
            testbed.down()
        finally:
            engine.stop()
        if as_json:
            print(json.dumps({"down": True}))
        return 0
    if action == "status":
        status = testbed.status()
        print(json.dumps(status, indent=2) if as_json else _format_status(status))
        return 0
    raise UsageError(f"unknown testbed action '{action}' (up, down, status)")
