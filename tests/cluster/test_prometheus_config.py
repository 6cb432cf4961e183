"""The local stack's Prometheus: rendered configuration, command line and port (no cluster)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from clawql_secrets.cluster import prometheus
from clawql_secrets.cluster.layout import StackSettings
from clawql_secrets.errors import ConfigError

PROMTOOL = shutil.which("promtool")


def test_config_scrapes_the_shipper_gateway_and_bridge_and_loads_the_rules(tmp_path: Path) -> None:
    s = StackSettings(data_dir=tmp_path, base_port=30000, bridge_port=30500, host="127.0.0.2")
    doc = yaml.safe_load(prometheus.render_config(s))
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in doc["scrape_configs"]}
    assert jobs == {
        "clawql-audit": ["127.0.0.2:30060"],
        "clawql-gateway": ["127.0.0.2:30070"],
        # The bridge's plain-HTTP metrics listener, not its mTLS seal API (30500).
        "clawql-bridge": ["127.0.0.2:30035"],
    }
    assert doc["rule_files"] == [str(tmp_path / "prometheus" / "clawql-secrets.rules.yml")]
    # A quarter of the local 10 s checkpoint interval at most, for scrapes and rules alike.
    assert doc["global"]["scrape_interval"] == doc["global"]["evaluation_interval"] == "2s"


def test_command_binds_the_stack_host_and_keeps_a_bounded_tsdb_in_the_data_dir(
    tmp_path: Path,
) -> None:
    s = StackSettings(data_dir=tmp_path, base_port=30000, bridge_port=30500)
    argv = prometheus.command(s, "/usr/bin/prometheus")
    assert argv[0] == "/usr/bin/prometheus"
    assert "--web.listen-address=127.0.0.1:30090" in argv
    assert f"--storage.tsdb.path={tmp_path / 'prometheus' / 'data'}" in argv
    assert any(a.startswith("--storage.tsdb.retention.time=") for a in argv)
    assert any(a.startswith("--storage.tsdb.retention.size=") for a in argv)
    assert s.prometheus_addr == "http://127.0.0.1:30090"


@pytest.mark.parametrize("bridge_port", [30090, 30035], ids=["prometheus", "bridge_metrics"])
def test_the_scraped_ports_are_part_of_the_overlap_check(tmp_path: Path, bridge_port: int) -> None:
    with pytest.raises(ConfigError) as err:
        StackSettings(data_dir=tmp_path, base_port=30000, bridge_port=bridge_port)
    assert err.value.fix is not None and "91 free ports" in err.value.fix


@pytest.mark.skipif(
    (shutil.which("prometheus") is None or not StackSettings(Path()).lib_path.is_file())
    and not os.environ.get("CI"),
    reason="Prometheus and SoftHSM2 (installed by scripts/bootstrap.sh)",
)
def test_the_stack_bridge_serves_metrics_where_prometheus_scrapes(tmp_path: Path) -> None:
    """`prepare` writes the bridge's configuration with the port the scrape job names."""
    from clawql_secrets.cluster import stack
    from clawql_secrets.hsm import bridge

    s = StackSettings(data_dir=tmp_path, base_port=30000, bridge_port=30500)
    stack.prepare(s)
    settings = bridge.load_settings(s.bridge_config)
    assert (settings.metrics_host, settings.metrics_port) == ("127.0.0.1", 30035)
    doc = yaml.safe_load(prometheus.config_file(s).read_text())
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in doc["scrape_configs"]}
    assert jobs["clawql-bridge"] == ["127.0.0.1:30035"]


@pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("CI"),
    reason="promtool (Debian's prometheus package, installed by scripts/bootstrap.sh)",
)
def test_installed_files_pass_promtool(tmp_path: Path) -> None:
    assert PROMTOOL is not None, "promtool is missing: scripts/bootstrap.sh installs prometheus"
    s = StackSettings(data_dir=tmp_path)
    prometheus.install(s)
    assert prometheus.rules_file(s).read_text() == prometheus.RULES_SOURCE.read_text()
    out = subprocess.run(
        [str(PROMTOOL), "check", "config", str(prometheus.config_file(s))],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


def test_missing_rules_are_a_config_error_naming_the_file(tmp_path: Path) -> None:
    s = StackSettings(data_dir=tmp_path)
    with pytest.raises(ConfigError) as err:
        prometheus.install(s, rules=tmp_path / "nowhere.yml")
    assert "nowhere.yml" in err.value.message
