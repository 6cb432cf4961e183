"""Issue 15 item 5: the rendered NetworkPolicies open exactly the intended paths.

Every workload the renderer emits becomes an endpoint with its own pod labels
and container ports; around them stand the pods of others (agents,
Prometheus, tool databases, kube-dns, a stranger in the plane's namespace, an
operator's job carrying the OpenBao-client label, a pod elsewhere) and
addresses outside the cluster. ``reachability.matrix`` evaluates the policies'
selectors; the result must equal the intended matrix exactly, so a change that
opens (or closes) a path fails here and must be made on purpose in both places.
"""

from __future__ import annotations

from typing import Any

import pytest

from clawql_secrets.cluster import manifests
from clawql_secrets.cluster.k8s import reachability as r
from clawql_secrets.cluster.k8s.spec import NAME_LABEL, OPENBAO_CLIENT_LABEL, K8sSpec

SENTINEL = ("TCP", 9999)  # a port nobody declares: catches rules that allow every port
EGRESS_GOVERNED = {"clawql", "clawql-witness", "clawql-agents"}


def _spec(transport: str) -> K8sSpec:
    return K8sSpec(audit_transport=transport, hsm_cidrs=("192.0.2.0/24",))  # type: ignore[arg-type]


def _world(docs: list[dict[str, Any]]) -> list[r.Endpoint]:
    endpoints: list[r.Endpoint] = []
    n = 10
    for d in docs:
        if d["kind"] not in {"Deployment", "StatefulSet", "DaemonSet"}:
            continue
        template = d["spec"]["template"]
        pod = template["spec"]
        containers = pod["containers"] + pod.get("initContainers", [])
        named = {
            p["name"]: (p.get("protocol", "TCP"), p["containerPort"])
            for c in containers
            for p in c.get("ports", [])
        }
        n += 1
        endpoints.append(
            r.Endpoint(
                kind=template["metadata"]["labels"][NAME_LABEL],
                namespace=d["metadata"]["namespace"],
                labels=template["metadata"]["labels"],
                ip=f"10.1.0.{n}",
                named_ports=named,
                ports=(*sorted(set(named.values())), SENTINEL),
            )
        )
    others = [
        r.Endpoint(
            "agent",
            "clawql-agents",
            {"app": "some-agent"},
            "10.2.0.1",
            ports=(("TCP", 8080), SENTINEL),
        ),
        r.Endpoint(
            "prometheus",
            "monitoring",
            {NAME_LABEL: "prometheus"},
            "10.2.0.2",
            ports=(("TCP", 9090),),
        ),
        r.Endpoint(
            "tool-db",
            "clawql-data",
            {"clawql.io/tool-database": "true"},
            "10.2.0.3",
            ports=(("TCP", 5432), ("TCP", 3306), SENTINEL),
        ),
        r.Endpoint(
            "kube-dns",
            "kube-system",
            {"k8s-app": "kube-dns"},
            "10.2.0.4",
            ports=(("UDP", 53), ("TCP", 53)),
        ),
        r.Endpoint(
            "stranger", "clawql", {"app": "debug-shell"}, "10.2.0.5", ports=(("TCP", 8080),)
        ),
        r.Endpoint(
            "project-job", "clawql", {"app": "backup", OPENBAO_CLIENT_LABEL: "true"}, "10.2.0.6"
        ),
        r.Endpoint("elsewhere", "default", {"app": "web"}, "10.2.0.7", ports=(("TCP", 8080),)),
        r.Endpoint("internet", None, ip="203.0.113.10", ports=(("TCP", 443), ("TCP", 80))),
        r.Endpoint("hsm", None, ip="192.0.2.10", ports=(("TCP", 1792),)),
        r.Endpoint("cloud-metadata", None, ip="169.254.169.254", ports=(("TCP", 80),)),
    ]
    return endpoints + others


def _governed(docs: list[dict[str, Any]], world: list[r.Endpoint]) -> set[r.Path]:
    """Pairs whose source's egress or destination's ingress the rendering decides."""
    allowed = r.matrix(docs, world)
    return {
        (s, d, proto, port)
        for (s, d, proto, port) in allowed
        if next(e for e in world if e.kind == s).namespace in EGRESS_GOVERNED
        or next(e for e in world if e.kind == d).namespace in (EGRESS_GOVERNED | {"clawql-data"})
    }


DNS = {("UDP", 53), ("TCP", 53)}


def _dns(*kinds: str) -> set[r.Path]:
    return {(k, "kube-dns", p, n) for k in kinds for p, n in DNS}


