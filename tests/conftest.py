"""Shared fixtures. Unit tests need none of these; integration tests ask for
`testbed` (containers a, b on docker0, c on a user network, the wan netns) and
`docker_client`, which start a Docker engine when none runs and always tear
down what they created, engine included.
"""

import os
import shutil
import tempfile

import docker
import pytest

from tracer.kernel.bpfcache import CACHE_DIR_ENV
from tracer.testbed import DockerEngine, Testbed, TestbedInfo


@pytest.fixture(scope="session", autouse=True)
def bpf_compile_cache():
    """The session's own BPF compile cache (inherited by every cntrace the
    tests start), so the host's /var/cache is left as it was."""
    if CACHE_DIR_ENV in os.environ:
        yield os.environ[CACHE_DIR_ENV]
        return
    directory = tempfile.mkdtemp(prefix="cntrace-bpf-cache-")
    os.environ[CACHE_DIR_ENV] = directory
    try:
        yield directory
    finally:
        del os.environ[CACHE_DIR_ENV]
        shutil.rmtree(directory, ignore_errors=True)


def _require_root_and_docker() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: starts dockerd, creates a netns, veths and containers")
    if shutil.which("dockerd") is None and not os.path.exists("/var/run/docker.sock"):
        pytest.skip("needs a Docker engine: `dockerd` is not installed (apt-get install docker.io)")


@pytest.fixture(scope="session")
def docker_engine():
    """The Docker engine; started for the session if none was running, then stopped."""
    _require_root_and_docker()
    engine = DockerEngine()
    try:
        engine.ensure_running()
        yield engine
    finally:
        engine.stop()  # a no-op unless this session started dockerd


@pytest.fixture(scope="session")
def docker_client(docker_engine) -> docker.DockerClient:
    return docker_engine.ensure_running()


@pytest.fixture(scope="session")
def testbed_env(docker_engine):
    """The Testbed object itself, for tests that exercise up()/down()."""
    bed = Testbed(engine=docker_engine)
    try:
        yield bed
    finally:
        bed.down()


@pytest.fixture(scope="session")
def testbed(testbed_env) -> TestbedInfo:
    """The running testbed's facts: containers a, b, c and the wan netns."""
    return testbed_env.up()
