"""The shipped Prometheus alert rules load, and the alerts fire when they should (promtool)."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

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


def _promtool_test(tmp_path: Path, body: str) -> None:
    assert PROMTOOL is not None
    test = tmp_path / "test.yml"
    test.write_text(f"rule_files: [{RULES}]\n{textwrap.dedent(body)}")
    out = subprocess.run([PROMTOOL, "test", "rules", str(test)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_stalled_stream_pages_within_two_checkpoint_intervals(tmp_path: Path) -> None:
    """Issue 14: the last publication at 0 s with a 60 s interval; the shipper reports the
    stream stalled from 90 s (1.5 intervals); scraped and evaluated every 15 s, the alert
    fires before 120 s (two intervals)."""
    _promtool_test(
        tmp_path,
        """\
        evaluation_interval: 15s
        tests:
          - interval: 15s
            input_series:
              - series: clawql_audit_stream_stalled{stream="openbao-0",instance="s0",job="audit"}
                values: 0 0 0 0 0 0 1 1 1 1 1
              - series: clawql_audit_stream_stalled{stream="openbao-1",instance="s1",job="audit"}
                values: 0 0 0 0 0 0 0 0 0 0 0
            alert_rule_test:
              - eval_time: 75s
                alertname: ClawQLAuditStreamStalled
                exp_alerts: []
              - eval_time: 105s
                alertname: ClawQLAuditStreamStalled
                exp_alerts:
                  - exp_labels: {severity: page, stream: openbao-0}
                    exp_annotations:
                      summary: >-
                        audit stream openbao-0 is stalled: nothing shipped for 1.5
                        checkpoint intervals
                      runbook: docs/operations.md#10-monitoring-and-alerts
        """,
    )


@needs_promtool
def test_failing_stream_warns_after_a_minute(tmp_path: Path) -> None:
    _promtool_test(
        tmp_path,
        """\
        evaluation_interval: 15s
        tests:
          - interval: 15s
            input_series:
              - series: clawql_audit_stream_state{stream="n1",state="failing",instance="s",job="a"}
                values: 0 1 1 1 1 1 1 1 1
              - series: clawql_audit_stream_state{stream="n1",state="ok",instance="s",job="a"}
                values: 1 0 0 0 0 0 0 0 0
            alert_rule_test:
              - eval_time: 45s
                alertname: ClawQLAuditStreamFailing
                exp_alerts: []
              - eval_time: 90s
                alertname: ClawQLAuditStreamFailing
                exp_alerts:
                  - exp_labels: {severity: warn, stream: n1}
                    exp_annotations:
                      summary: >-
                        audit stream n1 is failing; `clawql-secrets status` shows the
                        last error
                      runbook: docs/operations.md#10-monitoring-and-alerts
        """,
    )


@needs_promtool
def test_lagging_is_measured_in_checkpoint_intervals_and_yields_to_a_stall(
    tmp_path: Path,
) -> None:
    """Three intervals behind for 5 minutes warns (10 s local interval: 30 s of lag); a
    stalled stream pages instead of also warning."""
    _promtool_test(
        tmp_path,
        """\
        evaluation_interval: 1m
        tests:
          - interval: 1m
            input_series:
              - series: clawql_audit_lag_seconds{stream="n1",instance="s",job="a"}
                values: 30x10
              - series: clawql_audit_checkpoint_interval_seconds{stream="n1",instance="s",job="a"}
                values: 10x10
              - series: clawql_audit_stream_stalled{stream="n1",instance="s",job="a"}
                values: 0x10
              - series: clawql_audit_lag_seconds{stream="n2",instance="s",job="a"}
                values: 30x10
              - series: clawql_audit_checkpoint_interval_seconds{stream="n2",instance="s",job="a"}
                values: 10x10
              - series: clawql_audit_stream_stalled{stream="n2",instance="s",job="a"}
                values: 1x10
              - series: clawql_audit_lag_seconds{stream="n3",instance="s",job="a"}
                values: 30x10
              - series: clawql_audit_checkpoint_interval_seconds{stream="n3",instance="s",job="a"}
                values: 60x10
              - series: clawql_audit_stream_stalled{stream="n3",instance="s",job="a"}
                values: 0x10
            alert_rule_test:
              - eval_time: 3m
                alertname: ClawQLAuditStreamLagging
                exp_alerts: []
              - eval_time: 6m
                alertname: ClawQLAuditStreamLagging
                exp_alerts:
                  - exp_labels: {severity: warn, stream: n1}
                    exp_annotations:
                      summary: "audit stream n1 is 3 checkpoint intervals behind"
        """,
    )


def test_every_rule_names_a_metric_the_services_export() -> None:
    """A renamed metric must not silence an alert (the dashboard has the same check)."""
    from clawql_secrets.audit.metrics import ShipperMetrics, registry_for
    from clawql_secrets.audit.stream_status import LastError, StreamStatus
    from clawql_secrets.hsm.bridge import BridgeMetrics
    from tests.test_dashboard import exported_names, metric_names

    shipper = ShipperMetrics(clock=lambda: 1_000.0)
    shipper.stream_status(
        StreamStatus.measured(
            stream="n1",
            pid=1,
            now=1_000.0,
            interval_seconds=10.0,
            tree_size=1,
            published_size=1,
            pending_entries=0,
            unread_lines=0,
            unread_exact=True,
            waiting_since=None,
            reading_behind=False,
            error_active=True,
            last_error=LastError("store", "down", 999.0),
            last_checkpoint_at=None,
            last_progress_at=None,
        )
    )
    exported = exported_names() | {"up"}
    exported |= {s.name for f in registry_for(shipper).collect() for s in f.samples}
    bridge = BridgeMetrics("spiffe://clawql.local/openbao/", probe=lambda: 1)
    bridge.sealed("decrypt", "ok", "n1")
    bridge.timed("decrypt", lambda: None)
    exported |= {s.name for f in bridge.registry.collect() for s in f.samples}
    doc = yaml.safe_load(RULES.read_text())
    used = {
        (rule["alert"], name)
        for group in doc["groups"]
        for rule in group["rules"]
        for name in metric_names(str(rule["expr"]))
    }
    assert {(alert, name) for alert, name in used if name not in exported} == set()


@needs_promtool
def test_an_idle_stream_is_not_a_stale_checkpoint(tmp_path: Path) -> None:
    """No new entries, no new checkpoint: that is not an outage (ingest streams, without a
    lag series, keep the plain age test)."""
    _promtool_test(
        tmp_path,
        """\
        evaluation_interval: 1m
        tests:
          - interval: 1m
            input_series:
              - series: clawql_audit_seconds_since_checkpoint{stream="idle",instance="s",job="a"}
                values: 0+60x10
              - series: clawql_audit_lag_entries{stream="idle",instance="s",job="a"}
                values: 0x10
              - series: clawql_audit_seconds_since_checkpoint{stream="stuck",instance="s",job="a"}
                values: 0+60x10
              - series: clawql_audit_lag_entries{stream="stuck",instance="s",job="a"}
                values: 5x10
              - series: clawql_audit_seconds_since_checkpoint{stream="ingest",instance="s",job="a"}
                values: 0+60x10
            alert_rule_test:
              - eval_time: 6m
                alertname: ClawQLAuditCheckpointStale
                exp_alerts:
                  - exp_labels: {severity: page, stream: stuck}
                  - exp_labels: {severity: page, stream: ingest}
        """,
    )


# -- the HSM bridge ----------------------------------------------------------------------


@needs_promtool
def test_bridge_down_pages_after_a_minute(tmp_path: Path) -> None:
    """Scraped every 15 s; the bridge stops answering at 30 s. Another job's outage is not
    the bridge's."""
    _promtool_test(
        tmp_path,
        """\
        evaluation_interval: 15s
        tests:
          - interval: 15s
            input_series:
              - series: up{job="clawql-bridge",instance="127.0.0.1:18235"}
                values: 1 1 0 0 0 0 0 0 0 0
              - series: up{job="clawql-gateway",instance="127.0.0.1:18270"}
                values: 0 0 0 0 0 0 0 0 0 0
            alert_rule_test:
              - eval_time: 75s
                alertname: ClawQLBridgeDown
                exp_alerts: []
              - eval_time: 105s
                alertname: ClawQLBridgeDown
                exp_alerts:
                  - exp_labels:
                      {severity: page, job: clawql-bridge, instance: "127.0.0.1:18235"}
                    exp_annotations:
                      summary: >-
                        HSM bridge 127.0.0.1:18235 is down: OpenBao nodes that restart stay
                        sealed
                      runbook: docs/operations.md#10-monitoring-and-alerts
        """,
    )


