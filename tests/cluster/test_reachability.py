"""The NetworkPolicy evaluator's semantics, case by case (reachability.py docstring steps)."""

from __future__ import annotations

from typing import Any

import pytest

from clawql_secrets.cluster.k8s import reachability as r

WEB = r.Endpoint(
    "web", "app", {"app": "web", "tier": "front"}, "10.0.0.10", named_ports={"http": ("TCP", 8080)}
)
DB = r.Endpoint("db", "app", {"app": "db"}, "10.0.0.11", named_ports={"pg": ("TCP", 5432)})
OTHER = r.Endpoint("other", "ops", {"app": "web"}, "10.0.1.10")
OUTSIDE = r.Endpoint("outside", None, ip="203.0.113.7")


def _policy(namespace: str, selector: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": namespace},
        "spec": {"podSelector": selector, **spec},
    }


# -- step 5: selectors ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({}, {}, True),  # empty selector = everything
        ({}, {"a": "1"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        ({"matchLabels": {"a": "1"}}, {}, False),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]},
            {"a": "2"},
            True,
        ),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
        (
            {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]},
            {"a": "2"},
            True,
        ),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        (
            {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]},
            {"a": "1"},
            False,
        ),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"b": "1"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"b": "1"}, True),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": "1"}, False),
        # matchLabels and matchExpressions are ANDed
        (
            {"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "Exists"}]},
            {"a": "1"},
            False,
        ),
    ],
)
def test_selector_semantics(
    selector: dict[str, Any], labels: dict[str, str], expected: bool
) -> None:
    assert r.selects(selector, labels) is expected


def test_unknown_operator_is_refused() -> None:
    with pytest.raises(ValueError, match="operator"):
        r.selects({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}, {})


# -- step 1: isolation -------------------------------------------------------------------
def test_no_policy_means_everything_is_allowed() -> None:
    assert r.allowed([], WEB, DB, "TCP", 5432)
    assert r.allowed([], OUTSIDE, DB, "UDP", 53)


def test_a_policy_of_another_namespace_does_not_isolate() -> None:
    deny = _policy("ops", {}, policyTypes=["Ingress", "Egress"])
    assert r.allowed([deny], WEB, DB, "TCP", 5432)


def test_default_deny_isolates_both_directions() -> None:
    deny = _policy("app", {}, policyTypes=["Ingress", "Egress"])
    assert not r.allowed([deny], WEB, DB, "TCP", 5432)
    assert not r.allowed([deny], OTHER, DB, "TCP", 5432)  # ingress side
    assert not r.allowed([deny], WEB, OTHER, "TCP", 8080)  # egress side


def test_policy_types_default_to_ingress_plus_egress_when_egress_rules_exist() -> None:
    ingress_only = _policy("app", {"matchLabels": {"app": "db"}})
    assert r.policy_types(ingress_only) == ["Ingress"]
    assert not r.allowed([ingress_only], WEB, DB, "TCP", 5432)
    assert r.allowed([ingress_only], DB, WEB, "TCP", 8080)  # db's egress is not isolated
    with_egress = _policy("app", {"matchLabels": {"app": "db"}}, egress=[{}])
    assert r.policy_types(with_egress) == ["Ingress", "Egress"]


# -- steps 2-4: rules and peers -------------------------------------------------------------
def test_policies_are_additive() -> None:
    deny = _policy("app", {}, policyTypes=["Ingress"])
    allow = _policy(
        "app",
        {"matchLabels": {"app": "db"}},
        policyTypes=["Ingress"],
        ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}],
    )
    assert r.allowed([deny, allow], WEB, DB, "TCP", 5432)
    assert not r.allowed([deny, allow], DB, WEB, "TCP", 8080)


def test_both_ends_must_allow() -> None:
    ingress = _policy(
        "app",
        {"matchLabels": {"app": "db"}},
        policyTypes=["Ingress"],
        ingress=[{"from": [{"podSelector": {}}]}],
    )
    egress_deny = _policy("app", {"matchLabels": {"app": "web"}}, policyTypes=["Egress"])
    assert r.allowed([ingress], WEB, DB, "TCP", 5432)
    assert not r.allowed([ingress, egress_deny], WEB, DB, "TCP", 5432)


