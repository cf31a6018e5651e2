"""The daemon's settings: one table (Config) with its defaults, the flags
that set them, and the precedence flags > CNTRACE_* environment > --config
YAML > defaults, all validated before anything is attached.  Kept apart from
tracer.daemon so that building the command line imports nothing heavy."""

from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import dataclass, field, fields

from tracer import filters
from tracer.errors import UsageError

# The families of metrics that cost something per packet or per scrape, each
# switched by --collector.<name> / --no-collector.<name>, with what it costs
# (README.md "Collectors" has the measured figures).
COLLECTORS = {
    "traffic": "packets and bytes per container: one per-CPU array update per packet",
    "peers": "traffic per peer: a flow lookup (cached per CPU) and a hash update per packet",
    "flows": "flows opened and active: the flow table (shared with peers), walked each sample",
    "nat": "SNAT and DNAT per container: two kernel reads per packet, a program on each "
           "exit device",
    "drops": "drops by reason: a program on every freed packet (kfree_skb)",
    "conntrack": "the conntrack table's use and NAT bindings: /proc/net/nf_conntrack read "
                 "each sample",
}


@dataclass
class Config:
    web_listen_address: str = "127.0.0.1:9476"
    web_telemetry_path: str = "/metrics"
    web_config_file: str | None = None
    flow_table_size: int = 65536
    flow_idle_seconds: float = 60.0
    reconcile_seconds: float = 30.0
    sample_seconds: float = 5.0
    ringbuf_pages: int = 64
    log_level: str = "info"
    docker_labels: list[str] = field(default_factory=list)
    collector_traffic: bool = True
    collector_peers: bool = True
    collector_flows: bool = True
    collector_nat: bool = True
    collector_drops: bool = True
    collector_conntrack: bool = True

    @property
    def collectors(self) -> frozenset[str]:
        return frozenset(n for n in COLLECTORS if getattr(self, f"collector_{n}"))


def container_label_name(docker_label: str) -> str:
    """A Docker label as a Prometheus label name, the cAdvisor way:
    container_label_ and the label with every other character an underscore."""
    return "container_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", docker_label)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML file with the settings below "
                        "(keys with underscores, e.g. web_listen_address)")
    parser.add_argument("--web.listen-address", dest="web_listen_address", metavar="ADDR:PORT",
                        help="where to serve /metrics (default 127.0.0.1:9476; "
                        "0.0.0.0:9476 exposes it)")
    parser.add_argument("--web.telemetry-path", dest="web_telemetry_path", metavar="PATH",
                        help="where the metrics are served (default /metrics)")
    parser.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                        help="TLS and basic auth, in the Prometheus exporter-toolkit format")
    parser.add_argument("--flow-table-size", type=int, help="LRU flow table entries "
                        "(default 65536)")
    parser.add_argument("--flow-idle-seconds", type=float,
                        help="a flow is active while a packet came within this (default 60)")
    parser.add_argument("--reconcile-seconds", type=float,
                        help="full resync with Docker at least this often (default 30)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--docker.label", dest="docker_labels", action="append",
                        metavar="NAME", help="export this container label as "
                        "container_label_<NAME> on every per-container series; repeatable")
    for name, cost in COLLECTORS.items():
        parser.add_argument(f"--collector.{name}", dest=f"collector_{name}",
                            action=argparse.BooleanOptionalAction, default=None,
                            help=f"{cost} (default on)")


def _shown(value) -> str:
    """A value echoed in an error: quoted, cut to 40 characters, control
    characters escaped, so the error stays one line."""
    text = str(value)[:40]
    return f"'{text}'" if text.isprintable() else repr(text)


def _coerce(name: str, value, kind: str):
    """A setting's value from a flag, CNTRACE_* variable or YAML, as `kind`
    (the Config field's annotation)."""
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0"):
            return False
        raise UsageError(f"config {name}: {_shown(value)} is not true or false")
    if kind == "list[str]":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            raise UsageError(f"config {name}: expected a list of names")
        return [_coerce(name, str(item).strip(), "str") for item in items if str(item).strip()]
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(value)
            return number
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"config {name}: {_shown(value)} is not a finite number") from None
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
        raise UsageError(f"config {args.config}: unknown key {_shown(unknown[0])} "
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
        kind = str(known[name]).split(" |")[0]   # "str | None": a str, or left unset
        setattr(config, name, _coerce(name, value, kind))
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
    path = config.web_telemetry_path or ""
    if not path.startswith("/") or path in ("/", "/healthz", "/topology") or "?" in path:
        raise UsageError(f"web_telemetry_path {_shown(path)}: expected an absolute path other "
                         "than /, /healthz and /topology")
    seen: dict[str, str] = {}
    for label in config.docker_labels:
        name = container_label_name(label)
        if name in seen and seen[name] != label:
            raise UsageError(f"docker labels '{seen[name]}' and '{label}' both export as {name}")
        seen[name] = label
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