@needs_promtool
def test_failing_seal_operations_page_naming_the_node_and_the_outcome(tmp_path: Path) -> None:
    """n2's unseal decrypt fails from 2m on (OpenBao retries it); n1's successful calls and
    a refused caller are not seal failures. Ten minutes after the last failure it clears."""
    _promtool_test(
        tmp_path,
        """\
        evaluation_interval: 1m
        tests:
          - interval: 1m
            input_series:
              - series: >-
                  clawql_bridge_seal_operations_total{operation="decrypt",outcome="ok",
                  caller="n1",job="b",instance="i"}
                values: 1+1x30
              - series: >-
                  clawql_bridge_seal_operations_total{operation="decrypt",outcome="not_authentic",
                  caller="n2",job="b",instance="i"}
                values: _ _ 1+5x4 21x24
              - series: >-
                  clawql_bridge_refused_requests_total{reason="identity_not_allowed",caller="other",
                  job="b",instance="i"}
                values: 0+1x30
            alert_rule_test:
              - eval_time: 1m
                alertname: ClawQLBridgeSealFailing
                exp_alerts: []
              - eval_time: 4m
                alertname: ClawQLBridgeSealFailing
                exp_alerts:
                  - exp_labels:
                      {severity: page, operation: decrypt, outcome: not_authentic, caller: n2}
                    exp_annotations:
                      summary: "HSM bridge decrypt for node n2 failing: not_authentic"
                      runbook: docs/operations.md#10-monitoring-and-alerts
              - eval_time: 20m
                alertname: ClawQLBridgeSealFailing
                exp_alerts: []
        """,
    )


