"""The service deployment: deploy/cntrace.service passes `systemd-analyze
verify` and `security` (systemd is not PID 1 here, so the unit is checked,
never started), deploy/install.sh installs into a throwaway root, again, and
removes itself, and deploy/cntrace.yml is the daemon's defaults.

The capability measurement (deploy/measure_capabilities.py) takes about ten
minutes with Docker and the testbed, so it is not run here; only its parts
that need neither.  Run it with `deploy/measure_capabilities.py` (all
phases) or `--confirm-only` (the unit's set, ~1 minute), as root.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tracer.daemon import settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "cntrace.service"
INSTALL = DEPLOY / "install.sh"
MEASURE = DEPLOY / "measure_capabilities.py"
needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="needs systemd-analyze (apt-get install systemd)")


def unit_values(key: str, text: str | None = None) -> list[str]:
    text = UNIT.read_text() if text is None else text
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at a cntrace that exists here:
    verify insists on an executable command."""
    cntrace = Path(sys.executable).parent / "cntrace"
    assert cntrace.exists(), f"{cntrace} missing: run deploy/setup.sh"
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={cntrace}", UNIT.read_text(), flags=re.M)
    copy = tmp_path / "cntrace.service"
    copy.write_text(text)
    return copy


# ------------------------------------------------------------------ the unit

