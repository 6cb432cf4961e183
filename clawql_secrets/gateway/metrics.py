"""Prometheus metrics of the gateway: counts and timings, never a secret.

Labels are bounded: tool names come from the installed plugins (anything else
is ``unknown``), outcomes and reasons from fixed sets in ``core``. No label
carries a session id, tenant, token, username or SQL text.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls = Counter(
            "clawql_gateway_tool_calls",
            "Tool calls by tool and outcome",
            ["tool", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "clawql_gateway_tool_call_seconds",
            "Tool call latency",
            ["tool"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.exchanges = Counter(
            "clawql_gateway_token_exchanges",
            "JWT logins to OpenBao by outcome",
            ["outcome"],
            registry=r,
        )
        self.session_ends = Counter(
            "clawql_gateway_session_ends", "Sessions ended, by reason", ["reason"], registry=r
        )
        self.leases = Counter(
            "clawql_gateway_leases_issued", "Credential leases issued for sessions", registry=r
        )
        self.leases_revoked = Counter(
            "clawql_gateway_leases_revoked", "Credential leases revoked", registry=r
        )
        self.revoke_failures = Counter(
            "clawql_gateway_lease_revoke_failures",
            "Lease revocations that failed (the sweeper retries them), by cause",
            ["cause"],
            registry=r,
        )
        self.pending_revocation = Gauge(
            "clawql_gateway_sessions_pending_revocation",
            "Ended sessions with leases not yet confirmed revoked (shared registry)",
            registry=r,
        )
        self.anomalies = Counter(
            "clawql_gateway_anomalies",
            "Anomaly rule hits (each revokes a session)",
            ["rule"],
            registry=r,
        )
        self.lease_bounds = Counter(
            "clawql_gateway_lease_bounds",
            "Leases set to their session's remaining life, by outcome",
            ["outcome"],
            registry=r,
        )
        self.anchors = Counter(
            "clawql_gateway_session_anchors",
            "Session anchor tokens created (one per credential a session first uses)",
            registry=r,
        )
        self.active = Gauge(
            "clawql_gateway_active_sessions", "Sessions active in the shared registry", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