@pytest.mark.parametrize(
    ("peer", "src", "expected"),
    [
        ({"podSelector": {"matchLabels": {"app": "web"}}}, WEB, True),
        # podSelector alone: the policy's own namespace only
        ({"podSelector": {"matchLabels": {"app": "web"}}}, OTHER, False),
        # namespaceSelector alone: every pod of the matching namespaces
        (
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}}},
            OTHER,
            True,
        ),
        (
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}}},
            WEB,
            False,
        ),
        ({"namespaceSelector": {}}, OTHER, True),  # every namespace
        # both: matching pods in matching namespaces
        (
            {"namespaceSelector": {}, "podSelector": {"matchLabels": {"tier": "front"}}},
            OTHER,
            False,
        ),
        ({"namespaceSelector": {}, "podSelector": {"matchLabels": {"tier": "front"}}}, WEB, True),
        # selectors never match addresses outside the cluster
        ({"namespaceSelector": {}}, OUTSIDE, False),
        ({"ipBlock": {"cidr": "203.0.113.0/24"}}, OUTSIDE, True),
        ({"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.0/28"]}}, OUTSIDE, False),
        ({"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}, WEB, False),
        # ipBlocks match pod addresses too (the conservative reading)
        ({"ipBlock": {"cidr": "10.0.0.0/24"}}, WEB, True),
        ({"ipBlock": {"cidr": "::/0"}}, OUTSIDE, False),  # another address family
    ],
)
def test_peer_semantics(peer: dict[str, Any], src: r.Endpoint, expected: bool) -> None:
    pol = _policy(
        "app", {"matchLabels": {"app": "db"}}, policyTypes=["Ingress"], ingress=[{"from": [peer]}]
    )
    assert r.allowed([pol], src, DB, "TCP", 5432) is expected


def test_rule_without_peers_allows_every_peer() -> None:
    pol = _policy(
        "app",
        {"matchLabels": {"app": "db"}},
        policyTypes=["Ingress"],
        ingress=[{"ports": [{"port": 5432}]}],
    )
    assert r.allowed([pol], OUTSIDE, DB, "TCP", 5432)
    assert r.allowed([pol], OTHER, DB, "TCP", 5432)
    assert not r.allowed([pol], OTHER, DB, "TCP", 5433)


def test_empty_rule_list_allows_nothing() -> None:
    pol = _policy("app", {"matchLabels": {"app": "db"}}, policyTypes=["Ingress"], ingress=[])
    assert not r.allowed([pol], WEB, DB, "TCP", 5432)


# -- step 6: ports --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("entry", "protocol", "port", "expected"),
    [
        ({"port": 5432}, "TCP", 5432, True),  # protocol defaults to TCP
        ({"port": 5432}, "UDP", 5432, False),
        ({"protocol": "UDP", "port": 53}, "UDP", 53, True),
        ({"protocol": "UDP", "port": 53}, "TCP", 53, False),
        ({"protocol": "TCP"}, "TCP", 1234, True),  # no port: every port of the protocol
        ({"protocol": "TCP"}, "SCTP", 1234, False),
        ({"port": 5000, "endPort": 5999}, "TCP", 5432, True),
        ({"port": 5000, "endPort": 5999}, "TCP", 6000, False),
        ({"port": "pg"}, "TCP", 5432, True),  # named port resolved on the destination
        ({"port": "pg"}, "TCP", 5433, False),
        ({"port": "http"}, "TCP", 8080, False),  # the name is the destination's, not another pod's
    ],
)
def test_port_semantics(entry: dict[str, Any], protocol: str, port: int, expected: bool) -> None:
    assert r.port_matches(entry, protocol, port, DB) is expected


def test_matrix_lists_allowed_paths_only() -> None:
    web = r.Endpoint("web", "app", {"app": "web"}, "10.0.0.10", ports=(("TCP", 8080),))
    db = r.Endpoint("db", "app", {"app": "db"}, "10.0.0.11", ports=(("TCP", 5432), ("TCP", 9)))
    pol = _policy(
        "app",
        {"matchLabels": {"app": "db"}},
        policyTypes=["Ingress"],
        ingress=[
            {"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 5432}]}
        ],
    )
    assert r.matrix([pol, {"kind": "Service"}], [web, db]) == {
        ("web", "db", "TCP", 5432),
        ("db", "web", "TCP", 8080),
        ("web", "web", "TCP", 8080),
    }
