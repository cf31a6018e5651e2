"""deploy/prometheus and deploy/grafana, checked without root or a server:
promtool validates the scrape configs and rules and runs the rules' unit
tests; the dashboard's queries parse, use only metrics and labels the README
documents, and cover every template variable. tests/integration/
test_dashboard_live.py runs the same queries against a real daemon."""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess

import pytest
import yaml

from tests.dashboard import (
    PROMETHEUS_DIR,
    RULES,
    RULES_TEST,
    SCRAPE_CONFIGS,
    TEMPLATE_VALUES,
    label_values_as_promql,
    labels_used,
    load_dashboard,
    panels,
    queries,
    readme_metrics,
    substitute,
    variable_queries,
)

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="needs `promtool` (apt-get install prometheus)")

ALERTS = {"CntraceDropsRising", "CntraceEventsLost", "CntraceConntrackNearLimit",
          "CntraceNatBindingsHigh", "CntraceFlowTableFull", "CntraceHookNotAttached",
          "CntraceDockerDisconnected", "CntraceTargetDown"}
DOCUMENTATION_NETS = [ipaddress.ip_network(n) for n in
                      ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]


def promtool(*args: str) -> tuple[int, str]:
    # promtool 2.42 prints warnings and failures on stderr: merge them.
    out = subprocess.run(["promtool", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=60)
    return out.returncode, out.stdout


def load_yaml(path) -> dict:
    return yaml.safe_load(path.read_text())


def rules() -> list[dict]:
    (group,) = load_yaml(RULES)["groups"]
    assert group["name"] == "cntrace"
    return group["rules"]


# ------------------------------------------------------------- scrape configs

def test_the_three_scrape_configs_exist():
    assert [p.name for p in SCRAPE_CONFIGS] == [
        "scrape-file-sd.yml", "scrape-static.yml", "scrape-tls.yml"]


@needs_promtool
@pytest.mark.parametrize("path", SCRAPE_CONFIGS, ids=lambda p: p.name)
def test_scrape_config_passes_promtool(path):
    # promtool 2.42 checks that file_sd globs match (a warning otherwise) and
    # validates each matched file; it does not open ca_file or password_file.
    code, output = promtool("check", "config", str(path))
    assert code == 0, output
    assert "WARNING" not in output, output


@pytest.mark.parametrize("path", SCRAPE_CONFIGS, ids=lambda p: p.name)
def test_scrape_config_sets_instance_to_the_host_without_port(path):
    (job,) = load_yaml(path)["scrape_configs"]
    assert job["job_name"].startswith("cntrace")   # CntraceTargetDown: up{job=~"cntrace.*"}
    (rule,) = [r for r in job["relabel_configs"] if r.get("target_label") == "instance"]
    assert rule["source_labels"] == ["__address__"]
    # Prometheus anchors relabel regexes and expands $1 as re.sub does \1.
    regex, replacement = f"^(?:{rule['regex']})$", rule["replacement"].replace("$1", r"\1")
    for address, host in [("192.0.2.10:9476", "192.0.2.10"),
                          ("docker-host-1.example.net:9476", "docker-host-1.example.net"),
                          ("[2001:db8::1]:9476", "[2001:db8::1]")]:
        assert re.sub(regex, replacement, address) == host


def test_tls_scrape_config_keeps_secrets_in_files():
    (job,) = load_yaml(PROMETHEUS_DIR / "scrape-tls.yml")["scrape_configs"]
    assert job["scheme"] == "https"
    assert job["tls_config"]["ca_file"].startswith("/")
    assert set(job["basic_auth"]) == {"username", "password_file"}


def test_file_sd_example_lists_only_documentation_addresses():
    groups = json.loads((PROMETHEUS_DIR / "targets" / "cntrace-hosts.json").read_text())
    targets = [t for group in groups for t in group["targets"]]
    assert targets
    for target in targets:
        host, port = target.rsplit(":", 1)
        assert port == "9476"
        assert any(ipaddress.ip_address(host) in net for net in DOCUMENTATION_NETS), target


# ---------------------------------------------------------------------- rules

@needs_promtool
def test_rules_pass_promtool_check():
    code, output = promtool("check", "rules", str(RULES))
    assert code == 0, output
    assert f"SUCCESS: {len(ALERTS)} rules found" in output


def test_every_alert_has_for_severity_summary_and_description():
    assert {r["alert"] for r in rules()} == ALERTS
    for rule in rules():
        assert rule["for"], rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert set(rule["annotations"]) >= {"summary", "description"}, rule["alert"]


@needs_promtool
def test_rules_unit_tests_pass():
    code, output = promtool("test", "rules", str(RULES_TEST))
    assert code == 0, output


def test_every_alert_is_tested_firing_and_quiet():
    firing, quiet = set(), set()
    for case in load_yaml(RULES_TEST)["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == ALERTS and quiet == ALERTS


# ------------------------------------------------------------------ dashboard

def test_dashboard_variables():
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("instance", "project", "service", "container"):
        variable = variables[name]
        assert variable["type"] == "query" and variable["datasource"]["uid"] == "${datasource}"
        assert variable["includeAll"] and variable["allValue"] == ".*"
    assert set(variable_queries(dashboard)) == {"instance", "project", "service", "container"}


def test_every_panel_queries_prometheus_with_expr():
    dashboard = load_dashboard()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), (panel["title"], target["refId"])
            assert target.get("datasource", panel["datasource"]) == panel["datasource"]


def test_dashboard_panels_do_not_overlap():
    cells = {}
    for panel in load_dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_dashboard_covers_traffic_peers_nat_drops_conntrack_and_health():
    used = {m for q in queries(load_dashboard()) for m in re.findall(r"cntrace_\w+", q.expr)}
    assert used >= {
        "cntrace_container_packets_total", "cntrace_container_bytes_total",
        "cntrace_container_peer_bytes_total", "cntrace_container_snat_packets_total",
        "cntrace_container_dnat_packets_total", "cntrace_container_nat_bindings",
        "cntrace_container_drops_total", "cntrace_conntrack_entries",
        "cntrace_conntrack_entries_limit", "cntrace_hook_attached", "cntrace_events_lost_total",
        "cntrace_map_entries", "cntrace_map_capacity", "cntrace_docker_connected",
        "cntrace_build_info"}


def _all_expressions() -> list[tuple[str, str]]:
    dashboard = load_dashboard()
    found = [(f"dashboard {q.id}", q.expr) for q in queries(dashboard)]
    found += [(f"variable {name}", label_values_as_promql(query)[0])
              for name, query in variable_queries(dashboard).items()]
    found += [(f"rule {r['alert']}", r["expr"]) for r in rules()]
    return found


def test_metrics_and_labels_are_the_readme_documents():
    documented = readme_metrics()
    assert len(documented) >= 20, "the README's metrics table did not parse"
    for where, expr in _all_expressions():
        names = set(re.findall(r"cntrace_\w+", expr))
        unknown = names - set(documented)
        assert not unknown, f"{where}: {sorted(unknown)} not in the README's metrics table"
        allowed = {"instance", "job"}.union(*(documented[n] for n in names))
        assert labels_used(expr) <= allowed, f"{where}: {labels_used(expr) - allowed}"


@needs_promtool
def test_dashboard_queries_parse(tmp_path):
    """promtool parses PromQL offline when it is a rule: one recording rule
    per query, with Grafana's variables replaced as the live test does."""
    dashboard = load_dashboard()
    exprs = [substitute(q.expr, TEMPLATE_VALUES) for q in queries(dashboard)]
    exprs += [substitute(label_values_as_promql(query)[0], TEMPLATE_VALUES)
              for query in variable_queries(dashboard).values()]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(exprs)]}]}))
    code, output = promtool("check", "rules", str(path))
    assert code == 0, output


def test_substitute_refuses_an_unknown_variable():
    assert substitute('x{c=~"$container"}[${__rate_interval}]', TEMPLATE_VALUES) == \
        'x{c=~"cntrace-test-.*"}[1m]'
    with pytest.raises(KeyError, match=r"\$node"):
        substitute('x{n="$node"}', TEMPLATE_VALUES)
