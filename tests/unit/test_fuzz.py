"""Property-based fuzzing of every door user input comes in by: trace-ping's
targets and options, the event filters, the daemon's config file and
environment, the web config file, and Docker's payloads and events.

The contract is tracer/errors.py's: any input gives a value or a UsageError
(one line, exit 2), never a traceback; and nothing a user types reaches the
BPF C source, only typed map entries and `-DNAME=<int>` flags.  Nothing here
needs root, Docker or bcc: the privilege check, the Docker client, the probe
socket and the BPF compiler are replaced where each test says so.

The `Bug`s below are what this fuzzing found (all fixed); test_known_bug
keeps each one's minimal example as a regression test.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import ipaddress
import json
import math
import os
import re
import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from unittest import mock

import bcrypt
import docker
import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, reject, settings
from hypothesis import strategies as st

from tests.certs import make_pki
from tests.unit import fakes
from tracer import cli
from tracer.daemon import main as daemon
from tracer.daemon import settings as daemon_settings
from tracer.daemon import webconfig
from tracer.daemon.collector import DaemonStats
from tracer.errors import UsageError
from tracer.host import docker_engine, join, topology, topology_text
from tracer.host.netlink import Link, NetnsLinks
from tracer.host.topology import ROLE_BRIDGE, ROLE_CONTAINER, ROLE_VETH_HOST
from tracer.kernel import kernel_layout, loader, wire
from tracer.kernel.btf import BtfError
from tracer.kernel.kernel_layout import FIELDS, KernelLayout
from tracer.ping import iptables_counters as rules
from tracer.ping import trace_ping as ping
from tracer.stream import events, filters

FAST = settings(max_examples=150, deadline=None)
FILES = settings(max_examples=200, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# ------------------------------------------------------------ known bugs


@dataclass(frozen=True)
class Bug:
    what: str
    exception: type[BaseException]
    message: str  # a fragment of str(exception)

    def matches(self, exc: BaseException) -> bool:
        return isinstance(exc, self.exception) and self.message in str(exc)


LISTEN_EMPTY = Bug(
    "settings.load_config: web_listen_address '' (CNTRACE_WEB_LISTEN_ADDRESS= or "
    "--web.listen-address '') or null (YAML) is coerced to None, then "
    "split_listen_address(None) raises AttributeError", AttributeError, "rpartition")
MIXED_KEYS = Bug(
    "settings.load_config: unknown YAML keys of different types (`1: 0` and `a: 0`) are "
    "sorted together: TypeError", TypeError, "not supported between instances")
NUMBER_OVERFLOW = Bug(
    "settings._coerce catches TypeError/ValueError only: int(.inf) and float(10**400) raise "
    "OverflowError", OverflowError, "")
CONFIG_NOT_UTF8 = Bug(
    "settings._read_yaml opens the config as text: a file that is not UTF-8 raises "
    "UnicodeDecodeError (webconfig reads bytes and reports it)", UnicodeDecodeError, "")
SECONDS_NOT_FINITE = Bug(
    "settings._validate accepts nan and inf seconds (`x <= 0` is False): flow_idle_seconds "
    "inf/nan then crashes Sampler.__init__ (int(inf * 1e9)) after the BPF programs are "
    "attached, sample_seconds nan makes Sampler.run spin (Event.wait(nan) returns at once)",
    AssertionError, "not finite")
YAML_TOO_DEEP = Bug(
    "settings._read_yaml and webconfig._parse: YAML nested ~1000 deep raises RecursionError "
    "from PyYAML's composer", RecursionError, "")
WEB_PATH_NUL = Bug(
    "webconfig: a file name with a NUL (`cert_file: \"\\0\"`; or the daemon config's "
    "`web_config_file: \"\\0\"`) raises ValueError from open()", ValueError,
    "embedded null byte")
WEB_SURROGATE = Bug(
    "webconfig: a lone surrogate (`\"\\ud800\"` in a double-quoted YAML string) as a "
    "basic_auth_users hash or a TLS file name raises UnicodeEncodeError",
    UnicodeEncodeError, "surrogates not allowed")
WIDE_NETWORK_LINE = Bug(
    "topology_text.format_text promises every line within 80 columns, but a network's head line "
    "(name, driver, bridge) is never wrapped: a network name of 45+ characters "
    "overflows", AssertionError, "over 79 columns")

# All fixed: the properties tolerate no exception but UsageError any more.
CONFIG_BUGS: tuple = ()
WEB_BUGS: tuple = ()


def one_line(error: Exception) -> bool:
    """What the CLI prints of an error: one specific, non-empty line."""
    text = str(error)
    return bool(text.strip()) and "\n" not in text and "Traceback" not in text


def outcome(call: Callable[[], object], *known: Bug) -> object:
    """call()'s value or the UsageError it raised; an input that hits a known
    bug is rejected; any other exception fails the test."""
    try:
        value = call()
    except UsageError as exc:
        event("gave UsageError")
        return exc
    except Exception as exc:
        if any(bug.matches(exc) for bug in known):
            reject()
        raise
    event(f"gave {type(value).__name__}")
    return value


# ------------------------------------------------------------ shared strategies

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
KEYS = st.text(max_size=8)


def json_like(keys: st.SearchStrategy = KEYS) -> st.SearchStrategy:
    return st.recursive(
        SCALARS,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
        max_leaves=8,
    )


# Any text, including lone surrogates, which YAML's "\ud800" escape produces.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=16)
# What a process can get in argv: no NUL.
ARG_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0"),
                   max_size=12)
IPS = st.ip_addresses().map(str)
PORT_VALUES = (st.integers(-10, 70000) | st.integers()
               | st.sampled_from(["80", "+80", "8_0", " 80", "0", ""]) | ARG_TEXT)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def write(directory: Path, content: str | bytes, name: str = "config.yml") -> str:
    path = directory / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def dump(document: object) -> str:
    return yaml.safe_dump(document, sort_keys=False)


@contextlib.contextmanager
def quiet():
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


# ------------------------------------------------------------ 1. trace-ping and the parser


class Reached(Exception):
    """The run got past every check of its input to a boundary we stop at."""


class FakeDocker:
    """docker.from_env(): one stopped container, 'stopped'; no other beyond the topology."""

    class _Stopped:
        name = "stopped"
        attrs = {"State": {"Running": False, "Status": "exited", "ExitCode": 137}}

    def __init__(self) -> None:
        self.containers = self

    def get(self, ref: str):
        if ref == "stopped":
            return self._Stopped()
        raise docker.errors.NotFound(f"No such container: {ref}")


@contextlib.contextmanager
def fake_ping_host():
    """trace-ping up to its probe socket: fakes.topology() is the host."""
    with mock.patch.object(loader, "check_privileges"), \
            mock.patch.object(loader, "read_kernel"), \
            mock.patch.object(loader, "compile_programs"), \
            mock.patch.object(rules, "snapshot", return_value={}), \
            mock.patch.object(docker_engine, "docker_client", return_value=FakeDocker()), \
            mock.patch.object(docker_engine, "discover", return_value=fakes.topology()), \
            mock.patch.object(ping, "_open_probe", side_effect=Reached) as open_probe:
        yield open_probe


def _checked_probe(open_probe) -> None:
    src, dst, proto, port, _ = open_probe.call_args.args
    assert isinstance(src, ping.Source) and isinstance(dst, ping.Destination)
    ipaddress.ip_address(dst.address)
    assert proto in ("icmp", "tcp", "udp")
    assert port is None if proto == "icmp" else 1 <= port <= 65535


TARGET_WORDS = ["host", "a", "b", "/a", "aaaa", "aaaa1111", "bbbb", "stopped", "netns:",
                "netns:wan", "netns:../x", "172.17.0.3", "fd00::2", "[fd00::2]:80", "[fd00::2]",
                "198.51.100.2:8080", "b:5432", "1.2.3", "::", "[", "]:", "a:0", "a:65536"]
TARGETS = st.sampled_from(TARGET_WORDS) | ARG_TEXT | st.text(alphabet="[]:0123456789abf.%/")
# Targets fakes.topology() can resolve, to reach past resolution as often as not.
GOOD_SOURCES = st.sampled_from(["a", "/b", "aaaa", "host", "stopped"])
GOOD_DESTINATIONS = st.sampled_from(["b", "a", "172.17.0.3", "fd00::2", "[fd00::2]:80",
                                     "198.51.100.2:8080", "b:5432", "stopped"])


@FAST
@given(TARGETS)
@example("[::1]:80")
@example("[::1]x")
@example("1.2.3.4:")
@example("fe80::1%eth0")
def test_split_destination_gives_a_port_in_range_or_a_usage_error(text):
    result = outcome(lambda: ping.split_destination(text))
    if not isinstance(result, UsageError):
        host, port = result
        assert isinstance(host, str)
        assert port is None or (type(port) is int and 1 <= port <= 65535)


@FAST
@given(st.ip_addresses(), st.integers(1, 65535))
def test_split_destination_reads_address_and_port(ip, port):
    text = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    assert ping.split_destination(text) == (str(ip), port)
    assert ping.split_destination(str(ip)) == (str(ip), None)


@FAST
@given(src=GOOD_SOURCES | TARGETS, dst=GOOD_DESTINATIONS | TARGETS)
def test_resolving_targets_gives_a_source_destination_diagnosis_or_usage_error(src, dst):
    topo = fakes.topology()
    source = outcome(lambda: ping.resolve_source(src, topo, FakeDocker()))
    if isinstance(source, ping.Source):
        if source.container is not None:
            assert source.netns_path == f"/proc/{source.container.pid}/ns/net"
        elif source.netns_path is not None:  # netns:NAME, a name `ip netns` knows
            assert os.path.exists(source.netns_path)
    elif not isinstance(source, UsageError):
        assert isinstance(source, str)  # "container 'stopped' is not running ..."
    here = ping.Source("host", None, None)
    result = outcome(lambda: ping.resolve_destination(dst, here, topo, FakeDocker()))
    if not isinstance(result, UsageError):
        destination, port = result
        if isinstance(destination, ping.Destination):
            ipaddress.ip_address(destination.address)
        else:
            assert isinstance(destination, str)
        assert port is None or 1 <= port <= 65535


@FAST
@given(count=st.sampled_from([1, 100]) | st.integers(1, 100) | st.integers(),
       timeout=st.sampled_from([0.5, 60.0]) | st.floats(0, 60) | st.floats(),
       tcp=st.none() | st.none() | PORT_VALUES, udp=st.none() | st.none() | PORT_VALUES,
       destination=GOOD_DESTINATIONS | TARGETS)
def test_ping_request_is_checked_before_any_probe(count, timeout, tcp, udp, destination):
    request = ping.Request("a", destination, count=count, timeout=timeout, tcp=tcp, udp=udp)
    valid = 1 <= count <= 100 and 0 < timeout <= 60 and (tcp is None or udp is None)
    with fake_ping_host() as open_probe, quiet():
        try:
            result = outcome(lambda: ping.run(request))
        except Reached:
            assert valid
            _checked_probe(open_probe)
            event("reached the probe")
            return
    assert isinstance(result, UsageError) or (valid and result == ping.EXIT_UNREACHABLE)


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option of the parser and its subcommands (argparse keeps no public list)."""
    found = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _option_strings(sub)
    return found


