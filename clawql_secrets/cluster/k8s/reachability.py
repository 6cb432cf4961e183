"""What a set of NetworkPolicies lets through, computed from their selectors. Pure.

Kubernetes' semantics (networking.k8s.io/v1), as the API reference states them:

1. A pod is isolated for ingress (egress) when at least one policy of its
   namespace selects it and lists ``Ingress`` (``Egress``) in ``policyTypes``
   (absent: ``Ingress``, plus ``Egress`` when the policy has egress rules).
   A pod that is not isolated for a direction allows everything that way.
2. A connection needs the source's egress and the destination's ingress to
   allow it; policies are additive (any allowing rule of any selecting policy).
3. A rule allows a peer and port when some ``from``/``to`` entry matches the
   peer (absent or empty list: every peer) and some ``ports`` entry matches
   the port (absent or empty list: every port).
4. A peer entry: ``podSelector`` alone means pods of the policy's namespace;
   ``namespaceSelector`` alone, every pod of the matching namespaces; both,
   matching pods of matching namespaces; ``ipBlock``, addresses in ``cidr``
   and in no ``except``. Pod addresses are matched by ipBlocks too, as most
   CNIs do (the conservative reading: a path this module calls closed is closed).
5. A selector: ``matchLabels`` and every ``matchExpressions`` entry must hold
   (``In``, ``NotIn`` — true when the key is absent —, ``Exists``,
   ``DoesNotExist``); ``{}`` selects everything.
6. A port entry: ``protocol`` (default TCP) must match, and ``port`` — a number,
   with ``endPort`` a range, or a name resolved against the destination's
   container ports — must; an entry without ``port`` matches every port.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Policy = Mapping[str, Any]


@dataclass(frozen=True)
class Endpoint:
    """A pod (``namespace`` set) or an address outside the cluster (``namespace`` None)."""

    kind: str
    namespace: str | None
    labels: Mapping[str, str] = field(default_factory=dict)
    ip: str = "10.0.0.1"
    # Named container ports of a pod: name -> (protocol, number).
    named_ports: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    # What to probe when this endpoint is a destination.
    ports: tuple[tuple[str, int], ...] = ()


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Step 5."""
    if selector is None:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In":
            ok = key in labels and labels[key] in values
        elif op == "NotIn":
            ok = key not in labels or labels[key] not in values
        elif op == "Exists":
            ok = key in labels
        elif op == "DoesNotExist":
            ok = key not in labels
        else:
            raise ValueError(f"unknown selector operator {op!r}")
        if not ok:
            return False
    return True


def _namespace_labels(name: str, namespaces: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    # Kubernetes labels every namespace with its own name.
    return {**namespaces.get(name, {}), "kubernetes.io/metadata.name": name}


def _in_block(block: Mapping[str, Any], ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    net = ipaddress.ip_network(block["cidr"])
    if addr.version != net.version or addr not in net:
        return False
    return not any(addr in ipaddress.ip_network(e) for e in block.get("except") or [])


def peer_matches(
    peer: Mapping[str, Any],
    policy_namespace: str,
    other: Endpoint,
    namespaces: Mapping[str, Mapping[str, str]],
) -> bool:
    """Step 4."""
    if "ipBlock" in peer:
        return _in_block(peer["ipBlock"], other.ip)
    if other.namespace is None:
        return False  # selectors name pods; an outside address is not one
    ns_sel = peer.get("namespaceSelector")
    if ns_sel is None:
        ns_ok = other.namespace == policy_namespace
    else:
        ns_ok = selects(ns_sel, _namespace_labels(other.namespace, namespaces))
    return ns_ok and selects(peer.get("podSelector"), other.labels)


def port_matches(entry: Mapping[str, Any], protocol: str, port: int, dst: Endpoint) -> bool:
    """Step 6."""
    if entry.get("protocol", "TCP") != protocol:
        return False
    want = entry.get("port")
    if want is None:
        return True
    if isinstance(want, str):
        named = dst.named_ports.get(want)
        return named is not None and named == (protocol, port)
    end = entry.get("endPort", want)
    return bool(want <= port <= end)


def policy_types(policy: Policy) -> list[str]:
    spec = policy["spec"]
    if "policyTypes" in spec:
        return list(spec["policyTypes"])
    return ["Ingress", "Egress"] if "egress" in spec else ["Ingress"]


def _side_allows(
    policies: Sequence[Policy],
    pod: Endpoint,
    direction: str,
    other: Endpoint,
    protocol: str,
    port: int,
    dst: Endpoint,
    namespaces: Mapping[str, Mapping[str, str]],
) -> bool:
    """Steps 1 and 3 for one end of the connection."""
    if pod.namespace is None:
        return True  # outside the cluster: nothing here isolates it
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == pod.namespace
        and direction in policy_types(p)
        and selects(p["spec"].get("podSelector") or {}, pod.labels)
    ]
    if not selecting:
        return True
    for p in selecting:
        for rule in p["spec"].get(key) or []:
            peers = rule.get(peers_key) or []
            ports = rule.get("ports") or []
            peer_ok = not peers or any(
                peer_matches(peer, p["metadata"]["namespace"], other, namespaces) for peer in peers
            )
            port_ok = not ports or any(port_matches(e, protocol, port, dst) for e in ports)
            if peer_ok and port_ok:
                return True
    return False


def allowed(
    policies: Sequence[Policy],
    src: Endpoint,
    dst: Endpoint,
    protocol: str,
    port: int,
    namespaces: Mapping[str, Mapping[str, str]] | None = None,
) -> bool:
    """Step 2: may ``src`` open ``protocol``/``port`` on ``dst``?"""
    nss = namespaces or {}
    return _side_allows(policies, src, "Egress", dst, protocol, port, dst, nss) and _side_allows(
        policies, dst, "Ingress", src, protocol, port, dst, nss
    )


Path = tuple[str, str, str, int]  # (source kind, destination kind, protocol, port)


def matrix(
    objects: Iterable[Mapping[str, Any]],
    endpoints: Sequence[Endpoint],
    namespaces: Mapping[str, Mapping[str, str]] | None = None,
) -> set[Path]:
    """Every (source, destination, protocol, port) the policies among ``objects`` allow,
    probing each destination's ``ports``. An endpoint stands for every pod of its kind,
    so ``(k, k, …)`` is one pod of kind ``k`` reaching another."""
    policies = [o for o in objects if o.get("kind") == "NetworkPolicy"]
    out: set[Path] = set()
    for src in endpoints:
        for dst in endpoints:
            for protocol, port in dst.ports:
                if allowed(policies, src, dst, protocol, port, namespaces):
                    out.add((src.kind, dst.kind, protocol, port))
    return out
