"""The daemon's settings: one table (Config) with its defaults, the flags
that set them, and the precedence flags > CNTRACE_* environment > --config
YAML > defaults, all validated before anything is attached.  Kept apart from
tracer.daemon.main so that building the command line imports nothing heavy."""

from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import MISSING, dataclass, field, fields

from tracer.errors import UsageError, one_line
from tracer.stream import filters

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


LOG_LEVELS = ("debug", "info", "warning", "error")


def _setting(default, flag: str, meaning: str, metavar: str | None = None,
             choices: tuple[str, ...] = ()):
    """A row of the settings table: its default, the flag that sets it, and
    what it means (the flag's help and README.md's settings table).  Its
    CNTRACE_* variable and YAML key come from the field's name."""
    metadata = {"flag": flag, "meaning": meaning, "metavar": metavar, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=list, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class Config:
    """The settings table: each field is a setting, its metadata the rest of
    the row (tracer/daemon/settings.py add_arguments builds the flags from it)."""

    web_listen_address: str = _setting(
        "127.0.0.1:9476", "--web.listen-address", "where to serve the landing page, the "
        "metrics, /healthz and /topology; 0.0.0.0:9476 exposes them", "ADDR:PORT")
    web_telemetry_path: str = _setting(
        "/metrics", "--web.telemetry-path", "where the metrics are served", "PATH")
    web_config_file: str | None = _setting(
        None, "--web.config.file", "TLS and basic auth, in the Prometheus exporter-toolkit "
        "format", "FILE")
    flow_table_size: int = _setting(65536, "--flow-table-size", "LRU flow table entries")
    flow_idle_seconds: float = _setting(
        60.0, "--flow-idle-seconds", "a flow counts as active for this long after its last "
        "packet")
    reconcile_seconds: float = _setting(
        30.0, "--reconcile-seconds", "full resync with Docker at least this often")
    sample_seconds: float = _setting(
        5.0, "--sample-seconds", "how often the flow and conntrack tables are walked")
    ringbuf_pages: int = _setting(
        64, "--ringbuf-pages", "event ring buffer pages, a power of 2 (the daemon streams "
        "drops only)")
    log_level: str = _setting("info", "--log-level", "debug, info, warning or error",
                              choices=LOG_LEVELS)
    docker_labels: list[str] = _setting(
        [], "--docker.label", "a container label to export on every per-container series as "
        "container_label_NAME; repeatable (comma-separated in CNTRACE_DOCKER_LABELS)", "NAME")
    collector_traffic: bool = _setting(True, "--collector.traffic", COLLECTORS["traffic"])
    collector_peers: bool = _setting(True, "--collector.peers", COLLECTORS["peers"])
    collector_flows: bool = _setting(True, "--collector.flows", COLLECTORS["flows"])
    collector_nat: bool = _setting(True, "--collector.nat", COLLECTORS["nat"])
    collector_drops: bool = _setting(True, "--collector.drops", COLLECTORS["drops"])
    collector_conntrack: bool = _setting(True, "--collector.conntrack",
                                         COLLECTORS["conntrack"])

    @property
    def collectors(self) -> frozenset[str]:
        return frozenset(n for n in COLLECTORS if getattr(self, f"collector_{n}"))


def kind(setting) -> str:
    """A setting's type as _coerce reads it: "str | None" is a str, or unset."""
    return str(setting.type).split(" |")[0]


def container_label_name(docker_label: str) -> str:
    """A Docker label as a Prometheus label name, the cAdvisor way:
    container_label_ and the label with every other character an underscore."""
    return "container_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", docker_label)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--config, then one flag per row of the settings table."""
    parser.add_argument("--config", metavar="FILE", help="YAML file with the settings below "
                        "(keys with underscores, e.g. web_listen_address)")
    for setting in fields(Config):
        meta = setting.metadata
        default = setting.default if setting.default_factory is MISSING \
            else setting.default_factory()
        options = {"dest": setting.name, "default": None,
                   "help": f"{meta['meaning']} (default {_default_text(default)})"}
        if kind(setting) == "bool":
            options["action"] = argparse.BooleanOptionalAction
        elif kind(setting) == "list[str]":
            options["action"] = "append"
        elif kind(setting) in ("int", "float"):
            options["type"] = int if kind(setting) == "int" else float
        if meta["metavar"]:
            options["metavar"] = meta["metavar"]
        if meta["choices"]:
            options["choices"] = meta["choices"]
        parser.add_argument(meta["flag"], **options)


def readme_table() -> str:
    """README.md's settings table, rendered from the settings table (a unit
    test keeps the README equal to it); the collectors share one row."""
    rows = ["| setting | flag | CNTRACE_* variable | default | meaning |", "|---|---|---|---|---|"]
    for setting in fields(Config):
        name, flag, meaning = setting.name, setting.metadata["flag"], setting.metadata["meaning"]
        if name.startswith("collector_"):
            if name != f"collector_{next(iter(COLLECTORS))}":
                continue
            name, flag = "collector_<name>", "--collector.<name>, --no-collector.<name>"
            meaning = f"one of {', '.join(COLLECTORS)}: see \"Collectors\""
        default = setting.default if setting.default_factory is MISSING \
            else setting.default_factory()
        rows.append(f"| `{name}` | `{flag}` | `CNTRACE_{name.upper()}` | "
                    f"{_default_text(default)} | {meaning} |")
    return "\n".join(rows)


def _default_text(default) -> str:
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return "none" if default in (None, []) else str(default)


def _shown(value) -> str:
    """A value echoed in an error: quoted, cut to 40 characters, one line."""
    return f"'{one_line(str(value)[:40])}'"


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
    known = {f.name: kind(f) for f in fields(Config)}
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
        setattr(config, name, _coerce(name, value, known[name]))
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
    if config.log_level not in LOG_LEVELS:
        raise UsageError(f"log_level '{config.log_level}': expected debug, info, warning "
                         "or error")
