"""Production manifests: the whole plane, restricted pods, no Secret, configs that load."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from clawql_secrets import cli
from clawql_secrets.audit.fluentbit import IngestConfig
from clawql_secrets.audit.ship_config import ShipConfig
from clawql_secrets.certs.config import CertsConfig
from clawql_secrets.cluster import manifests
from clawql_secrets.cluster.k8s.keeper import KeeperConfig
from clawql_secrets.cluster.k8s.spec import PLACEHOLDER_DIGEST, K8sSpec
from clawql_secrets.errors import ConfigError
from clawql_secrets.gateway.config import GatewayConfig
from clawql_secrets.hsm.bridge import BridgeSettings

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
TRANSPORTS = ["ship", "fluent-bit"]


def _render(transport: str = "ship", **kw: Any) -> list[dict[str, Any]]:
    return manifests.render(K8sSpec(audit_transport=transport, **kw))  # type: ignore[arg-type]


def _pods(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in docs:
        if d["kind"] in WORKLOADS:
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def test_statefulset_has_replicas_and_hcl_joins_every_peer(tmp_path: Path) -> None:
    spec = K8sSpec(replicas=5, namespace="sec")
    paths = manifests.write(spec, tmp_path)
    docs = [d for p in paths if p.suffix == ".yaml" for d in yaml.safe_load_all(p.read_text())]
    sts = _one(docs, "StatefulSet", "openbao")
    assert sts["spec"]["replicas"] == 5
    env = {e["name"] for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"BAO_RAFT_NODE_ID", "BAO_API_ADDR", "BAO_CLUSTER_ADDR"} <= env
    text = _one(docs, "ConfigMap", "openbao-config")["data"]["openbao.hcl"]
    for i in range(5):
        assert f"https://openbao-{i}.openbao-internal.sec.svc:8200" in text
    assert 'seal "transit"' in text and "performance_multiplier = 1" in text
    assert "node_id" not in text
    ship = _one(docs, "ConfigMap", "openbao-audit-ship")["data"]
    assert sorted(ship) == [f"openbao-{i}.json" for i in range(5)]
    assert (tmp_path / "openbao.hcl").read_text() == text


@pytest.mark.parametrize("replicas", [0, 1, 2])
def test_fewer_than_three_replicas_refused(replicas: int) -> None:
    with pytest.raises(ConfigError, match="cannot survive"):
        K8sSpec(replicas=replicas)


@pytest.mark.parametrize(
    "image",
    [
        "ghcr.io/clawql/clawql-secrets:0.1.0",  # a tag can move
        "ghcr.io/clawql/clawql-secrets:latest",
        "ghcr.io/clawql/clawql-secrets@sha256:abc",
        "ghcr.io/clawql/clawql-secrets@sha1:" + "0" * 40,
        "",
    ],
)
def test_images_not_pinned_by_digest_are_refused(image: str) -> None:
    with pytest.raises(ConfigError, match="not pinned by digest"):
        K8sSpec(image=image)


@pytest.mark.parametrize(
    "kw",
    [
        {"agent_namespace": "clawql"},
        {"witness_namespace": "clawql"},
        {"namespace": "Bad_Name"},
        {"gateway_min_replicas": 1},
        {"gateway_min_replicas": 5, "gateway_max_replicas": 4},
        {"hsm_cidrs": ("10.0.0.0/33",)},
        {"hsm_ports": (0,)},
    ],
)
def test_inconsistent_specs_are_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        K8sSpec(**kw)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_whole_plane_is_rendered(transport: str) -> None:
    docs = _render(transport)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    expected = {
        ("StatefulSet", "openbao"),
        ("PodDisruptionBudget", "openbao"),
        ("Deployment", "clawql-hsm-bridge"),
        ("Deployment", "clawql-gateway"),
        ("HorizontalPodAutoscaler", "clawql-gateway"),
        ("PodDisruptionBudget", "clawql-gateway"),
        ("StatefulSet", "clawql-redis"),
        ("StatefulSet", "clawql-witness"),
        ("ServiceMonitor", "clawql-gateway"),
        ("ServiceMonitor", "clawql-certs-renewer"),
        ("PrometheusRule", "clawql-secrets"),
        ("NetworkPolicy", "default-deny"),
        ("NetworkPolicy", "agents-reach-only-the-gateway"),
    }
    expected |= (
        {("ServiceMonitor", "clawql-audit-shipper")}
        if transport == "ship"
        else {("Deployment", "clawql-audit-ingest")}
    )
    assert expected <= names
    sts = _one(docs, "StatefulSet", "openbao")
    containers = {c["name"] for c in sts["spec"]["template"]["spec"]["containers"]}
    assert containers == {"openbao", "audit-ship" if transport == "ship" else "fluent-bit"}
    anti = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == (
        "kubernetes.io/hostname"
    )
    for ns in ("clawql", "clawql-witness"):
        labels = _one(docs, "Namespace", ns)["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_pod_is_restricted(transport: str) -> None:
    """Pod Security Standard `restricted`, checked field by field for every container."""
    pods = list(_pods(_render(transport)))
    assert len(pods) >= 5
    for where, pod in pods:
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] >= 10000, where
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert pod["automountServiceAccountToken"] is False, where
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(key), where
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert sc["runAsNonRoot"] is True, (where, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (where, c["name"])
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, (where, c["name"])
            assert not sc.get("privileged"), (where, c["name"])
            assert "@sha256:" in c["image"], (where, c["name"])
            assert not c.get("ports") or all("hostPort" not in p for p in c["ports"])
        for v in pod.get("volumes", []):
            # The restricted profile's volume types, and never a Secret.
            kinds = set(v) - {"name"}
            assert kinds <= {"configMap", "csi", "emptyDir", "projected", "persistentVolumeClaim"}
            assert "secret" not in kinds, (where, v["name"])


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_no_kubernetes_secret_is_made_or_used(transport: str) -> None:
    docs = _render(transport)
    assert "Secret" not in {d["kind"] for d in docs}
    keys = {k for d in docs for k, _ in _walk(d)}
    for forbidden in ("secretKeyRef", "secretRef", "secretName", "imagePullSecrets", "secret"):
        assert forbidden not in keys
    # Projected tokens only ever for OpenBao's audience, short-lived.
    for k, v in (kv for d in docs for kv in _walk(d)):
        if k == "serviceAccountToken":
            assert v["audience"] == "openbao" and v["expirationSeconds"] <= 3600


def _config(docs: list[dict[str, Any]], name: str, key: str) -> Any:
    return yaml.safe_load(_one(docs, "ConfigMap", name)["data"][key])


def test_every_rendered_configuration_loads_with_its_components_model() -> None:
    docs = _render("ship", witness_vkey=None)
    GatewayConfig.model_validate(_config(docs, "clawql-gateway", "gateway.yaml"))
    BridgeSettings.model_validate(_config(docs, "clawql-hsm-bridge", "bridge.json"))
    for i in range(3):
        ship = ShipConfig.model_validate(_config(docs, "openbao-audit-ship", f"openbao-{i}.json"))
        assert list(ship.streams) == [f"openbao-{i}"]
    CertsConfig.model_validate(_config(docs, "clawql-redis", "certs.yaml"))
    KeeperConfig.model_validate(_config(docs, "clawql-redis", "keeper.json"))
    docs = _render("fluent-bit")
    ingest = IngestConfig.model_validate(_config(docs, "clawql-audit-ingest", "ingest.yaml"))
    assert sorted(ingest.sources) == ["openbao-0", "openbao-1", "openbao-2"]
    CertsConfig.model_validate(_config(docs, "clawql-audit-ingest", "certs.yaml"))
    fb = _one(docs, "ConfigMap", "openbao-fluent-bit")["data"]["fluent-bit.conf"]
    assert "clawql-audit-ingest.clawql.svc" in fb and "Retry_Limit       False" in fb


def test_gateway_config_overlay_is_merged_and_validated() -> None:
    docs = _render(gateway_config={"roles": {"analyst": {"tools": ["sql.query"]}}})
    config = _config(docs, "clawql-gateway", "gateway.yaml")
    assert config["roles"] == {"analyst": {"tools": ["sql.query"]}}
    assert config["registry"]["host"] == "clawql-redis.clawql.svc"
    with pytest.raises(ConfigError, match="gateway_config"):
        _render(gateway_config={"registry": {"port": "not a port"}})


def test_witness_is_configured_in_the_shippers_when_its_key_is_known() -> None:
    from clawql_secrets.audit.cosignature import WitnessSigner

    vkey = str(WitnessSigner.generate("witness.example.org/w1").witness_key())
    docs = _render(witness_vkey=vkey)
    ship = _config(docs, "openbao-audit-ship", "openbao-0.json")
    assert ship["witnesses"] == [
        {"url": "http://clawql-witness.clawql-witness.svc:7380", "key": vkey}
    ]
    ShipConfig.model_validate(ship)


def test_prometheus_rule_is_the_rules_file(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(
        yaml.safe_dump({"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up == 0"}]}]})
    )
    docs = _render(rules_file=rules)
    assert _one(docs, "PrometheusRule", "clawql-secrets")["spec"]["groups"] == [
        {"name": "g", "rules": [{"alert": "A", "expr": "up == 0"}]}
    ]
    default = yaml.safe_load(K8sSpec().rules_file.read_text())
    assert (
        _one(_render(), "PrometheusRule", "clawql-secrets")["spec"]["groups"] == default["groups"]
    )
    with pytest.raises(ConfigError, match="do not exist"):
        _render(rules_file=tmp_path / "missing.yml")


def test_redis_registry_has_no_password_anywhere() -> None:
    docs = _render()
    conf = _one(docs, "ConfigMap", "clawql-redis")["data"]["redis.conf"]
    assert "port 0" in conf and "tls-port 6379" in conf and "aclfile" in conf
    assert "requirepass" not in conf and "masterauth" not in conf
    sts = _one(docs, "StatefulSet", "clawql-redis")
    pod = sts["spec"]["template"]["spec"]
    keeper = next(c for c in pod["initContainers"] if c["name"] == "keeper")
    assert keeper["restartPolicy"] == "Always"  # up before Redis
    acl = next(v for v in pod["volumes"] if v["name"] == "acl")
    assert acl["emptyDir"]["medium"] == "Memory"


IMAGES = [
    "--image",
    "r.example/clawql@sha256:" + "1" * 64,
    "--openbao-image",
    "r.example/openbao:2.7.2@sha256:" + "2" * 64,
    "--redis-image",
    "r.example/redis@sha256:" + "3" * 64,
    "--fluent-bit-image",
    "r.example/fluent-bit@sha256:" + "4" * 64,
]


def test_cli_renders_with_images_and_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"replicas": 5, "hsm_cidrs": ["192.0.2.0/24"]}))
    out = tmp_path / "out"
    rc = cli.main(["cluster", "render-k8s", "--out", str(out), "--values", str(values), *IMAGES])
    assert rc == 0
    printed = capsys.readouterr().out.split()
    assert str(out / "80-network-policies.yaml") in printed
    sts = _one(
        list(yaml.safe_load_all((out / "10-openbao.yaml").read_text())), "StatefulSet", "openbao"
    )
    assert sts["spec"]["replicas"] == 5
    assert PLACEHOLDER_DIGEST not in "".join(p.read_text() for p in out.iterdir())


def test_cli_refuses_placeholder_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["cluster", "render-k8s", "--out", str(tmp_path / "o")])
    assert rc != 0
    assert "no image given" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_values_file_refuses_unknown_fields(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(json.dumps({"replica": 3}))
    with pytest.raises(ConfigError, match="values are invalid"):
        manifests.load_values(values)
