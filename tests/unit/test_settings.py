"""The daemon's settings: collectors, Docker labels and the telemetry path,
from flags, CNTRACE_* variables and the YAML file, validated."""

import argparse
from pathlib import Path

import pytest

from tracer.daemon import settings
from tracer.errors import UsageError

README = Path(__file__).resolve().parents[2] / "README.md"


def config(argv=(), environ=None, yaml_text=None, tmp_path=None):
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    args = parser.parse_args(list(argv))
    if yaml_text is not None:
        path = tmp_path / "cntrace.yml"
        path.write_text(yaml_text)
        args.config = str(path)
    return settings.load_config(args, environ or {})


def test_every_collector_is_on_by_default():
    assert config().collectors == frozenset(settings.COLLECTORS)


def test_collectors_from_flags_environment_and_file(tmp_path):
    assert "drops" not in config(["--no-collector.drops"]).collectors
    assert "peers" not in config(environ={"CNTRACE_COLLECTOR_PEERS": "false"}).collectors
    from_file = config(yaml_text="collector_nat: false\ncollector_flows: no\n",
                       tmp_path=tmp_path)
    assert from_file.collectors == frozenset(settings.COLLECTORS) - {"nat", "flows"}
    # the flag wins over the environment, which wins over the file
    assert "nat" in config(["--collector.nat"], {"CNTRACE_COLLECTOR_NAT": "0"}).collectors


def test_a_collector_setting_that_is_not_a_boolean_is_refused():
    with pytest.raises(UsageError, match="collector_nat: 'maybe' is not true or false"):
        config(environ={"CNTRACE_COLLECTOR_NAT": "maybe"})


def test_docker_labels_from_flags_environment_and_file(tmp_path):
    assert config(["--docker.label", "a.b", "--docker.label", "c"]).docker_labels == ["a.b", "c"]
    assert config(environ={"CNTRACE_DOCKER_LABELS": "a.b, c"}).docker_labels == ["a.b", "c"]
    assert config(yaml_text="docker_labels: [team, tier]\n",
                  tmp_path=tmp_path).docker_labels == ["team", "tier"]
    with pytest.raises(UsageError, match="expected a list"):
        config(yaml_text="docker_labels: {a: 1}\n", tmp_path=tmp_path)


@pytest.mark.parametrize("label, name", [
    ("com.docker.compose.project", "container_label_com_docker_compose_project"),
    ("team", "container_label_team"),
    ("a-b/c d", "container_label_a_b_c_d"),
])
def test_labels_are_named_the_cadvisor_way(label, name):
    assert settings.container_label_name(label) == name


def test_two_labels_that_would_export_as_one_name_are_refused():
    with pytest.raises(UsageError, match="both export as container_label_a_b"):
        config(["--docker.label", "a.b", "--docker.label", "a-b"])


@pytest.mark.parametrize("path", ["metrics", "/", "/healthz", "/topology", "/m?x=1", ""])
def test_a_telemetry_path_that_cannot_be_served_is_refused(path):
    with pytest.raises(UsageError, match="web_telemetry_path"):
        config(["--web.telemetry-path", path])


def test_the_telemetry_path_moves():
    assert config(["--web.telemetry-path", "/cntrace/metrics"]).web_telemetry_path == \
        "/cntrace/metrics"


def test_the_readme_settings_table_is_the_settings_table():
    """One table drives flags, environment, YAML keys, defaults and the
    README; regenerate the README's with settings.readme_table()."""
    assert settings.readme_table() in README.read_text()


def test_every_setting_has_a_flag_and_every_flag_a_setting():
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    dests = {action.dest for action in parser._actions} - {"help", "config"}
    assert dests == {f.name for f in settings.fields(settings.Config)}
    for field in settings.fields(settings.Config):
        args = parser.parse_args([])
        assert getattr(args, field.name) is None   # unset: the environment or file decides
