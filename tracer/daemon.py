"""`cntrace daemon`: exact per-container flow, NAT and drop counters in BPF
maps, exported for Prometheus.

Configuration comes from flags, then CNTRACE_* environment variables, then an
optional YAML file, then defaults; all of it is checked before anything is
attached.  Docker events keep the container registry fresh; a Docker restart
is survived by reconnecting and reconciling.  SIGTERM detaches and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, fields

from tracer import filters, loader, topology, wire
from tracer.collector import CntraceCollector, DaemonStats, Sampler, read_conntrack
from tracer.counters import BpfCounters
from tracer.errors import CntraceError, DockerUnavailableError, UsageError
from tracer.registry import Registry

log = logging.getLogger("cntrace.daemon")

DOCKER_CONNECT_WAIT_SECONDS = 5.0
DOCKER_ACTIONS = {"start", "die", "destroy", "connect", "disconnect", "rename", "restart",
                  "pause", "unpause"}


@dataclass
class Config:
    web_listen_address: str = "127.0.0.1:9476"
    web_config_file: str | None = None
    flow_table_size: int = 65536
    flow_idle_seconds: float = 60.0
    reconcile_seconds: float = 30.0
    sample_seconds: float = 5.0
    ringbuf_pages: int = 64
    log_level: str = "info"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML file with the settings below "
                        "(keys with underscores, e.g. web_listen_address)")
    parser.add_argument("--web.listen-address", dest="web_listen_address", metavar="ADDR:PORT",
                        help="where to serve /metrics (default 127.0.0.1:9476; "
                        "0.0.0.0:9476 exposes it)")
    parser.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                        help="TLS and basic auth, in the Prometheus exporter-toolkit format")
    parser.add_argument("--flow-table-size", type=int, help="LRU flow table entries "
                        "(default 65536)")
    parser.add_argument("--flow-idle-seconds", type=float,
                        help="a flow is active while a packet came within this (default 60)")
    parser.add_argument("--reconcile-seconds", type=float,
                        help="full resync with Docker at least this often (default 30)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))


def _coerce(name: str, value, kind):
    try:
        if kind in ("int", int):
            return int(value)
        if kind in ("float", float):
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(value)
            return number
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"config {name}: '{str(value)[:40]}' is not a finite number") from None
    if name == "web_listen_address" and value in (None, ""):
        raise UsageError("config web_listen_address: empty (expected HOST:PORT)")
    if value in (None, ""):
        return None
    text = str(value)
    if "\0" in text:
        raise UsageError(f"config {name}: contains a NUL byte")
    return text


def load_config(args: argparse.Namespace, environ: dict[str, str] = os.environ) -> Config:
    """Flags > CNTRACE_* environment > --config file > defaults; validated."""
    values: dict[str, object] = {}
    if args.config:
        values.update(_read_yaml(args.config))
    known = {f.name: f.type for f in fields(Config)}
    unknown = sorted(str(key) for key in set(values) - set(known))
    if unknown:
        raise UsageError(f"config {args.config}: unknown key '{unknown[0]}' "
                         f"(known: {', '.join(sorted(known))})")
    for name in known:
        env = environ.get(f"CNTRACE_{name.upper()}")
        if env is not None:
            values[name] = env
        flag = getattr(args, name, None)
        if flag is not None:
            values[name] = flag
    config = Config()
    for name, value in values.items():
        kind = known[name]
        setattr(config, name, _coerce(name, value, "int" if "int" in str(kind) else
                                      "float" if "float" in str(kind) else kind))
    _validate(config)
    return config


def _read_yaml(path: str) -> dict:
    import yaml

    try:
        with open(path, "rb") as handle:
            data = yaml.safe_load(handle.read().decode("utf-8")) or {}
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"config {path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise UsageError(f"config {path} is nested too deeply") from None
    if not isinstance(data, dict):
        raise UsageError(f"config {path}: expected a mapping of settings")
    return data


def split_listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise UsageError(f"--web.listen-address '{text}': expected HOST:PORT")
    return host.strip("[]"), filters.parse_port(port)


def _validate(config: Config) -> None:
    split_listen_address(config.web_listen_address)
    if not 1024 <= config.flow_table_size <= 4_194_304:
        raise UsageError(f"flow_table_size {config.flow_table_size}: expected 1024-4194304")
    for name in ("flow_idle_seconds", "reconcile_seconds", "sample_seconds"):
        value = getattr(config, name)
        if not math.isfinite(value) or value <= 0:
            raise UsageError(f"{name} must be a positive number of seconds")
    if config.ringbuf_pages < 1 or config.ringbuf_pages & (config.ringbuf_pages - 1):
        raise UsageError(f"ringbuf_pages {config.ringbuf_pages}: must be a power of 2")
    if config.log_level not in ("debug", "info", "warning", "error"):
        raise UsageError(f"log_level '{config.log_level}': expected debug, info, warning "
                         "or error")


class JournalFormatter(logging.Formatter):
    """One line per event with a <N> syslog priority prefix, which journald
    turns into the entry's priority (SyslogLevelPrefix=yes, the default)."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}

    def format(self, record: logging.LogRecord) -> str:
        return f"<{self.PRIORITY.get(record.levelno, 6)}>{record.getMessage()}"


def is_relevant_event(event: object) -> bool:
    """A Docker event that can change who is where ("exec_start: sh" and
    other noise is not); tolerant of any payload shape."""
    action = event.get("Action") if isinstance(event, dict) else None
    return isinstance(action, str) and action.split(":")[0] in DOCKER_ACTIONS