def _asks_for_help_or_version(token: str) -> bool:
    """-h, --help, --version and what argparse takes for them: an abbreviation
    (--he, --v) or a cluster of short flags with an h in it."""
    if token.startswith("--"):
        name = token[2:].split("=")[0]
        return bool(name) and ("help".startswith(name) or "version".startswith(name))
    return token.startswith("-") and "h" in token


def assume_no_help(argv: list[str]) -> None:
    if any(map(_asks_for_help_or_version, argv)):
        reject()


OPTIONS = sorted(o for o in _option_strings(cli.build_parser()) if not _asks_for_help_or_version(o))
TOKENS = (st.sampled_from([*cli.COMMANDS, *OPTIONS, *TARGET_WORDS, "--", "-", "up", "nan",
                           "-1", "info", "2", "0.5"])
          | ARG_TEXT | st.integers().map(str) | st.floats().map(str)
          ).filter(lambda token: not _asks_for_help_or_version(token))


@settings(max_examples=300, deadline=None)
@given(st.lists(TOKENS, max_size=8)
       | st.builds(lambda command, rest: [command, *rest], st.sampled_from(sorted(cli.COMMANDS)),
                   st.lists(TOKENS, max_size=4)))
@example(["ping"])
@example(["ping", "a", "b", "--tcp", "1", "--udp", "2"])
@example(["events", "--por", "80"])
@example(["--kernel-btf"])
def test_parser_parses_or_raises_usage_error(argv):
    result = outcome(lambda: cli.build_parser().parse_args(argv))
    if not isinstance(result, UsageError):
        assert result.command in cli.COMMANDS


