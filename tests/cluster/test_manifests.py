"""Production manifests: 3+ replicas, the same HCL as locally, no secret material."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clawql_secrets.cluster import manifests
from clawql_secrets.errors import ConfigError


def test_statefulset_has_replicas_and_hcl_joins_every_peer(tmp_path: Path) -> None:
    spec = manifests.K8sSpec(replicas=5, namespace="sec")
    paths = manifests.write(spec, tmp_path)
    docs = list(yaml.safe_load_all(paths[0].read_text()))
    kinds = [d["kind"] for d in docs]
    assert "Secret" not in kinds
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    assert sts["spec"]["replicas"] == 5
    env = {e["name"] for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"BAO_RAFT_NODE_ID", "BAO_API_ADDR", "BAO_CLUSTER_ADDR"} <= env
    text = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["openbao.hcl"]
    for i in range(5):
        assert f"https://openbao-{i}.openbao-internal.sec.svc:8200" in text
    assert 'seal "transit"' in text and "performance_multiplier = 1" in text
    assert "node_id" not in text


@pytest.mark.parametrize("replicas", [0, 1, 2])
def test_fewer_than_three_replicas_refused(replicas: int) -> None:
    with pytest.raises(ConfigError, match="cannot survive"):
        manifests.K8sSpec(replicas=replicas)


# -- NetworkPolicies: a small evaluator of Kubernetes' own semantics -----------------
# A pod is isolated for a direction when some policy of its namespace selects it for
# that direction; then a connection needs an allowing rule on both ends.
Pod = tuple[str, dict[str, str]]  # (namespace, labels); namespace "" = outside the cluster


def _selects(selector: dict[str, object], labels: dict[str, str]) -> bool:
    wanted = selector.get("matchLabels") or {}
    assert isinstance(wanted, dict)
    return all(labels.get(k) == v for k, v in wanted.items())


def _peer_matches(peer: dict[str, object], policy_ns: str, pod: Pod) -> bool:
    ns, labels = pod
    if not ns:
        return False  # ipBlock peers are never rendered: nothing outside is allowed
    ns_sel = peer.get("namespaceSelector")
    if ns_sel is None:
        ns_ok = ns == policy_ns
    else:
        assert isinstance(ns_sel, dict)
        ns_ok = _selects(ns_sel, {"kubernetes.io/metadata.name": ns})
    pod_sel = peer.get("podSelector", {})
    assert isinstance(pod_sel, dict)
    return ns_ok and _selects(pod_sel, labels)


def _allowed(docs: list[dict], src: Pod, dst: Pod, port: int) -> bool:  # type: ignore[type-arg]
    pols = [d for d in docs if d["kind"] == "NetworkPolicy"]

    def side(pod: Pod, kind: str, key: str, other: Pod) -> bool:
        mine = [
            p
            for p in pols
            if p["metadata"]["namespace"] == pod[0]
            and kind in p["spec"]["policyTypes"]
            and _selects(p["spec"]["podSelector"], pod[1])
        ]
        if not mine:
            return True  # not isolated
        for p in mine:
            for rule in p["spec"].get(kind.lower(), []):
                ports = {x["port"] for x in rule.get("ports", [])}
                peers = rule.get(key, [])
                if (not ports or port in ports) and any(
                    _peer_matches(peer, p["metadata"]["namespace"], other) for peer in peers
                ):
                    return True
        return False

    return side(src, "Egress", "to", dst) and side(dst, "Ingress", "from", src)


def test_network_policies_let_agents_reach_the_gateway_only() -> None:
    """Issue 12 item 6: the network is a second wall behind the exchange (ADR 0010)."""
    docs = manifests.render(manifests.K8sSpec(namespace="sec", agent_namespace="agents"))
    agent: Pod = ("agents", {"app": "some-agent"})
    gateway: Pod = ("sec", {"app": "clawql-gateway", manifests.OPENBAO_CLIENT_LABEL: "true"})
    openbao: Pod = ("sec", {"app.kubernetes.io/name": "openbao"})
    bridge: Pod = ("sec", {"app.kubernetes.io/name": "clawql-hsm-bridge"})
    stranger: Pod = ("sec", {"app": "debug-shell"})
    database: Pod = ("", {})
    assert _allowed(docs, agent, gateway, 8270)
    assert not _allowed(docs, agent, openbao, 8200)
    assert not _allowed(docs, agent, bridge, 8443)
    assert not _allowed(docs, agent, database, 5432)
    assert not _allowed(docs, agent, ("agents", {"app": "other-agent"}), 8080)
    assert _allowed(docs, gateway, openbao, 8200)
    assert not _allowed(docs, stranger, openbao, 8200)
    assert _allowed(docs, openbao, openbao, 8201)
    assert _allowed(docs, openbao, bridge, 8443)
    assert not _allowed(docs, gateway, bridge, 8443)
