"""ServiceMonitors for what exports metrics, and the alert rules as a PrometheusRule.

The rules are read from ``deploy/prometheus/clawql-secrets.rules.yml`` at
render time, so the PrometheusRule is the file Prometheus and
``tests/test_alert_rules.py`` already check, not a copy that can drift.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from clawql_secrets.cluster.k8s import objects as o
from clawql_secrets.cluster.k8s.spec import GATEWAY, NAME_LABEL, OPENBAO, K8sSpec
from clawql_secrets.errors import ConfigError

# ServiceMonitor name -> (Service selector, port name, component label).
_MONITORS: dict[str, tuple[dict[str, str], str, str]] = {
    "clawql-gateway": ({NAME_LABEL: GATEWAY}, "http", GATEWAY),
    "clawql-audit-shipper": ({"clawql.io/metrics": "audit-shipper"}, "ship-metrics", OPENBAO),
    "clawql-certs-renewer": ({"clawql.io/metrics": "certs-renewer"}, "renewer-metrics", "certs"),
}


def load_rules(path: Path) -> list[dict[str, Any]]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(
            f"the alert rules {path} do not exist",
            fix="pass --rules deploy/prometheus/clawql-secrets.rules.yml from the repository",
        ) from exc
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"the alert rules {path} cannot be read as YAML") from exc
    groups = doc.get("groups") if isinstance(doc, dict) else None
    if not isinstance(groups, list) or not groups:
        raise ConfigError(f"the alert rules {path} have no groups")
    return groups


def monitoring_objects(spec: K8sSpec) -> list[dict[str, Any]]:
    ns = spec.namespace
    out: list[dict[str, Any]] = []
    for name, (selector, port, component) in _MONITORS.items():
        if component == OPENBAO and spec.audit_transport != "ship":
            continue  # Fluent Bit sidecars export no clawql metrics
        m = o.meta(name, ns, component)
        m["labels"].update(spec.monitor_labels)
        out.append(
            {
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "ServiceMonitor",
                "metadata": m,
                "spec": {
                    "selector": {"matchLabels": selector},
                    "namespaceSelector": {"matchNames": [ns]},
                    # A quarter of the shipper's 60 s checkpoint interval (the stall rule).
                    "endpoints": [{"port": port, "path": "/metrics", "interval": "15s"}],
                },
            }
        )
    m = o.meta("clawql-secrets", ns, "clawql-secrets")
    m["labels"].update(spec.monitor_labels)
    out.append(
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": m,
            "spec": {"groups": load_rules(spec.rules_file)},
        }
    )
    return out