def command_line(option_groups, max_size: int):
    """A list of option groups (["-c", "3"]), flattened into argv tokens."""
    return st.lists(option_groups, max_size=max_size).map(
        lambda groups: [token for group in groups for token in group])


PING_OPTIONS = command_line(
    st.sampled_from([["--json"], ["-c", "3"], ["-t", "0.2"], ["--tcp", "80"], ["--udp", "53"]])
    | st.tuples(st.sampled_from(["-c", "--count", "-t", "--timeout", "--tcp", "--udp"]),
                ARG_TEXT | st.sampled_from(["0", "101", "-1", "nan", "inf", "1e3", "65536"])
                ).map(list),
    max_size=3,
)


@FAST
@given(src=GOOD_SOURCES | TARGETS, dst=GOOD_DESTINATIONS | TARGETS, options=PING_OPTIONS)
def test_trace_ping_command_line_exits_2_or_reaches_the_probe(src, dst, options):
    argv = [src, dst, *options]
    assume_no_help(argv)
    with fake_ping_host() as open_probe, quiet():
        try:
            code = cli.trace_ping_main(argv)
        except Reached:
            _checked_probe(open_probe)
            event("reached the probe")
            return
    event(f"exit {code}")
    assert code in (ping.EXIT_UNREACHABLE, UsageError.exit_code)


# ------------------------------------------------------------ 2. event filters

CONTAINER_REFS = st.sampled_from(["a", "b", "/b", "aaaa", "aaaa1111", "bbbb2222", "", "c"]) \
    | ARG_TEXT
ADDRESS_TEXT = IPS | st.sampled_from(["fe80::1%eth0", "::ffff:1.2.3.4", "1.2.3", "01.2.3.4"]) \
    | ARG_TEXT
PROTO_TEXT = st.sampled_from([*wire.PROTOCOL_NUMBERS, "TCP", "Icmp6", "ip", ""]) | ARG_TEXT

FILTER_SPECS = st.builds(
    filters.FilterSpec,
    containers=st.lists(CONTAINER_REFS, max_size=3).map(tuple),
    addresses=st.lists(ADDRESS_TEXT, max_size=3).map(tuple),
    proto=st.none() | PROTO_TEXT,
    port=st.none() | PORT_VALUES,
    icmp_id=st.none() | st.integers(),
    drops=st.booleans(),
)


@FAST
@given(ADDRESS_TEXT)
def test_an_accepted_address_is_a_16_byte_map_key(text):
    address = outcome(lambda: filters.parse_address(text))
    if isinstance(address, UsageError):
        return
    key = filters.addr_key(address)
    packed = bytes(key.addr)
    assert ctypes.sizeof(key) == 16 and len(packed) == 16
    ip = ipaddress.ip_address(address)
    assert packed == (ip.packed if ip.version == 6 else b"\0" * 10 + b"\xff\xff" + ip.packed)


@FAST
@given(PORT_VALUES)
def test_an_accepted_port_is_an_int_in_range(value):
    port = outcome(lambda: filters.parse_port(value))
    assert isinstance(port, UsageError) or (type(port) is int and 1 <= port <= 65535)


@FAST
@given(PROTO_TEXT)
def test_an_accepted_protocol_has_a_number(text):
    proto = outcome(lambda: filters.parse_proto(text))
    assert isinstance(proto, UsageError) or proto in wire.PROTOCOL_NUMBERS