@needs_systemd_analyze
def test_unit_verifies_clean(tmp_path):
    result = subprocess.run(["systemd-analyze", "verify", str(unit_copy(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout + result.stderr == ""


@needs_systemd_analyze
def test_unit_exposure_is_at_most_5():
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(UNIT)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for cntrace\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= 5.0


def test_unit_runs_the_daemon_with_the_measured_capabilities():
    """The unit's capabilities are the set deploy/CAPABILITIES.md measured."""
    [exec_start] = unit_values("ExecStart")
    assert exec_start == "/opt/cntrace/venv/bin/cntrace daemon --config /etc/cntrace/cntrace.yml"
    [bounding] = unit_values("CapabilityBoundingSet")
    [ambient] = unit_values("AmbientCapabilities")
    assert bounding == ambient
    measured = re.search(r"^Minimal set: `(.+)`$", (DEPLOY / "CAPABILITIES.md").read_text(),
                         flags=re.M)
    assert measured, "deploy/CAPABILITIES.md states no minimal set"
    assert set(bounding.split()) == set(measured[1].split())


def test_default_config_is_the_daemons_defaults(tmp_path):
    """Uncommented, every key of deploy/cntrace.yml gives the built-in default,
    so the shipped file documents the daemon and changes nothing."""
    text = (DEPLOY / "cntrace.yml").read_text()
    assert settings.load_config(_args(DEPLOY / "cntrace.yml"), environ={}) == settings.Config()
    keys = re.findall(r"^#(\w+): ", text, flags=re.M)
    uncommented = tmp_path / "cntrace.yml"
    uncommented.write_text(re.sub(r"^#(\w+: )", r"\1", text, flags=re.M))
    config = settings.load_config(_args(uncommented), environ={})
    assert sorted(keys) == sorted(f.name for f in settings.fields(settings.Config))
    assert config == settings.Config(web_config_file="/etc/cntrace/web.yml")


def _args(config: Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    return parser.parse_args(["--config", str(config)])


# --------------------------------------------------------------- install.sh

def install(root: Path, *options: str) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", str(INSTALL), "--root", str(root), *options],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def snapshot(root: Path) -> dict[str, str]:
    """Every file and link outside the venv, with its content or target."""
    found = {}
    for path in sorted(root.rglob("*")):
        if "opt/cntrace/venv/" in str(path) or path.is_dir() and not path.is_symlink():
            continue
        rel = str(path.relative_to(root))
        found[rel] = (f"-> {os.readlink(path)}" if path.is_symlink()
                      else hashlib.sha256(path.read_bytes()).hexdigest())
    return found


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    if not Path("/usr/bin/python3").exists():
        pytest.skip("needs Debian's /usr/bin/python3 (python3-venv)")
    root = tmp_path_factory.mktemp("root")
    install(root)
    return root


def test_install_puts_each_file_in_place(installed):
    root = installed
    assert (root / "etc/systemd/system/cntrace.service").read_text() == UNIT.read_text()
    assert (root / "etc/cntrace/cntrace.yml").read_text() == \
        (DEPLOY / "cntrace.yml").read_text()
    assert set(snapshot(root)) == {"etc/systemd/system/cntrace.service",
                                   "etc/cntrace/cntrace.yml",
                                   "usr/local/bin/cntrace", "usr/local/bin/trace-ping"}
    for command in ("cntrace", "trace-ping"):
        link = root / "usr/local/bin" / command
        assert not os.readlink(link).startswith("/")   # resolves in ROOT and in /
        assert link.resolve() == (root / "opt/cntrace/venv/bin" / command).resolve()
    version = subprocess.run([root / "usr/local/bin/cntrace", "--version"],
                             capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == "cntrace 0.1.0"


def test_installed_package_carries_its_bpf_programs(installed):
    """Not from the checkout: the installed loader compiles its own copy."""
    python = installed / "opt/cntrace/venv/bin/python"
    result = subprocess.run([python, "-c",
                             "from tracer.kernel import loader; print(loader.BPF_DIR)"],
                            capture_output=True, text=True, cwd="/", timeout=60)
    bpf_dir = Path(result.stdout.strip())
    assert bpf_dir.is_relative_to(installed / "opt/cntrace/venv")
    assert {p.name for p in bpf_dir.iterdir()} == {p.name for p in (REPO / "bpf").iterdir()}


def test_reinstall_changes_nothing_and_keeps_a_users_config(installed):
    config = installed / "etc/cntrace/cntrace.yml"
    config.write_text("log_level: debug\n")
    before = snapshot(installed)
    result = install(installed)
    assert snapshot(installed) == before
    assert "keeping the existing" in result.stderr
    assert config.read_text() == "log_level: debug\n"


def test_uninstall_removes_everything_but_a_changed_config(tmp_path):
    install(tmp_path)
    (tmp_path / "etc/cntrace/cntrace.yml").write_text("log_level: debug\n")
    result = install(tmp_path, "--uninstall")
    assert "differs from the shipped default" in result.stderr
    assert snapshot(tmp_path) == {"etc/cntrace/cntrace.yml": hashlib.sha256(
        b"log_level: debug\n").hexdigest()}
    assert not (tmp_path / "opt/cntrace").exists()
    (tmp_path / "etc/cntrace/cntrace.yml").write_text((DEPLOY / "cntrace.yml").read_text())
    install(tmp_path, "--uninstall")   # again: nothing left to remove, and no error
    assert snapshot(tmp_path) == {}


# ------------------------------------------------ the capability measurement

def load_measure():
    """deploy/ is no package: the script, imported by path (registered
    first, as its dataclasses look their module up)."""
    if "measure_capabilities" not in sys.modules:
        spec = importlib.util.spec_from_file_location("measure_capabilities", MEASURE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["measure_capabilities"]


def test_measure_script_is_runnable():
    assert os.access(MEASURE, os.X_OK)
    result = subprocess.run([MEASURE, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--confirm-only" in result.stdout


def test_measure_reads_the_units_capabilities():
    measure = load_measure()
    [bounding] = unit_values("CapabilityBoundingSet")
    assert {measure.cap_name(c) for c in measure.unit_capabilities()} == set(bounding.split())


@pytest.mark.parametrize("scrape, problems", [
    ('cntrace_hook_attached{hook="tc:container-veths"} 1.0\ncntrace_containers 3.0\n'
     "cntrace_attribution_failures_total 0.0\ncntrace_docker_connected 1.0\n"
     "cntrace_conntrack_entries 12.0\ncntrace_conntrack_entries_limit 262144.0\n", []),
    ('cntrace_hook_attached{hook="netfilter:ipv4:POSTROUTING"} 0.0\ncntrace_containers 1.0\n'
     "cntrace_attribution_failures_total 2.0\ncntrace_docker_connected 0.0\n",
     ["not attached: netfilter:ipv4:POSTROUTING", "counts 1 of 3 containers",
      "2 attribution failures (no veth attachment or slot)", "docker not connected",
      "no cntrace_conntrack_entries", "no cntrace_conntrack_entries_limit"]),
])
def test_measure_judges_a_scrape(scrape, problems):
    measure = load_measure()
    assert measure.judge(measure.parse_metrics(scrape), expected=3) == problems
