"""The Grafana dashboard names only metrics the services export.

Every PromQL expression in ``deploy/grafana/clawql-secrets.json`` (panel
targets and query variables) is tokenised; each metric name it uses must be a
sample name that the gateway's, the audit shipper's or the certificate
renewer's metrics produce when scraped. The exported names come from the
services' own metric objects, driven once in fresh registries (no server), so
renaming a metric without updating the dashboard fails here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from clawql_secrets.audit.checkpoint import Checkpoint
from clawql_secrets.audit.metrics import ShipperMetrics
from clawql_secrets.audit.metrics import registry_for as shipper_registry
from clawql_secrets.certs.metrics import CertsMetrics
from clawql_secrets.certs.metrics import registry_for as certs_registry
from clawql_secrets.gateway.metrics import Metrics as GatewayMetrics

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "clawql-secrets.json"

# PromQL functions, aggregations, keywords and Grafana variable functions: never metric names.
_NOT_METRIC_WORDS = """
    abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes
    clamp clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year
    days_in_month deg delta deriv exp floor histogram_avg histogram_count histogram_fraction
    histogram_quantile histogram_stddev histogram_stdvar histogram_sum holt_winters hour idelta
    increase irate label_join label_replace last_over_time ln log10 log2 mad_over_time
    max_over_time min_over_time minute month pi predict_linear present_over_time
    quantile_over_time rad rate resets round scalar sgn sin sinh sort sort_by_label
    sort_by_label_desc sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time tan tanh
    time timestamp vector year
    sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk
    limit_ratio
    by without on ignoring group_left group_right offset bool and or unless atan2 inf nan
    label_values label_names metrics query_result
