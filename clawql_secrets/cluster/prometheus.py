"""The local stack's Prometheus: its configuration and command line, from the stack's layout.

Debian's ``prometheus`` (installed by ``scripts/bootstrap.sh``) runs as a
supervised child on the stack's loopback address, base + 90. It scrapes the
audit shipper (``/metrics``, base + 60), the gateway (``/metrics`` on its
HTTP port, base + 70) and the HSM bridge (``/metrics``, base + 35), and
evaluates the repository's alert rules
(``deploy/prometheus/clawql-secrets.rules.yml``, copied into the data
directory at every ``up`` so the stack runs the rules it was started with).
Scrapes and rule evaluations every 2 s: the local checkpoint interval is 10 s
and the stall alert must fire within two intervals, which leaves a quarter
interval to each. The TSDB lives in ``<data>/prometheus/data`` with a bounded
retention; it is also the record ``audit verify --prometheus`` holds the log to.

The bridge's metrics have their own plain-HTTP listener (``metrics_port`` in
its configuration): its mTLS seal API listener still answers ``/metrics`` with
404 (``tests/hsm/test_bridge.py``), so scraping needs no seal-client certificate.

``render_config`` and ``command`` are pure; ``install`` writes the files.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from clawql_secrets.cluster.layout import StackSettings
from clawql_secrets.errors import ConfigError

RULES_SOURCE = (
    Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "clawql-secrets.rules.yml"
)
SCRAPE_INTERVAL = "2s"
RETENTION_TIME = "7d"
RETENTION_SIZE = "256MB"
AUDIT_JOB = "clawql-audit"
GATEWAY_JOB = "clawql-gateway"
BRIDGE_JOB = "clawql-bridge"  # the alert rules name it: up{job="clawql-bridge"}


def config_file(settings: StackSettings) -> Path:
    return settings.prometheus_dir / "prometheus.yml"


def rules_file(settings: StackSettings) -> Path:
    return settings.prometheus_dir / "clawql-secrets.rules.yml"


def render_config(settings: StackSettings) -> str:
    """``prometheus.yml`` for the stack rooted at ``settings.data_dir``."""
    s = settings

    def job(name: str, port: int) -> dict[str, Any]:
        return {"job_name": name, "static_configs": [{"targets": [f"{s.host}:{port}"]}]}

    config = {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
        },
        "rule_files": [str(rules_file(s))],
        "scrape_configs": [
            job(AUDIT_JOB, s.audit_metrics_port),
            job(GATEWAY_JOB, s.gateway_port),
            job(BRIDGE_JOB, s.bridge_metrics_port),
        ],
    }
    header = "# Written by `clawql-secrets up` (cluster/prometheus.py); rewritten at every up.\n"
    return header + yaml.safe_dump(config, sort_keys=False)


def binary() -> str:
    path = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(path).is_file():
        raise ConfigError(
            "the local stack needs Prometheus and it is not installed",
            fix="run scripts/bootstrap.sh (it installs Debian's prometheus package)",
        )
    return path


def command(settings: StackSettings, prometheus: str) -> list[str]:
    """The argv the supervisor runs (``prometheus`` is the binary's path)."""
    s = settings
    return [
        prometheus,
        f"--config.file={config_file(s)}",
        f"--storage.tsdb.path={s.prometheus_dir / 'data'}",
        f"--storage.tsdb.retention.time={RETENTION_TIME}",
        f"--storage.tsdb.retention.size={RETENTION_SIZE}",
        f"--web.listen-address={s.host}:{s.prometheus_port}",
        f"--web.external-url={s.prometheus_addr}/",
    ]


def install(settings: StackSettings, rules: Path = RULES_SOURCE) -> None:
    """Write the configuration and copy the alert rules into the data directory."""
    s = settings
    try:
        text = rules.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the alert rules {rules}",
            fix="run the stack from a checkout of the repository (deploy/prometheus/)",
        ) from exc
    try:
        (s.prometheus_dir / "data").mkdir(parents=True, exist_ok=True, mode=0o700)
        rules_file(s).write_text(text, encoding="utf-8")
        config_file(s).write_text(render_config(s), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write Prometheus's files in {s.prometheus_dir}") from exc