def _watch_docker(dirty: threading.Event, stop: threading.Event, stats: DaemonStats) -> None:
    """Mark the registry dirty on container/network events; reconnect with
    backoff when the engine goes away (a restart), then force a reconcile.
    docker_reconnects counts reconnections made, not attempts."""
    backoff = 1.0
    ever_connected = False
    while not stop.is_set():
        try:
            client = topology.docker_client()
            stream = client.events(decode=True, filters={"type": ["container", "network"]})
            if ever_connected:
                stats.docker_reconnects += 1
                log.info("docker: event stream reconnected")
            else:
                log.info("docker: event stream connected")
            ever_connected = True
            stats.docker_connected = True
            backoff = 1.0
            dirty.set()
            for event in stream:
                if stop.is_set():
                    return
                if is_relevant_event(event):
                    dirty.set()
            raise DockerUnavailableError("event stream ended")
        except Exception as exc:  # any failure of the engine or its socket
            if stop.is_set():
                return
            if stats.docker_connected:
                log.warning("docker: lost the engine (%s); reconnecting", str(exc)[:200])
            stats.docker_connected = False
            stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter())
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler], force=True)
    web_config = None
    if config.web_config_file:
        from tracer import webconfig

        web_config = webconfig.load(config.web_config_file)
    host, port = split_listen_address(config.web_listen_address)
    loader.check_privileges()
    kernel = loader.read_kernel(args.kernel_btf)
    topology.docker_client()   # fail now (exit 5) if the engine cannot be reached

    tracer = loader.load(kernel, ringbuf_pages=config.ringbuf_pages,
                         flow_table_size=config.flow_table_size)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        return _main_loop(config, web_config, host, port, tracer, stop)
    finally:
        stop.set()
        tracer.close()
        log.info("detached all hooks; exiting")


def _main_loop(config, web_config, host, port, tracer, stop) -> int:
    from prometheus_client import CollectorRegistry

    from tracer.httpserver import MetricsServer

    stats = DaemonStats(hooks=list(tracer.hooks))
    for hook in tracer.hooks:
        if hook.attached:
            log.info("attached %s via %s (%s)", hook.name, hook.mechanism, hook.detail)
        else:
            log.warning("degraded: %s not attached: %s", hook.name, hook.detail)
    counters = BpfCounters(tracer)
    registry = Registry(counters, lambda: topology.discover(topology.docker_client()),
                        loader.MAX_CONTAINERS)
    # The daemon's event stream carries drops only; counting is in the maps.
    filters.install(filters.KernelFilter(flags=wire.FILTER_DROPS_ONLY), tracer)
    from tracer.events import EventReader

    reader = EventReader(tracer)
    sampler = Sampler(counters, registry, config.flow_idle_seconds, read_conntrack,
                      interval=config.sample_seconds)
    metrics = CollectorRegistry(auto_describe=False)
    metrics.register(CntraceCollector(counters, registry, sampler, stats, tracer.drop_reasons))

    def healthy() -> tuple[bool, str]:
        if not any(h.attached for h in stats.hooks):
            return False, "no hook attached"
        return True, "ok" if stats.docker_connected else "ok (docker disconnected)"

    def topology_json() -> dict:
        topo = registry.topology
        return topo.to_dict() if topo else {}

    server = MetricsServer(host, port, metrics, web_config, topology_json, healthy)
    dirty = threading.Event()
    # The event stream connects before the first reconcile and the first
    # scrape: no container start slips between, docker_connected starts at 1.
    threading.Thread(target=_watch_docker, args=(dirty, stop, stats), name="docker-events",
                     daemon=True).start()
    try:
        dirty.wait(DOCKER_CONNECT_WAIT_SECONDS)
        dirty.clear()
        _reconcile(registry)
        threading.Thread(target=sampler.run, name="sampler", daemon=True).start()
        server.start()
        log.info("serving /metrics on %s:%d%s", host, server.port, " (TLS)" if web_config and
                 web_config.tls else "")
        last_reconcile = time.monotonic()
        seen_drops: set[tuple[str, str]] = set()
        while not stop.is_set():
            events = reader.poll(200)
            stats.events_received += len(events)
            stats.events_undecodable = reader.decode_errors
            _log_new_drops(events, registry, tracer.drop_reasons, seen_drops)
            due = time.monotonic() - last_reconcile >= config.reconcile_seconds
            if dirty.is_set() or due:
                dirty.clear()
                _reconcile(registry)
                last_reconcile = time.monotonic()
    finally:
        sampler.stop()
        server.stop()   # tracer.close() detaches the veth programs
    return 0


def _log_new_drops(events, registry: Registry, reasons: dict[int, str],
                   seen: set[tuple[str, str]]) -> None:
    """One log line the first time a container drops for a reason (the
    kernel sends at most one drop event per container and reason a second)."""
    if not events:
        return
    tracked = registry.snapshot().values()
    for event in events:
        owner = next((t.container.name for t in tracked
                      if (event.netns, event.ifindex) in t.ifaces
                      or event.src in t.addresses or event.dst in t.addresses), None)
        reason = reasons.get(event.drop_reason, str(event.drop_reason))
        if owner and (owner, reason) not in seen:
            seen.add((owner, reason))
            log.info("drops seen: container %s, reason %s (%s > %s)", owner, reason,
                     event.src, event.dst)


def _reconcile(registry: Registry) -> None:
    try:
        started, gone = registry.reconcile()
    except CntraceError as exc:
        log.warning("reconcile skipped: %s", exc)
        return
    for name in started:
        log.info("container seen: %s", name)
    for name in gone:
        log.info("container gone: %s", name)