COMMON: set[r.Path] = {
    # Agents reach the gateway, and nothing else of the plane.
    ("agent", "clawql-gateway", "TCP", 8270),
    # The gateway: OpenBao, its registry, the tool databases, HTTPS outside.
    ("clawql-gateway", "openbao", "TCP", 8200),
    ("clawql-gateway", "clawql-redis", "TCP", 6379),
    ("clawql-gateway", "tool-db", "TCP", 5432),
    ("clawql-gateway", "tool-db", "TCP", 3306),
    ("clawql-gateway", "internet", "TCP", 443),
    # OpenBao: its peers, the bridge, the engines' databases (registry included).
    ("openbao", "openbao", "TCP", 8200),
    ("openbao", "openbao", "TCP", 8201),
    ("openbao", "clawql-hsm-bridge", "TCP", 8443),
    ("openbao", "clawql-redis", "TCP", 6379),
    ("openbao", "tool-db", "TCP", 5432),
    ("openbao", "tool-db", "TCP", 3306),
    # The bridge talks to the HSM only.
    ("clawql-hsm-bridge", "hsm", "TCP", 1792),
    # The plane's services with the OpenBao-client label: the registry's keeper and
    # renewer, operators' jobs.
    ("clawql-redis", "openbao", "TCP", 8200),
    ("project-job", "openbao", "TCP", 8200),
    # Prometheus scrapes metrics ports.
    ("prometheus", "clawql-gateway", "TCP", 8270),
    ("prometheus", "clawql-redis", "TCP", 9465),
}

INTENDED = {
    "ship": COMMON
    | {
        # The audit ship sidecar in each OpenBao pod: S3, the witness, the signing HSM.
        ("openbao", "clawql-witness", "TCP", 7380),
        ("openbao", "internet", "TCP", 443),
        ("openbao", "hsm", "TCP", 1792),
        ("prometheus", "openbao", "TCP", 9464),
    }
    | _dns(
        "agent",
        "clawql-gateway",
        "openbao",
        "clawql-hsm-bridge",
        "clawql-redis",
        "clawql-witness",
        "stranger",
        "project-job",
    ),
    "fluent-bit": COMMON
    | {
        # Fluent Bit sidecars send to the ingest; the ingest stores and signs.
        ("openbao", "clawql-audit-ingest", "TCP", 9880),
        ("clawql-audit-ingest", "openbao", "TCP", 8200),
        ("clawql-audit-ingest", "internet", "TCP", 443),
        ("clawql-audit-ingest", "hsm", "TCP", 1792),
        ("prometheus", "clawql-audit-ingest", "TCP", 9465),
    }
    | _dns(
        "agent",
        "clawql-gateway",
        "openbao",
        "clawql-hsm-bridge",
        "clawql-redis",
        "clawql-witness",
        "clawql-audit-ingest",
        "stranger",
        "project-job",
    ),
}


@pytest.mark.parametrize("transport", ["ship", "fluent-bit"])
def test_rendered_policies_allow_exactly_the_intended_matrix(transport: str) -> None:
    docs = manifests.render(_spec(transport))
    world = _world(docs)
    got = _governed(docs, world)
    assert sorted(got - INTENDED[transport]) == [], "paths opened that are not intended"
    assert sorted(INTENDED[transport] - got) == [], "intended paths that are closed"


def test_every_rendered_workload_is_in_the_world() -> None:
    """The matrix covers every pod kind the renderer emits (none escapes the test)."""
    docs = manifests.render(_spec("fluent-bit"))
    kinds = {e.kind for e in _world(docs)}
    assert {
        "openbao",
        "clawql-hsm-bridge",
        "clawql-gateway",
        "clawql-redis",
        "clawql-audit-ingest",
        "clawql-witness",
    } <= kinds


@pytest.mark.parametrize(
    ("src", "dst", "port"),
    [
        ("agent", "openbao", 8200),
        ("agent", "clawql-redis", 6379),
        ("agent", "tool-db", 5432),
        ("agent", "internet", 443),
        ("agent", "cloud-metadata", 80),
        ("stranger", "openbao", 8200),
        ("elsewhere", "clawql-gateway", 8270),
        ("elsewhere", "tool-db", 5432),
        ("clawql-redis", "tool-db", 5432),
        ("clawql-gateway", "clawql-hsm-bridge", 8443),
        ("clawql-gateway", "cloud-metadata", 80),
        ("prometheus", "openbao", 8200),
    ],
)
def test_named_walls_hold(src: str, dst: str, port: int) -> None:
    """The issue's sentences, one by one, on the default rendering."""
    docs = manifests.render(_spec("ship"))
    world = {e.kind: e for e in _world(docs)}
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert not r.allowed(policies, world[src], world[dst], "TCP", port)


def test_opening_a_path_is_caught() -> None:
    """A policy that lets agents reach OpenBao changes the matrix (the test has teeth)."""
    docs = manifests.render(_spec("ship"))
    docs.append(
        {
            "kind": "NetworkPolicy",
            "metadata": {"name": "oops", "namespace": "clawql"},
            "spec": {
                "podSelector": {"matchLabels": {NAME_LABEL: "openbao"}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"namespaceSelector": {}}]}],
            },
        }
    )
    world = _world(docs)
    assert _governed(docs, world) != INTENDED["ship"]
