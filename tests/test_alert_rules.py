"""The shipped Prometheus alert rules load, and the revocation alert fires (promtool)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "clawql-secrets.rules.yml"
PROMTOOL = shutil.which("promtool")
# Never skipped in CI, where scripts/bootstrap.sh installs Debian's prometheus package.
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("CI"),
    reason="promtool (Debian's prometheus package, installed by scripts/bootstrap.sh)",
)


@needs_promtool
def test_rules_pass_promtool_check() -> None:
    assert PROMTOOL is not None, "promtool is missing: scripts/bootstrap.sh installs prometheus"
    out = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_revocation_pending_pages_after_five_minutes(tmp_path: Path) -> None:
    """Issue 13: a session whose credentials could not be revoked is loud."""
    assert PROMTOOL is not None
    test = tmp_path / "test.yml"
    test.write_text(
        f"""\
rule_files: [{RULES}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: clawql_gateway_sessions_pending_revocation{{instance="gw-0"}}
        values: 0 0 1 1 1 1 1 1 1 1
    alert_rule_test:
      - eval_time: 4m
        alertname: ClawQLRevocationPending
        exp_alerts: []
      - eval_time: 8m
        alertname: ClawQLRevocationPending
        exp_alerts:
          - exp_labels: {{severity: page}}
            exp_annotations:
              summary: "1 ended session(s) with credentials not yet revoked"
              runbook: docs/operations.md#10-monitoring-and-alerts
"""
    )
    out = subprocess.run([PROMTOOL, "test", "rules", str(test)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