class RecordingTracer:
    """What filters.install writes into each BPF map, in order."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, object, object]] = []

    def __getitem__(self, name: str) -> RecordingMap:
        return RecordingMap(name, self.writes)


@dataclass
class RecordingMap:
    name: str
    writes: list[tuple[str, object, object]]

    def __setitem__(self, key: object, value: object) -> None:
        self.writes.append((self.name, key, value))


MAP_TYPES = {
    "filter_addrs": (wire.AddrKey, ctypes.c_uint8),
    "filter_ifaces": (wire.IfaceKey, ctypes.c_uint8),
    "filter_netns": (ctypes.c_uint32, ctypes.c_uint8),
    "filter_config": (ctypes.c_int, wire.FilterConfig),
}


def _checked_kernel_filter(kernel_filter: filters.KernelFilter, spec: filters.FilterSpec) -> None:
    """Every value bound for a BPF map is an int that fits its C field as it is."""
    for name, bits in (("flags", 32), ("port", 16), ("icmp_id", 16), ("proto", 8)):
        value = getattr(kernel_filter, name)
        assert type(value) is int and 0 <= value < 1 << bits, (name, value)
    config = kernel_filter.config()
    assert (config.flags, config.port, config.icmp_id, config.proto) == (
        kernel_filter.flags, kernel_filter.port, kernel_filter.icmp_id, kernel_filter.proto)
    assert (kernel_filter.port != 0) == (spec.port is not None)
    assert all(0 <= n < 1 << 32 for n in kernel_filter.netns)
    assert all(0 <= n < 1 << 32 for pair in kernel_filter.ifaces for n in pair)
    tracer = RecordingTracer()
    filters.install(kernel_filter, tracer)
    for name, key, value in tracer.writes:
        assert isinstance(key, MAP_TYPES[name][0]) and isinstance(value, MAP_TYPES[name][1])
    assert tracer.writes[-1][0] == "filter_config"  # enabled only once the sets are written
    assert len(tracer.writes) == 1 + sum(map(len, (kernel_filter.addresses,
                                                   kernel_filter.ifaces, kernel_filter.netns)))


@FAST
@given(FILTER_SPECS)
@example(filters.FilterSpec(containers=("a",), proto="ICMP6", icmp_id=-1, port="65535"))
def test_a_filter_resolves_to_typed_map_entries_or_a_usage_error(spec):
    kernel_filter = outcome(lambda: filters.resolve(spec, fakes.topology()))
    if not isinstance(kernel_filter, UsageError):
        _checked_kernel_filter(kernel_filter, spec)


EVENTS_OPTIONS = command_line(
    st.sampled_from([["--json"], ["--no-drops"], ["-c", "a"], ["-a", "172.17.0.3"],
                     ["-p", "tcp"], ["--port", "80"]])
    | st.tuples(st.sampled_from(["-c", "-a", "-p", "--port", "-d", "-n", "--ringbuf-pages"]),
                ARG_TEXT | st.sampled_from(["0", "3", "-1", "nan", "inf", "64", "fd00::2"])
                ).map(list),
    max_size=4,
)


@FAST
@given(EVENTS_OPTIONS)
def test_events_command_line_exits_2_or_streams_with_a_typed_filter(options):
    assume_no_help(options)
    with mock.patch.object(events, "run", return_value=0) as run, quiet():
        code = cli.main(["events", *options])
    assert code in (0, UsageError.exit_code)
    if code == 0:
        spec = run.call_args.args[0].spec
        kernel_filter = outcome(lambda: filters.resolve(spec, fakes.topology()))
        if not isinstance(kernel_filter, UsageError):  # an unknown container
            _checked_kernel_filter(kernel_filter, spec)


# ------------------------------------------------------------ 3. nothing user-typed in BPF C

FLAG = re.compile(r"-D[A-Z][A-Z0-9_]*(=-?[0-9]+)?")
PROGRAM_TEXT = loader.program_source()
MACROS = [f.macro for f in FIELDS]
LAYOUTS = st.builds(
    KernelLayout,
    offsets=st.dictionaries(st.sampled_from(MACROS), st.integers(-(2**63), 2**64)),
    missing=st.just(()),
)


@FAST
@given(LAYOUTS)
def test_layout_flags_are_names_and_integers(layout):
    flags = layout.cflags()
    assert all(FLAG.fullmatch(flag) for flag in flags), flags
    names = [flag[2:].split("=")[0] for flag in flags]
    assert len(names) == len(set(names)) and set(names) <= set(layout.offsets)
    assert ("OFF_SKB_NFCT" in names) == layout.has_conntrack


class FakeBtf:
    def __init__(self, offsets: dict[tuple[str, str], int]) -> None:
        self.offsets = offsets

    def offset_of(self, struct: str, path: str) -> int:
        try:
            return self.offsets[(struct, path)]
        except KeyError:
            raise BtfError(f"struct {struct} has no member '{path}'") from None


@FAST
@given(st.dictionaries(st.sampled_from([(f.struct, f.path) for f in FIELDS]),
                       st.integers(0, 1 << 16)))
def test_layout_from_any_btf_is_complete_or_names_what_is_missing(present):
    try:
        layout = kernel_layout.resolve(FakeBtf(present))
    except BtfError:
        assert any(f.required and (f.struct, f.path) not in present for f in FIELDS)
        return
    for f in FIELDS:
        if (f.struct, f.path) in present:
            assert layout.offsets[f.macro] == present[(f.struct, f.path)]
        else:
            assert f"{f.struct}.{f.path}" in layout.missing
    assert all(FLAG.fullmatch(flag) for flag in layout.cflags())


class FakeBcc(types.ModuleType):
    """`from bcc import BPF`: records what would be compiled, then fails like bcc."""

    def __init__(self) -> None:
        super().__init__("bcc")
        self.compiled: list[tuple[str, list[str]]] = []

    def BPF(self, text: str, cflags: list[str]):
        self.compiled.append((text, list(cflags)))
        raise Exception("fake bcc compiles nothing")  # as bcc does: a bare Exception


def compile_args(**load_args) -> tuple[str, list[str]]:
    bcc = FakeBcc()
    with mock.patch.dict(sys.modules, {"bcc": bcc}), \
            mock.patch.object(loader, "check_privileges"), \
            pytest.raises(loader.KernelFeatureError):
        loader.load(**load_args)
    [compiled] = bcc.compiled
    return compiled


SETTINGS = [f.name for f in fields(daemon_settings.Config)]
ENV_NAMES = [f"CNTRACE_{name.upper()}" for name in SETTINGS]
SETTING_TEXT = st.sampled_from(["127.0.0.1:9476", "[::1]:80", ":80", "0.0.0.0:99999", "65536",
                                "1024", "4194304", "64", "0", "-1", "1e3", "nan", "inf", "info",
                                "DEBUG", "", "0x10", " 7 "]) | ARG_TEXT
ENVIRONS = st.dictionaries(st.sampled_from(ENV_NAMES) | st.text(max_size=8), SETTING_TEXT,
                           max_size=4)


def namespace(config: str | None = None) -> argparse.Namespace:
    """`cntrace daemon` with no flag but --config."""
    return argparse.Namespace(config=config, **{name: None for name in SETTINGS})


@FAST
@given(layout=LAYOUTS, environ=ENVIRONS, events_pages=st.integers(), spec=FILTER_SPECS)
def test_bpf_program_is_fixed_text_and_flags_are_names_and_integers(
        layout, environ, events_pages, spec):
    kernel = loader.KernelInfo(layout, {})
    config = outcome(lambda: daemon_settings.load_config(namespace(), environ), *CONFIG_BUGS)
    kernel_filter = outcome(lambda: filters.resolve(spec, fakes.topology()))
    if not isinstance(kernel_filter, UsageError):
        filters.install(kernel_filter, RecordingTracer())
    runs = [compile_args(kernel=kernel, ringbuf_pages=events_pages)]  # cntrace events
    if isinstance(config, daemon_settings.Config):  # cntrace daemon, as daemon.run loads it
        runs.append(compile_args(kernel=kernel, ringbuf_pages=config.ringbuf_pages,
                                 flow_table_size=config.flow_table_size))
    for text, cflags in runs:
        assert text == PROGRAM_TEXT
        assert all(FLAG.fullmatch(flag) for flag in cflags), cflags


# ------------------------------------------------------------ 4. the daemon's configuration


def checked_config(config: daemon_settings.Config) -> daemon_settings.Config:
    """What _validate promises, as the rest of the daemon reads it."""
    host, port = daemon_settings.split_listen_address(config.web_listen_address)
    assert isinstance(host, str) and 1 <= port <= 65535
    assert type(config.flow_table_size) is int and 1024 <= config.flow_table_size <= 4_194_304
    assert type(config.ringbuf_pages) is int and config.ringbuf_pages > 0
    assert config.ringbuf_pages & (config.ringbuf_pages - 1) == 0
    assert config.log_level in ("debug", "info", "warning", "error")
    assert config.web_config_file is None or isinstance(config.web_config_file, str)
    for name in ("flow_idle_seconds", "reconcile_seconds", "sample_seconds"):
        value = getattr(config, name)
        assert type(value) is float
        assert math.isfinite(value), f"{name} {value} is not finite"
        assert value > 0
    assert all(type(getattr(config, f"collector_{n}")) is bool
               for n in daemon_settings.COLLECTORS)
    assert all(isinstance(label, str) and label.strip() == label and label
               for label in config.docker_labels)
    assert config.web_telemetry_path.startswith("/")
    return config


SETTING_VALUES = (json_like() | SETTING_TEXT | st.integers(1000, 5_000_000)
                  | st.sampled_from([64, 3, 1.5, 0.0, -1, True, "warning", "x:1"]))
CONFIG_DOCUMENTS = st.dictionaries(
    st.sampled_from(SETTINGS) | st.text(max_size=8) | st.integers(-2, 2) | st.none(),
    SETTING_VALUES, max_size=5)
CONFIG_FILES = (CONFIG_DOCUMENTS.map(dump) | json_like().map(dump) | st.text(max_size=60)
                | st.binary(max_size=30))


@FILES
@given(content=CONFIG_FILES, environ=ENVIRONS)
@example(content="flow_table_size: 2048\nlog_level: debug\n", environ={})
@example(content="web_listen_address: 'x'\n", environ={"CNTRACE_WEB_LISTEN_ADDRESS": "[::]:1"})
def test_daemon_config_is_valid_or_a_usage_error(workdir, content, environ):
    path = write(workdir, content)
    result = outcome(lambda: checked_config(daemon_settings.load_config(namespace(path), environ)),
                     *CONFIG_BUGS)
    if isinstance(result, UsageError):   # checked_config checked a Config
        assert one_line(result)


DAEMON_OPTIONS = command_line(
    st.tuples(st.sampled_from(["--web.listen-address", "--web.config.file", "--flow-table-size",
                               "--flow-idle-seconds", "--reconcile-seconds", "--log-level",
                               "--config"]),
              SETTING_TEXT).map(list),
    max_size=3,
)


@FAST
@given(DAEMON_OPTIONS)
def test_daemon_command_line_exits_2_or_reaches_the_privilege_check(options):
    assume_no_help(options)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CNTRACE_")}
    with mock.patch.dict(os.environ, clean, clear=True), \
            mock.patch.object(daemon.logging, "basicConfig"), \
            mock.patch.object(loader, "check_privileges", side_effect=Reached), quiet():
        try:
            code = outcome(lambda: cli.main(["daemon", *options]), *CONFIG_BUGS, *WEB_BUGS)
        except Reached:
            event("reached the privilege check")
            return
    assert code == UsageError.exit_code


# ------------------------------------------------------------ 5. the web config file

WEB_MODES = st.sampled_from([*webconfig.CLIENT_AUTH_TYPES, "RequireClientCert", "none", ""])
VERSIONS = st.sampled_from([*webconfig.TLS_VERSIONS])
PKI_FILES = st.sampled_from(["server.pem", "server.key", "ca.pem", "client.pem", "client.key",
                             "other.key", "encrypted.key", "missing.pem", ".", ""])
TLS_SECTIONS = st.fixed_dictionaries({}, optional={
    "cert_file": PKI_FILES | ANY_TEXT | SCALARS,
    "key_file": PKI_FILES | ANY_TEXT | SCALARS,
    "client_ca_file": PKI_FILES | ANY_TEXT | SCALARS,
    "client_auth_type": WEB_MODES | ANY_TEXT | SCALARS,
    "min_version": VERSIONS | st.just(1.2) | SCALARS,
    "max_version": VERSIONS | st.just(1.3) | SCALARS,
    "cipher_suites": json_like(),
    "client_allowed_sans": json_like(),
}) | st.dictionaries(ANY_TEXT | st.integers(), json_like(), max_size=2) | SCALARS
HASH = bcrypt.hashpw(b"wonderland", bcrypt.gensalt(rounds=4)).decode()
USERS = st.dictionaries(
    st.sampled_from(["alice", "bob:x", ""]) | ANY_TEXT | st.integers() | st.none(),
    st.sampled_from([HASH, HASH[:-1], HASH.replace("$2b$", "$2a$"), "wonderland"])
    | ANY_TEXT | SCALARS,
    max_size=3,
) | json_like()
WEB_DOCUMENTS = st.fixed_dictionaries({}, optional={
    "tls_server_config": TLS_SECTIONS,
    "basic_auth_users": USERS,
    "http_server_config": json_like(),
    "rate_limit": json_like(),
}) | st.dictionaries(ANY_TEXT | st.integers(), json_like(), max_size=2)
# Near-valid files, to reach the certificate and key loading as often as not.
PAIRS = st.sampled_from([("server.pem", "server.key"), ("client.pem", "client.key"),
                         ("server.pem", "other.key"), ("server.pem", "encrypted.key")])
NEAR_VALID = st.builds(
    lambda pair, extra, users: {"tls_server_config": {"cert_file": pair[0], "key_file": pair[1],
                                                      **extra},
                                "basic_auth_users": users},
    PAIRS,
    st.fixed_dictionaries({}, optional={"client_ca_file": PKI_FILES, "min_version": VERSIONS,
                                        "client_auth_type": WEB_MODES, "max_version": VERSIONS}),
    st.dictionaries(st.sampled_from(["alice", "bob"]), st.just(HASH)),
)
WEB_FILES = (NEAR_VALID.map(dump) | WEB_DOCUMENTS.map(dump) | json_like().map(dump)
             | st.text(max_size=60) | st.binary(max_size=30))


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory) -> Path:
    """A real PKI beside the web config, so relative names reach the TLS loading."""
    return make_pki(tmp_path_factory.mktemp("pki")).dir


@FILES
@given(content=WEB_FILES)
@example(content="tls_server_config:\n  cert_file: server.pem\n  key_file: encrypted.key\n")
@example(content="tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n"
         "  client_auth_type: RequireAnyClientCert\n  client_ca_file: ca.pem\n")
def test_web_config_is_usable_or_a_usage_error(pki_dir, content):
    path = write(pki_dir, content, "web.yml")
    result = outcome(lambda: webconfig.load(path), *WEB_BUGS)
    if isinstance(result, webconfig.WebConfig):
        event(f"TLS {result.tls is not None}, users {len(result.basic_auth_users)}")
        assert (result.tls is None) == (result.ssl_context() is None)
        assert all(isinstance(u, str) and isinstance(h, bytes)
                   for u, h in result.basic_auth_users.items())
    else:
        assert isinstance(result, UsageError) and str(result).startswith(f"web config {path}")


@FAST
@given(name=ARG_TEXT)
def test_web_config_path_is_read_or_a_usage_error(workdir, name):
    result = outcome(lambda: webconfig.load(str(workdir / name)), *WEB_BUGS)
    if isinstance(result, UsageError):   # outcome() fails on any other exception
        assert one_line(result)


# ------------------------------------------------------------ 6. Docker payloads and events

IFNAMES = st.sampled_from(["lo", "eth0", "docker0", "br-5f248116d26e", "veth1", "veth2"]) \
    | st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=15)
SMALL_IFINDEX = st.integers(1, 8)
LINKS = st.builds(
    Link, ifindex=SMALL_IFINDEX, name=IFNAMES,
    kind=st.sampled_from([None, "veth", "bridge", "vxlan"]),
    mac=st.none() | st.sampled_from(["02:42:ac:11:00:02", "02:42:AC:11:00:03"]),
    addresses=st.lists(st.builds("{}/{}".format, IPS, st.integers(0, 128)), max_size=2).map(tuple),
    link=st.none() | SMALL_IFINDEX, master=st.none() | SMALL_IFINDEX,
)
INODES = st.integers(4026531833, 4026531836)
NETNS = st.builds(NetnsLinks, inode=INODES,
                  links=st.lists(LINKS, max_size=5, unique_by=lambda k: k.ifindex).map(tuple),
                  default_oifs=st.frozensets(SMALL_IFINDEX, max_size=2))
NAMES = st.sampled_from(["a", "b", "bridge", "web"]) | st.text(min_size=1, max_size=70)
EXTRA = st.dictionaries(st.sampled_from(["Config", "HostConfig", "Created", "Image"]),
                        json_like(), max_size=2)


def _maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """Docker sends some fields as null, or leaves them out (fixed_dictionaries' optional)."""
    return st.none() | strategy


ENDPOINTS = st.fixed_dictionaries({}, optional={
    "IPAddress": _maybe(st.just("") | IPS),
    "GlobalIPv6Address": _maybe(st.just("") | IPS),
    "MacAddress": _maybe(st.sampled_from(["", "02:42:ac:11:00:02", "02:42:AC:11:00:03"])),
    "NetworkID": st.text(max_size=8),
    "Aliases": json_like(),
})
CONTAINER_ATTRS = st.fixed_dictionaries(
    {"Id": st.text(alphabet="0123456789abcdef", min_size=1, max_size=64) | st.text(min_size=1),
     "Name": NAMES | NAMES.map("/".__add__),
     "State": st.fixed_dictionaries({"Pid": st.integers(0, 1 << 22)},
                                    optional={"Running": st.booleans(), "Status": st.text()})},
    optional={"NetworkSettings": _maybe(st.fixed_dictionaries({}, optional={
        "Networks": _maybe(st.dictionaries(NAMES, ENDPOINTS, max_size=3))}))},
).flatmap(lambda attrs: EXTRA.map(lambda extra: {**extra, **attrs}))


def subnet(ip: ipaddress.IPv4Address, prefix: int) -> str:
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


IPAM_CONFIGS = st.fixed_dictionaries({}, optional={
    "Subnet": st.builds(subnet, st.ip_addresses(v=4), st.integers(8, 30)),
    "Gateway": _maybe(st.just("") | IPS),
})
NETWORK_ATTRS = st.fixed_dictionaries(
    {"Id": st.text(alphabet="0123456789abcdef", min_size=1, max_size=64), "Name": NAMES},
    optional={
        "Driver": st.sampled_from(["bridge", "host", "null", "overlay", "macvlan"]),
        "Options": _maybe(st.dictionaries(
            st.sampled_from(["com.docker.network.bridge.name", "com.docker.network.mtu"]),
            IFNAMES, max_size=2)),
        "IPAM": _maybe(st.fixed_dictionaries({}, optional={
            "Driver": st.just("default"), "Config": _maybe(st.lists(IPAM_CONFIGS, max_size=2))})),
    },
).flatmap(lambda attrs: EXTRA.map(lambda extra: {**extra, **attrs}))


@FAST
@given(CONTAINER_ATTRS, INODES)
def test_any_container_inspect_payload_parses(attrs, netns):
    c = join.parse_container(attrs, netns)
    assert (c.id, c.pid, c.netns) == (attrs["Id"], attrs["State"]["Pid"], netns)
    assert c.name == attrs["Name"].lstrip("/")
    endpoints = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    assert set(c.networks) | set(c.ipv6) <= set(endpoints)
    assert all(isinstance(ip, str) and ip for ip in [*c.networks.values(), *c.ipv6.values()])


@FAST
@given(NETWORK_ATTRS)
def test_any_network_inspect_payload_parses(attrs):
    n = join.parse_network(attrs)
    assert (n.id, n.name) == (attrs["Id"], attrs["Name"])
    assert (n.bridge is not None) == (attrs.get("Driver") == "bridge")
    assert all(isinstance(s, str) for s in n.subnets)


@settings(max_examples=200, deadline=None)
@given(host=NETNS,
       containers=st.lists(st.tuples(CONTAINER_ATTRS, NETNS), max_size=4,
                           unique_by=lambda pair: pair[0]["Id"]),
       networks=st.lists(NETWORK_ATTRS, max_size=3, unique_by=lambda n: n["Name"]))
def test_any_docker_host_assembles_into_a_consistent_topology(host, containers, networks):
    topo = join.assemble(host, containers, networks)
    assert set(topo.containers) == {attrs["Id"] for attrs, _ in containers}
    assert all(key == (i.netns, i.ifindex) for key, i in topo.interfaces.items())
    assert {i.ifindex for i in topo.interfaces.values() if i.netns == host.inode} == \
        {link.ifindex for link in host.links}
    bridges = {n.bridge: n.name for n in topo.networks.values() if n.bridge}
    for i in topo.interfaces.values():
        if i.role == ROLE_BRIDGE:
            assert i.netns == host.inode and bridges[i.name] == i.network
        if i.role == ROLE_VETH_HOST:  # paired both ways with an interface of its container
            assert i.container_id in topo.containers
            assert any(c.role == ROLE_CONTAINER and c.container_id == i.container_id
                       and c.peer_ifindex == i.ifindex and i.peer_ifindex == c.ifindex
                       for c in topo.interfaces.values())
    json.dumps(topo.to_dict())  # what /topology serves
    outcome(lambda: checked_text(topo))


def checked_text(topo: topology.Topology) -> str:
    text = topology_text.format_text(topo)
    wide = [line for line in text.splitlines() if len(line) > topology_text.WIDTH]
    assert not wide, f"over {topology_text.WIDTH} columns: {wide[0]!r}"
    return text


DOCKER_ACTIONS = st.sampled_from(sorted(daemon.DOCKER_ACTIONS))
EVENTS = (st.fixed_dictionaries({"Action": json_like() | DOCKER_ACTIONS},
                                optional={"Type": st.sampled_from(["container", "network"]),
                                          "Actor": json_like()})
          | json_like(keys=st.sampled_from(["Action", "Type", "status", "id"]) | st.text()))


@FAST
@given(EVENTS)
@example({"Action": None})
@example({"Action": 7})
@example(["Action"])
def test_any_docker_event_is_relevant_or_not_without_raising(payload):
    assert isinstance(daemon.is_relevant_event(payload), bool)


@FAST
@given(DOCKER_ACTIONS, st.sampled_from(["", ":", ": sh -c true", ":x"]), ARG_TEXT)
def test_docker_event_relevance_reads_the_action_before_its_colon(action, suffix, other):
    assert daemon.is_relevant_event({"Action": action + suffix})
    prefix = other.split(":")[0]
    assert daemon.is_relevant_event({"Action": other}) is (prefix in daemon.DOCKER_ACTIONS)


class StopWhenWaited(threading.Event):
    """The daemon's stop event; a backoff wait ends the watcher at once."""

    def wait(self, timeout: float | None = None) -> bool:
        self.set()
        return True


@FAST
@given(st.lists(EVENTS, max_size=5))
def test_docker_watcher_survives_any_event_stream(stream):
    stop, dirty, stats = StopWhenWaited(), threading.Event(), DaemonStats()

    def event_stream(**query):
        yield from stream
        stop.set()  # the stream ends as the daemon stops: not a lost engine

    client = mock.Mock(events=event_stream)
    with mock.patch.object(docker_engine, "docker_client", return_value=client):
        daemon._watch_docker(dirty, stop, stats)
    assert stats.docker_connected and stats.docker_reconnects == 0 and dirty.is_set()


# ------------------------------------------------------------ the bugs' minimal examples


def _config(directory: Path, content: str | bytes | None, environ: dict[str, str]):
    path = write(directory, content) if content is not None else None
    return checked_config(daemon_settings.load_config(namespace(path), environ))


def _web(directory: Path, content: str):
    return webconfig.load(write(directory, content, "web.yml"))


def _known(name: str, bug: Bug, call: Callable[[Path], object]):
    """A minimal example of a bug fuzzing found, kept as a regression test."""
    return pytest.param(call, id=name)


NESTED = "[" * 1000 + "]" * 1000
LONG_NETWORK = {"Id": "5f248116d26e", "Name": "a-compose-project-with-a-long-name_backend-net",
                "Driver": "bridge"}
NUL_CERT = 'tls_server_config: {cert_file: "\\0", key_file: k}'


@pytest.mark.parametrize("call", [
    _known("env-listen-empty", LISTEN_EMPTY,
           lambda d: _config(d, None, {"CNTRACE_WEB_LISTEN_ADDRESS": ""})),
    _known("yaml-listen-null", LISTEN_EMPTY, lambda d: _config(d, "web_listen_address:\n", {})),
    _known("yaml-mixed-keys", MIXED_KEYS, lambda d: _config(d, "1: 0\na: 0\n", {})),
    _known("yaml-int-inf", NUMBER_OVERFLOW, lambda d: _config(d, "ringbuf_pages: .inf\n", {})),
    _known("yaml-float-10e400", NUMBER_OVERFLOW,
           lambda d: _config(d, f"sample_seconds: {10**400}\n", {})),
    _known("config-not-utf8", CONFIG_NOT_UTF8, lambda d: _config(d, b"\xff", {})),
    _known("env-idle-inf", SECONDS_NOT_FINITE,
           lambda d: _config(d, None, {"CNTRACE_FLOW_IDLE_SECONDS": "inf"})),
    _known("env-sample-nan", SECONDS_NOT_FINITE,
           lambda d: _config(d, None, {"CNTRACE_SAMPLE_SECONDS": "nan"})),
    _known("config-nested", YAML_TOO_DEEP, lambda d: _config(d, NESTED, {})),
    _known("web-nested", YAML_TOO_DEEP, lambda d: _web(d, NESTED)),
    _known("web-cert-nul", WEB_PATH_NUL, lambda d: _web(d, NUL_CERT)),
    _known("config-web-file-nul", WEB_PATH_NUL, lambda d: webconfig.load(
        _config(d, 'web_config_file: "\\0"\n', {}).web_config_file)),
    _known("web-hash-surrogate", WEB_SURROGATE,
           lambda d: _web(d, 'basic_auth_users: {alice: "\\ud800"}')),
    _known("web-cert-surrogate", WEB_SURROGATE,
           lambda d: _web(d, 'tls_server_config: {cert_file: "\\ud800", key_file: k}')),
    _known("long-network-name", WIDE_NETWORK_LINE, lambda d: checked_text(join.assemble(
        NetnsLinks(1, (Link(6, "br-5f248116d26e", "bridge", None),)), [], [LONG_NETWORK]))),
])
def test_known_bug(workdir, call):
    """Each input gives a value or a UsageError once its bug is fixed."""
    with contextlib.suppress(UsageError):
        call(workdir)
