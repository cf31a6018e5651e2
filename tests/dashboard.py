"""The Grafana dashboard and Prometheus assets under deploy/, as the tests see
them: every PromQL query the dashboard sends, with Grafana's template
variables replaced the way Grafana would, and the metric names the README's
metrics table defines."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "cntrace-dashboard.json"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "cntrace-rules.yml"
RULES_TEST = PROMETHEUS_DIR / "cntrace-rules.test.yml"
SCRAPE_CONFIGS = sorted(PROMETHEUS_DIR.glob("scrape-*.yml"))
README = ROOT / "README.md"

# What the tests put in place of each template variable: every testbed
# container, every host, and Grafana's intervals at a 1 s scrape interval.
TEMPLATE_VALUES = {"container": "cntrace-test-.*", "instance": ".*", "project": ".*",
                   "service": ".*", "__rate_interval": "1m", "__interval": "15s"}
# $name, ${name} and ${name:format}; Grafana's own ($__rate_interval) included.
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_MATCHER_LABEL = re.compile(r'(\w+)\s*(?:=~|!~|!=|=)\s*"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_LABEL_VALUES = re.compile(r"^label_values\((.+),\s*(\w+)\)$")


@dataclass(frozen=True)
class Query:
    panel: str
    ref: str
    expr: str

    @property
    def id(self) -> str:
        return f"{self.panel}/{self.ref}"


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict) -> list[dict]:
    """Every panel but rows, including those nested in collapsed rows."""
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def queries(dashboard: dict) -> list[Query]:
    return [Query(p["title"], t["refId"], t["expr"]) for p in panels(dashboard)
            for t in p["targets"]]


def variable_queries(dashboard: dict) -> dict[str, str]:
    """name -> query of each `query` template variable."""
    return {v["name"]: v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            for v in dashboard["templating"]["list"] if v["type"] == "query"}


def label_values_as_promql(query: str) -> tuple[str, str]:
    """`label_values(SELECTOR, LABEL)` -> (a PromQL query giving one series per
    value, LABEL): what Grafana asks Prometheus's series API, as a query."""
    match = _LABEL_VALUES.match(query.strip())
    if not match:
        raise ValueError(f"not a label_values(selector, label) query: {query}")
    selector, label = match.groups()
    return f"group by ({label}) ({selector})", label


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace template variables; one that `values` does not name is an error,
    so a new dashboard variable cannot slip past the tests unreplaced."""
    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"no test value for template variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


# The README's metrics table writes the labels of every per-container series
# as `container*` (those of tracer/daemon/collector.py CONTAINER_LABELS).
CONTAINER_IDENTITY = "container*"
CONTAINER_IDENTITY_LABELS = ("container", "compose_project", "compose_service")


def readme_metrics() -> dict[str, set[str]]:
    """metric name -> its labels, from the README's metrics table."""
    lines = README.read_text().splitlines()
    start = lines.index("#### Metrics")
    metrics = {}
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`cntrace_"):
            labels = {label for label in re.split(r"[,\s]+", cells[2]) if label}
            if CONTAINER_IDENTITY in labels:
                labels = (labels - {CONTAINER_IDENTITY}) | set(CONTAINER_IDENTITY_LABELS)
            for name in re.findall(r"`(cntrace_\w+)`", cells[0]):
                metrics[name] = labels
    return metrics


def labels_used(expr: str) -> set[str]:
    """Label names in an expression's matchers and by/without/on/ignoring lists."""
    used = set(_MATCHER_LABEL.findall(expr))
    for group in _GROUPING.findall(expr):
        used.update(label.strip() for label in group.split(",") if label.strip())
    return used
