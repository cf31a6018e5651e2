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
import signal
import sys
import threading
import time

from tracer.daemon.bpf_maps import BpfCounters
from tracer.daemon.collector import CntraceCollector, DaemonStats, Sampler, read_conntrack
from tracer.daemon.settings import load_config, split_listen_address
from tracer.daemon.slots import ContainerSlots
from tracer.errors import CntraceError, DockerUnavailableError
from tracer.host import docker_engine
from tracer.kernel import loader, wire
from tracer.stream import filters

log = logging.getLogger("cntrace.daemon")

DOCKER_CONNECT_WAIT_SECONDS = 5.0
DOCKER_ACTIONS = {"start", "die", "destroy", "connect", "disconnect", "rename", "restart",
                  "pause", "unpause"}


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
            client = docker_engine.docker_client()
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
        from tracer.daemon import webconfig

        web_config = webconfig.load(config.web_config_file)
    host, port = split_listen_address(config.web_listen_address)
    loader.check_privileges()
    kernel = loader.read_kernel(args.kernel_btf)
    docker_engine.docker_client()   # fail now (exit 5) if the engine cannot be reached

    tracer = loader.load(kernel, ringbuf_pages=config.ringbuf_pages,
                         flow_table_size=config.flow_table_size,
                         collectors=config.collectors & loader.DAEMON_COLLECTORS)
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
    from prometheus_client import (
        CollectorRegistry,
        GCCollector,
        PlatformCollector,
        ProcessCollector,
    )

    from tracer.daemon.httpserver import MetricsServer

    stats = DaemonStats(hooks=list(tracer.hooks))
    for hook in tracer.hooks:
        if hook.attached:
            log.info("attached %s via %s (%s)", hook.name, hook.mechanism, hook.detail)
        else:
            log.warning("degraded: %s not attached: %s", hook.name, hook.detail)
    counters = BpfCounters(tracer)
    threading.Thread(target=_advance_flow_epochs, args=(counters, stop), name="flow-epoch",
                     daemon=True).start()
    collectors = config.collectors
    registry = ContainerSlots(
        counters, lambda: docker_engine.discover(docker_engine.docker_client()),
        loader.MAX_CONTAINERS, counting=bool(collectors & loader.COLLECT_CFLAGS.keys()))
    # The daemon's event stream carries drops only; counting is in the maps.
    filters.install(filters.KernelFilter(flags=wire.FILTER_DROPS_ONLY), tracer)
    from tracer.stream.events import EventReader

    reader = EventReader(tracer)
    sampler = Sampler(counters, registry, config.flow_idle_seconds,
                      read_conntrack if "conntrack" in collectors else None,
                      interval=config.sample_seconds,
                      walk_flows=bool(collectors & {"flows", "peers"}))
    metrics = CollectorRegistry(auto_describe=False)
    metrics.register(CntraceCollector(counters, registry, sampler, stats, tracer.drop_reasons,
                                      collectors, tuple(config.docker_labels)))
    # The client library's own: process_* (CPU, memory, fds), python_info, python_gc_*.
    for own in (ProcessCollector, PlatformCollector, GCCollector):
        own(registry=metrics)

    def healthy() -> tuple[bool, str]:
        if stats.hooks and not any(h.attached for h in stats.hooks):   # none asked: fine
            return False, "no hook attached"
        return True, "ok" if stats.docker_connected else "ok (docker disconnected)"

    def topology_json() -> dict:
        topo = registry.topology
        return topo.to_dict() if topo else {}

    drawn: dict[str, tuple[object, bytes]] = {}   # format -> (what was drawn, the drawing)

    def topology_figure(fmt: str) -> bytes:
        """Drawn again only when a reconcile changed what is drawn."""
        from tracer.host import figure

        topo = registry.topology
        if topo is None:
            raise DockerUnavailableError("no topology yet: Docker has not answered")
        uncounted = {cid: reason for cid, (_, reason) in registry.uncounted.items()}
        state = (topo, uncounted)
        if fmt not in drawn or drawn[fmt][0] != state:
            drawn[fmt] = (state, figure.render(figure.to_dot(topo, uncounted), fmt))
        return drawn[fmt][1]

    server = MetricsServer(host, port, metrics, web_config, topology_json, healthy,
                           telemetry_path=config.web_telemetry_path,
                           topology_figure=topology_figure)
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
        log.info("serving %s on %s:%d%s; collectors: %s", config.web_telemetry_path, host,
                 server.port, " (TLS)" if web_config and web_config.tls else "",
                 ", ".join(sorted(collectors)) or "none")
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


def _advance_flow_epochs(counters: BpfCounters, stop: threading.Event) -> None:
    """A thread of its own: a reconcile waiting on Docker must not hold back
    the refresh of steady flows (bpf/accounting.h flow_epoch)."""
    while not stop.wait(loader.FLOW_EPOCH_SECONDS):
        counters.advance_flow_epoch()


def _log_new_drops(events, registry: ContainerSlots, reasons: dict[int, str],
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


def _reconcile(registry: ContainerSlots) -> None:
    try:
        started, gone = registry.reconcile()
    except CntraceError as exc:
        log.warning("reconcile skipped: %s", exc)
        return
    for name in started:
        log.info("container seen: %s", name)
    for name in gone:
        log.info("container gone: %s", name)