"""
_NOT_METRICS = frozenset(_NOT_METRIC_WORDS.split())
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?=\s*(.?))")


def metric_names(expr: str) -> set[str]:
    """Metric names in one PromQL expression (or a Grafana ``label_values`` query)."""
    text = _STRING.sub('""', expr)
    text = _GRAFANA_VAR.sub("1m", text)
    text = _MATCHERS.sub(" ", text)  # label matchers: label names and values, not metrics
    text = _RANGE.sub(" ", text)  # range selectors and subqueries: durations
    text = _GROUPING.sub(" ", text)  # grouping labels
    names: set[str] = set()
    for m in _IDENT.finditer(text):
        word, following = m.group(1), m.group(2)
        if following == "(" or word.lower() in _NOT_METRICS:
            continue
        names.add(word)
    return names


def _label_values_arguments(query: str) -> str:
    """``label_values(metric, label)`` → ``metric`` (the label argument is not a metric)."""
    m = re.fullmatch(r"\s*label_values\s*\((.*),\s*[A-Za-z_]\w*\s*\)\s*", query, re.S)
    return m.group(1) if m else query


def _panels(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in node.get("panels", []):
        yield panel
        yield from _panels(panel)  # rows may nest their panels


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} target {target['refId']}", str(target["expr"])
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            q = var["query"]
            query = q.get("query", "") if isinstance(q, dict) else str(q)
            yield f"variable {var['name']!r}", _label_values_arguments(query)


def _sample_names(registry: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        assert family.samples, f"{family.name} produced no sample: drive it in exported_names()"
        names.update(s.name for s in family.samples)
    return names


def exported_names() -> set[str]:
    """Every sample name the three services' /metrics pages can carry."""
    gw = GatewayMetrics()
    gw.calls.labels("sql.query", "ok").inc()
    gw.latency.labels("sql.query").observe(0.003)
    gw.exchanges.labels("ok").inc()
    gw.session_ends.labels("ended").inc()
    gw.leases.inc()
    gw.leases_revoked.inc()
    gw.anomalies.labels("call_rate").inc()
    gw.revoke_failures.labels("openbao").inc()
    gw.lease_bounds.labels("ok").inc()
    gw.active.set(1)

    shipper = ShipperMetrics(clock=lambda: 1_000.0)
    shipper.appended("openbao-0", 1, kind="entry", redactions=["aws_access_key"])
    shipper.appended("openbao-0", 2, kind="gap")
    shipper.duplicate("openbao-0")
    shipper.error("openbao-0", "store")
    shipper.published("openbao-0", Checkpoint("clawql.local/audit/openbao-0", 2, bytes(32)), 2)
    shipper.witnessed("witness.example/w1", "openbao-0", "cosigned", 2)

    certs = CertsMetrics(clock=lambda: 1_000.0)
    certs.renewed("orders", 1_900.0)
    certs.scheduled("orders", 1_600.0)
    certs.reloaded("orders")
    certs.failed("orders", "issue", "AuthenticationError")

    names: set[str] = set()
    for registry in (gw.registry, shipper_registry(shipper), certs_registry(certs)):
        names |= _sample_names(registry)
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    value: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return value


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("up", {"up"}),
        ("max(foo_total)", {"foo_total"}),
        (
            'sum by (tool, outcome) (rate(a_total{tool=~"sql.*", x!="y"}[$__rate_interval]))',
            {"a_total"},
        ),
        ("histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m])))", {"h_bucket"}),
        ("time() - max without (instance) (ts_seconds) > bool 2 * 60", {"ts_seconds"}),
        ("a / on (job) group_left (stream) b offset 5m", {"a", "b"}),
        ('increase(c[$__range]) and d{le="0.5"} unless e[1h:5m]', {"c", "d", "e"}),
        ('label_replace(m, "dst", "$1", "src", "(.*)")', {"m"}),
        ("rate(ns:metric:rate5m[${__interval}])", {"ns:metric:rate5m"}),
        ("sum(rate(x[1m])) by (tool)", {"x"}),
    ],
)
def test_metric_names_tokeniser(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_exported_names_follow_the_exposition_suffixes() -> None:
    names = exported_names()
    for name in (
        "clawql_gateway_tool_calls_total",
        "clawql_gateway_tool_call_seconds_bucket",
        "clawql_gateway_tool_call_seconds_count",
        "clawql_gateway_active_sessions",
        "clawql_audit_seconds_since_checkpoint",
        "clawql_audit_redactions_total",
        "clawql_certs_seconds_until_expiry",
    ):
        assert name in names
    assert "clawql_gateway_tool_calls" not in names  # a Counter is only scraped with _total


def test_dashboard_is_grafana_json_with_a_prometheus_datasource_variable(
    dashboard: dict[str, Any],
) -> None:
    assert dashboard["uid"] == "clawql-secrets"
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_every_panel_query_names_an_exported_metric(dashboard: dict[str, Any]) -> None:
    exported = exported_names()
    missing: list[str] = []
    for where, expr in dashboard_queries(dashboard):
        names = metric_names(expr)
        assert names, f"{where}: no metric name found in {expr!r}"
        missing += [f"{where}: {name}" for name in sorted(names - exported)]
    assert not missing, "metrics no service exports:\n" + "\n".join(missing)


def test_the_dashboard_covers_what_operators_watch(dashboard: dict[str, Any]) -> None:
    used = set().union(*(metric_names(expr) for _, expr in dashboard_queries(dashboard)))
    for name in (
        "clawql_gateway_active_sessions",
        "clawql_gateway_tool_call_seconds_bucket",
        "clawql_gateway_tool_calls_total",
        "clawql_gateway_session_ends_total",
        "clawql_gateway_leases_revoked_total",
        "clawql_gateway_anomalies_total",
        "clawql_audit_seconds_since_checkpoint",
        "clawql_audit_tree_size",
        "clawql_audit_ingest_lag_seconds",
        "clawql_audit_redactions_total",
        "clawql_certs_seconds_until_expiry",
    ):
        assert name in used, f"no panel shows {name}"


def test_a_misspelt_metric_would_be_caught() -> None:
    exported = exported_names()
    expr = "sum(rate(clawql_gateway_tool_calls[5m]))"  # the family name, without _total
    assert metric_names(expr) - exported == {"clawql_gateway_tool_calls"}
