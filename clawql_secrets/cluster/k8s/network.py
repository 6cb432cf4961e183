"""NetworkPolicies: every namespace of the plane denies everything, then each path is opened.

The walls of ADR 0010 in the cluster's own terms, a second wall behind the
gateway's exchange: agent pods reach the gateway only; OpenBao's API answers
the gateway and the plane's labelled services only; the tool databases and
the registry Redis answer the gateway and OpenBao (whose database engine
creates and drops their users) only; the HSM bridge answers OpenBao only.
``tests/cluster/test_network_reachability.py`` evaluates these objects
(``reachability.py``) and compares the result with the intended matrix.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from clawql_secrets.cluster.k8s.objects import Obj
from clawql_secrets.cluster.k8s.spec import (
    BRIDGE,
    BRIDGE_PORT,
    DNS_PORT,
    GATEWAY,
    GATEWAY_PORT,
    INGEST,
    INGEST_PORT,
    NAME_LABEL,
    OPENBAO,
    OPENBAO_API_PORT,
    OPENBAO_CLIENT_LABEL,
    OPENBAO_CLUSTER_PORT,
    PART_OF,
    REDIS,
    REDIS_PORT,
    RENEWER_METRICS_PORT,
    SHIPPER_METRICS_PORT,
    WITNESS,
    WITNESS_PORT,
    K8sSpec,
)

NS_LABEL = "kubernetes.io/metadata.name"  # set by Kubernetes on every namespace


def _ports(*ports: int, protocol: str = "TCP") -> list[Obj]:
    return [{"protocol": protocol, "port": p} for p in ports]


def _pods(component: str) -> Obj:
    return {"podSelector": {"matchLabels": {NAME_LABEL: component}}}


def _in(namespace: str, pod_labels: Mapping[str, str] | None = None) -> Obj:
    """Pods of another namespace (all of them when ``pod_labels`` is None)."""
    peer: Obj = {"namespaceSelector": {"matchLabels": {NS_LABEL: namespace}}}
    peer["podSelector"] = {"matchLabels": dict(pod_labels)} if pod_labels else {}
    return peer


def _outside(cidrs: Sequence[str], cluster: Sequence[str]) -> list[Obj]:
    """ipBlocks for addresses outside the cluster: each CIDR minus the cluster's ranges
    it contains (a CNI may match pod addresses against an ipBlock)."""
    out = []
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr)
        excepts = [
            c
            for c in cluster
            if (inner := ipaddress.ip_network(c)).version == net.version
            and inner != net
            and inner.subnet_of(net)  # type: ignore[arg-type]
        ]
        block: Obj = {"cidr": cidr}
        if excepts:
            block["except"] = excepts
        out.append({"ipBlock": block})
    return out


def _rule(peers: Sequence[Obj], ports: Sequence[Obj], direction: str) -> Obj:
    return {direction: list(peers), "ports": list(ports)}


def _policy(name: str, namespace: str, selector: Obj, types: Sequence[str], **rules: Any) -> Obj:
    spec: Obj = {"podSelector": selector, "policyTypes": list(types)}
    for key in ("ingress", "egress"):
        if key in rules:
            spec[key] = rules[key]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(PART_OF)},
        "spec": spec,
    }


def _baseline(namespace: str) -> list[Obj]:
    """Deny everything in ``namespace``, then let every pod resolve names."""
    dns = _in("kube-system", {"k8s-app": "kube-dns"})
    return [
        _policy("default-deny", namespace, {}, ["Ingress", "Egress"]),
        _policy(
            "allow-dns",
            namespace,
            {},
            ["Egress"],
            egress=[
                _rule([dns], _ports(DNS_PORT, protocol="UDP") + _ports(DNS_PORT), "to"),
            ],
        ),
    ]


def network_policies(spec: K8sSpec) -> list[Obj]:
    ns = spec.namespace
    ship = spec.audit_transport == "ship"
    prometheus = _in(spec.prometheus_namespace, spec.prometheus_labels)
    hsm = _outside(spec.hsm_cidrs, spec.cluster_cidrs)
    store = _outside(spec.object_store_cidrs, spec.cluster_cidrs)
    internet = _outside(spec.internet_cidrs, spec.cluster_cidrs)

    def to_databases() -> list[Obj]:
        rules = [
            _rule([_in(d.namespace, d.labels)], _ports(*d.ports), "to") for d in spec.databases
        ]
        if spec.database_cidrs:
            external = _outside(spec.database_cidrs, ())
            rules.append(_rule(external, _ports(*spec.database_ports), "to"))
        return rules

    def maybe(peers: list[Obj], ports: list[Obj]) -> list[Obj]:
        return [_rule(peers, ports, "to")] if peers else []

    openbao_in = [
        _rule([_pods(OPENBAO)], _ports(OPENBAO_API_PORT, OPENBAO_CLUSTER_PORT), "from"),
        _rule(
            [{"podSelector": {"matchLabels": {OPENBAO_CLIENT_LABEL: "true"}}}],
            _ports(OPENBAO_API_PORT),
            "from",
        ),
    ]
    openbao_out = [
        _rule([_pods(OPENBAO)], _ports(OPENBAO_API_PORT, OPENBAO_CLUSTER_PORT), "to"),
        _rule([_pods(BRIDGE)], _ports(BRIDGE_PORT), "to"),
        # The registry's redis-database-plugin and the tool databases' engines.
        _rule([_pods(REDIS)], _ports(REDIS_PORT), "to"),
        *to_databases(),
    ]
    if ship:
        openbao_in.append(_rule([prometheus], _ports(SHIPPER_METRICS_PORT), "from"))
        openbao_out += [
            _rule([_in(spec.witness_namespace, {NAME_LABEL: WITNESS})], _ports(WITNESS_PORT), "to"),
            *maybe(store, _ports(443)),
            *maybe(hsm, _ports(*spec.hsm_ports)),
        ]
    else:
        openbao_out.append(_rule([_pods(INGEST)], _ports(INGEST_PORT), "to"))

    out = [
        *_baseline(ns),
        _policy(
            "openbao-clients",
            ns,
            {"matchLabels": {OPENBAO_CLIENT_LABEL: "true"}},
            ["Egress"],
            egress=[_rule([_pods(OPENBAO)], _ports(OPENBAO_API_PORT), "to")],
        ),
        _policy(
            OPENBAO,
            ns,
            _pods(OPENBAO)["podSelector"],
            ["Ingress", "Egress"],
            ingress=openbao_in,
            egress=openbao_out,
        ),
        _policy(
            BRIDGE,
            ns,
            _pods(BRIDGE)["podSelector"],
            ["Ingress", "Egress"],
            ingress=[_rule([_pods(OPENBAO)], _ports(BRIDGE_PORT), "from")],
            egress=maybe(hsm, _ports(*spec.hsm_ports)),
        ),
        _policy(
            GATEWAY,
            ns,
            _pods(GATEWAY)["podSelector"],
            ["Ingress", "Egress"],
            ingress=[
                _rule([_in(spec.agent_namespace)], _ports(GATEWAY_PORT), "from"),
                _rule([prometheus], _ports(GATEWAY_PORT), "from"),
            ],
            egress=[
                _rule([_pods(REDIS)], _ports(REDIS_PORT), "to"),
                *to_databases(),
                # Third-party APIs and cloud STS for the tools.
                *maybe(internet, _ports(443)),
            ],
        ),
        _policy(
            REDIS,
            ns,
            _pods(REDIS)["podSelector"],
            ["Ingress"],
            ingress=[
                _rule([_pods(GATEWAY), _pods(OPENBAO)], _ports(REDIS_PORT), "from"),
                _rule([prometheus], _ports(RENEWER_METRICS_PORT), "from"),
            ],
        ),
    ]
    if not ship:
        out.append(
            _policy(
                INGEST,
                ns,
                _pods(INGEST)["podSelector"],
                ["Ingress", "Egress"],
                ingress=[
                    _rule([_pods(OPENBAO)], _ports(INGEST_PORT), "from"),
                    _rule([prometheus], _ports(RENEWER_METRICS_PORT), "from"),
                ],
                egress=[*maybe(store, _ports(443)), *maybe(hsm, _ports(*spec.hsm_ports))],
            )
        )
    wns = spec.witness_namespace
    out += _baseline(wns)
    out.append(
        _policy(
            WITNESS,
            wns,
            _pods(WITNESS)["podSelector"],
            ["Ingress"],
            ingress=(
                [_rule([_in(ns, {NAME_LABEL: OPENBAO})], _ports(WITNESS_PORT), "from")]
                if ship
                else []
            ),
        )
    )
    out.append(
        _policy(
            "agents-reach-only-the-gateway",
            spec.agent_namespace,
            {},
            ["Ingress", "Egress"],
            ingress=[],
            egress=[
                _rule([_in(ns, {NAME_LABEL: GATEWAY})], _ports(GATEWAY_PORT), "to"),
                _rule(
                    [_in("kube-system", {"k8s-app": "kube-dns"})],
                    _ports(DNS_PORT, protocol="UDP") + _ports(DNS_PORT),
                    "to",
                ),
            ],
        )
    )
    for i, d in enumerate(spec.databases):
        out.append(
            _policy(
                "tool-databases-from-the-plane-only" + (f"-{i}" if i else ""),
                d.namespace,
                {"matchLabels": dict(d.labels)},
                ["Ingress"],
                ingress=[
                    _rule(
                        [_in(ns, {NAME_LABEL: GATEWAY}), _in(ns, {NAME_LABEL: OPENBAO})],
                        _ports(*d.ports),
                        "from",
                    )
                ],
            )
        )
    return out