@needs_promtool
def test_unavailable_token_pages_after_a_minute(tmp_path: Path) -> None:
    _promtool_test(
        tmp_path,
        """\
        evaluation_interval: 15s
        tests:
          - interval: 15s
            input_series:
              - series: clawql_bridge_token_available{job="clawql-bridge",instance="b0"}
                values: 1 1 0 0 0 0 0 0 0 0
              - series: clawql_bridge_token_available{job="clawql-bridge",instance="b1"}
                values: 1 1 1 1 1 1 1 1 1 1
            alert_rule_test:
              - eval_time: 60s
                alertname: ClawQLBridgeTokenUnavailable
                exp_alerts: []
              - eval_time: 105s
                alertname: ClawQLBridgeTokenUnavailable
                exp_alerts:
                  - exp_labels: {severity: page, instance: b0}
                    exp_annotations:
                      summary: "HSM bridge b0 cannot use its PKCS#11 token"
                      runbook: docs/operations.md#10-monitoring-and-alerts
        """,
    )


@needs_promtool
def test_refused_callers_warn_but_wrong_paths_do_not(tmp_path: Path) -> None:
    _promtool_test(
        tmp_path,
        """\
        evaluation_interval: 1m
        tests:
          - interval: 1m
            input_series:
              - series: >-
                  clawql_bridge_refused_requests_total{reason="identity_not_allowed",caller="other",
                  job="b",instance="i"}
                values: 0 0 0 1 1 1
              - series: >-
                  clawql_bridge_refused_requests_total{reason="not_found",caller="n1",
                  job="b",instance="i"}
                values: 0 1 2 3 4 5
            alert_rule_test:
              - eval_time: 2m
                alertname: ClawQLBridgeCallerRefused
                exp_alerts: []
              - eval_time: 4m
                alertname: ClawQLBridgeCallerRefused
                exp_alerts:
                  - exp_labels: {severity: warn, reason: identity_not_allowed}
                    exp_annotations:
                      summary: "HSM bridge refused callers: identity_not_allowed"
        """,
    )


@needs_promtool
def test_a_witness_refusing_pages_and_a_witness_behind_warns(tmp_path: Path) -> None:
    """Issue 14: a refusal (a fork or rollback seen by the witness) pages at once; a
    witness that stays behind the newest checkpoint for 5 minutes warns."""
    _promtool_test(
        tmp_path,
        """\
        evaluation_interval: 15s
        tests:
          - interval: 1m
            input_series:
              - series: >-
                  clawql_audit_witness_submissions_total{stream="n1",witness="w1",outcome="refused",instance="s",job="a"}
                values: 0 0 1 1 1
              - series: >-
                  clawql_audit_witness_lag_entries{stream="n1",witness="w1",instance="s",job="a"}
                values: 0 40 40 40 40 40 40 40 40
              - series: >-
                  clawql_audit_witness_lag_entries{stream="n2",witness="w1",instance="s",job="a"}
                values: 0 40 0 40 0 40 0 40 0
            alert_rule_test:
              - eval_time: 1m
                alertname: ClawQLAuditWitnessRefused
                exp_alerts: []
              - eval_time: 2m
                alertname: ClawQLAuditWitnessRefused
                exp_alerts:
                  - exp_labels: {severity: page, stream: n1, witness: w1}
                    exp_annotations:
                      summary: "witness w1 refused stream n1's checkpoint"
                      runbook: docs/operations.md#4-the-audit-shipper
              - eval_time: 4m
                alertname: ClawQLAuditWitnessBehind
                exp_alerts: []
              - eval_time: 7m
                alertname: ClawQLAuditWitnessBehind
                exp_alerts:
                  - exp_labels: {severity: warn, stream: n1, witness: w1}
                    exp_annotations:
                      summary: >-
                        witness w1 has not cosigned stream n1's newest checkpoint for 5m
                      runbook: docs/operations.md#4-the-audit-shipper
        """,
    )


@needs_promtool
def test_a_frozen_shipper_pages_through_its_failed_scrapes(tmp_path: Path) -> None:
    """Red team: `kill -STOP` on the shipper left only ClawQLAuditShipperDown pending for
    5 minutes (its stalled gauge cannot be scraped). Its failed scrapes page within 2 min."""
    _promtool_test(
        tmp_path,
        """\
        evaluation_interval: 15s
        tests:
          - interval: 15s
            input_series:
              - series: up{job="clawql-audit",instance="127.0.0.1:18260"}
                values: 1 1 0 0 0 0 0 0 0 0 0
            alert_rule_test:
              - eval_time: 45s
                alertname: ClawQLAuditShipperUnreachable
                exp_alerts: []
              - eval_time: 105s
                alertname: ClawQLAuditShipperUnreachable
                exp_alerts:
                  - exp_labels: {severity: page, instance: "127.0.0.1:18260"}
                    exp_annotations:
                      summary: the audit shipper at 127.0.0.1:18260 does not answer scrapes
                      runbook: docs/operations.md#10-monitoring-and-alerts
        """,
    )
