"""The Docker side: a pinged client for the engine DOCKER_HOST names, and
the snapshot of the host (`discover`) joining its view with every running
container's netns."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tracer.errors import DockerUnavailableError, PrivilegeError
from tracer.host.join import assemble
from tracer.host.netlink import LinkReader, NetnsLinks, read_netns
from tracer.host.topology import Topology

if TYPE_CHECKING:
    import docker

# docker (with requests) and pyroute2 are imported where they are used: a
# third of a second that trace-ping spends compiling BPF meanwhile.

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


def _reason(exc: BaseException) -> str:
    """The innermost OS-level cause of a docker/requests error, on one line."""
    seen, visited = exc, {id(exc)}
    while True:
        inner = [a for a in getattr(seen, "args", ()) if isinstance(a, BaseException)]
        nxt = inner[0] if inner else (seen.__cause__ or seen.__context__)
        if nxt is None or id(nxt) in visited:
            break
        seen = nxt
        visited.add(id(nxt))
    text = str(seen) if isinstance(seen, OSError) and str(seen) else str(exc)
    return " ".join(text.split())


def _engine_error(exc: Exception) -> DockerUnavailableError:
    import docker

    if isinstance(exc, docker.errors.APIError):
        return DockerUnavailableError(f"the Docker engine failed: {_reason(exc)}")
    return DockerUnavailableError(f"cannot reach the Docker engine: {_reason(exc)}")


def docker_client() -> docker.DockerClient:
    """A client for the engine named by DOCKER_HOST (default the local socket), pinged."""
    import docker
    import requests

    url = os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        raise DockerUnavailableError(
            f"cannot reach the Docker engine at {url}: {_reason(exc)}"
        ) from exc
    return client


def discover(
    client: docker.DockerClient,
    proc_root: str = "/proc",
    read_links: LinkReader = read_netns,
    wanted: Callable[[dict[str, Any]], bool] | None = None,
) -> Topology:
    """Snapshot the host: Docker's view joined with every running container's netns.

    With `wanted`, only the netns of the containers it accepts (given their
    inspect data) are read; the others are listed without interfaces.  Reading
    a netns costs a fork, so a one-shot command on a host of many containers
    reads only those it is about.  Containers that stop while we look are left
    out, not reported as errors.
    """
    import docker
    import requests

    try:
        networks = client.api.networks()
        summaries = client.api.containers()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise _engine_error(exc) from exc
    host = read_links(f"{proc_root}/self/ns/net")
    by_inode = {host.inode: host}
    seen = []
    for summary in summaries:
        try:
            attrs = client.api.inspect_container(summary["Id"])
        except docker.errors.NotFound:
            continue
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise _engine_error(exc) from exc
        pid = attrs["State"].get("Pid") or 0
        if not attrs["State"].get("Running") or pid <= 0:
            continue
        path = f"{proc_root}/{pid}/ns/net"
        try:
            inode = os.stat(path).st_ino
            if inode not in by_inode and wanted is not None and not wanted(attrs):
                seen.append((attrs, NetnsLinks(inode, ())))
                continue
            if inode not in by_inode:
                by_inode[inode] = read_links(path)
        except Exception as exc:  # pyroute2 relays its netns helper's failure as it comes
            if getattr(exc, "errno", None) in (errno.EPERM, errno.EACCES) or \
                    "not permitted" in str(exc):
                raise PrivilegeError(
                    f"cannot enter the network namespace of container "
                    f"{attrs.get('Name', '?').lstrip('/')}: needs CAP_SYS_ADMIN and "
                    "CAP_SYS_PTRACE") from exc
            continue   # the container exited between inspect and here
        seen.append((attrs, by_inode[inode]))
    return assemble(host, seen, networks)
