"""Production output: Kubernetes manifests for a 3+ replica OpenBao with the HSM bridge.

The node HCL is rendered by the same ``hcl.render_node`` the local stack runs,
as a template without per-node identity (each pod supplies BAO_RAFT_NODE_ID,
BAO_API_ADDR and BAO_CLUSTER_ADDR from its own name). No Secret object is ever
generated: TLS material and the HSM PIN are referenced by name and must come
from the platform (cert-manager / the organisation's PKI, a sealed secret for
the PIN), so no credential lands in a file this project writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from clawql_secrets.cluster import hcl
from clawql_secrets.cluster.layout import SEAL_KEY, SEAL_MOUNT
from clawql_secrets.errors import ConfigError

APP = "openbao"
TLS_DIR = Path("/openbao/tls")
SEAL_TLS_DIR = Path("/openbao/seal-tls")


@dataclass(frozen=True)
class K8sSpec:
    namespace: str = "clawql"
    replicas: int = 3
    image: str = "quay.io/openbao/openbao:2.7.2"
    bridge_image: str = "ghcr.io/clawql/clawql-secrets:0.1.0"
    storage_size: str = "10Gi"
    audit_size: str = "20Gi"
    pkcs11_library: str = "/usr/lib/softhsm/libsofthsm2.so"
    # Where the platform runs agent pods: they may reach the gateway and nothing else.
    agent_namespace: str = "clawql-agents"

    def __post_init__(self) -> None:
        if self.replicas < 3:
            raise ConfigError(
                f"{self.replicas} replicas cannot survive the loss of a node",
                fix="use 3 or more (raft needs a majority: 3 tolerates 1 loss, 5 tolerates 2)",
            )


def _peer(spec: K8sSpec, i: int) -> str:
    return f"https://{APP}-{i}.{APP}-internal.{spec.namespace}.svc:8200"


def node_hcl(spec: K8sSpec) -> str:
    tls = hcl.TLSFiles(TLS_DIR / "tls.crt", TLS_DIR / "tls.key", TLS_DIR / "ca.crt")
    seal_tls = hcl.TLSFiles(
        SEAL_TLS_DIR / "tls.crt", SEAL_TLS_DIR / "tls.key", SEAL_TLS_DIR / "ca.crt"
    )
    return hcl.render_node(
        hcl.NodeSpec(
            node_id=None,
            api_addr=None,
            cluster_addr=None,
            listen_address="0.0.0.0:8200",
            cluster_listen_address="0.0.0.0:8201",
            raft_path=Path("/openbao/data"),
            audit_path=Path("audit/audit.log"),
            listener_tls=tls,
            peers=tuple(_peer(spec, i) for i in range(spec.replicas)),
            seal=hcl.TransitSeal(
                address=f"https://clawql-hsm-bridge.{spec.namespace}.svc:8443",
                mount_path=SEAL_MOUNT,
                key_name=SEAL_KEY,
                client=seal_tls,
                server_name=f"clawql-hsm-bridge.{spec.namespace}.svc",
            ),
        )
    )


def render(spec: K8sSpec) -> list[dict[str, Any]]:
    ns = spec.namespace
    labels = {"app.kubernetes.io/name": APP, "app.kubernetes.io/part-of": "clawql-secrets"}
    internal = f"{APP}-internal"
    restricted = {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    addr = f"$(POD_NAME).{internal}.{ns}.svc"
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": APP, "namespace": ns, "labels": labels},
        "spec": {
            "serviceName": internal,
            "replicas": spec.replicas,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "affinity": {
                        "podAntiAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "labelSelector": {"matchLabels": labels},
                                    "topologyKey": "kubernetes.io/hostname",
                                }
                            ]
                        }
                    },
                    "containers": [
                        {
                            "name": "openbao",
                            "image": spec.image,
                            "command": ["bao", "server", "-config=/openbao/config/openbao.hcl"],
                            # The audit file_path is relative: identical config on every pod.
                            "workingDir": "/openbao",
                            "env": [
                                {
                                    "name": "POD_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                },
                                {"name": "BAO_RAFT_NODE_ID", "value": "$(POD_NAME)"},
                                {"name": "BAO_API_ADDR", "value": f"https://{addr}:8200"},
                                {"name": "BAO_CLUSTER_ADDR", "value": f"https://{addr}:8201"},
                            ],
                            "ports": [
                                {"name": "api", "containerPort": 8200},
                                {"name": "cluster", "containerPort": 8201},
                            ],
                            "readinessProbe": {
                                "httpGet": {
                                    "path": "/v1/sys/health?standbyok=true",
                                    "port": 8200,
                                    "scheme": "HTTPS",
                                },
                                "periodSeconds": 5,
                            },
                            "securityContext": restricted,
                            "volumeMounts": [
                                {"name": "config", "mountPath": "/openbao/config"},
                                {"name": "data", "mountPath": "/openbao/data"},
                                {"name": "audit", "mountPath": "/openbao/audit"},
                                {"name": "tls", "mountPath": str(TLS_DIR), "readOnly": True},
                                {
                                    "name": "seal-tls",
                                    "mountPath": str(SEAL_TLS_DIR),
                                    "readOnly": True,
                                },
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "config", "configMap": {"name": f"{APP}-config"}},
                        # Issued by the platform PKI (cert-manager or `clawql-secrets certs`).
                        {"name": "tls", "secret": {"secretName": f"{APP}-tls"}},
                        {"name": "seal-tls", "secret": {"secretName": f"{APP}-seal-client-tls"}},
                    ],
                },
            },
            "volumeClaimTemplates": [
                _pvc("data", spec.storage_size),
                _pvc("audit", spec.audit_size),
            ],
        },
    }
    bridge_labels = {
        "app.kubernetes.io/name": "clawql-hsm-bridge",
        "app.kubernetes.io/part-of": "clawql-secrets",
    }
    bridge = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "clawql-hsm-bridge", "namespace": ns, "labels": bridge_labels},
        "spec": {
            # One writer per PKCS#11 token; OpenBao nodes restart until it is back.
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": bridge_labels},
            "template": {
                "metadata": {"labels": bridge_labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "containers": [
                        {
                            "name": "bridge",
                            "image": spec.bridge_image,
                            "args": ["hsm", "serve", "--config", "/etc/clawql/bridge.json"],
                            "ports": [{"name": "transit", "containerPort": 8443}],
                            "securityContext": restricted,
                            "volumeMounts": [
                                {"name": "bridge-config", "mountPath": "/etc/clawql"},
                                # Bootstrap trust: the HSM PIN, from the platform's secret store.
                                {
                                    "name": "hsm-pin",
                                    "mountPath": "/var/run/clawql/hsm",
                                    "readOnly": True,
                                },
                                {
                                    "name": "tls",
                                    "mountPath": "/var/run/clawql/tls",
                                    "readOnly": True,
                                },
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "bridge-config", "configMap": {"name": "clawql-hsm-bridge"}},
                        {
                            "name": "hsm-pin",
                            "secret": {"secretName": "clawql-hsm-pin", "defaultMode": 0o400},
                        },
                        {"name": "tls", "secret": {"secretName": "clawql-hsm-bridge-tls"}},
                    ],
                },
            },
        },
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{APP}-config", "namespace": ns, "labels": labels},
            "data": {"openbao.hcl": node_hcl(spec)},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": internal, "namespace": ns, "labels": labels},
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": labels,
                "ports": [{"name": "api", "port": 8200}, {"name": "cluster", "port": 8201}],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": APP, "namespace": ns, "labels": labels},
            "spec": {"selector": labels, "ports": [{"name": "api", "port": 8200}]},
        },
        statefulset,
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": APP, "namespace": ns},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "clawql-hsm-bridge", "namespace": ns, "labels": bridge_labels},
            "spec": {"selector": bridge_labels, "ports": [{"name": "transit", "port": 8443}]},
        },
        bridge,
        *network_policies(spec),
    ]


GATEWAY_APP, GATEWAY_PORT = "clawql-gateway", 8270
# Pods of this namespace allowed to call OpenBao's API: the gateway, the audit
# shipper, the certificate renewer, operators' jobs. Agents never carry it.
OPENBAO_CLIENT_LABEL = "clawql.io/openbao-client"


def network_policies(spec: K8sSpec) -> list[dict[str, Any]]:
    """The walls of ADR 0010 in the cluster's own terms (a second wall behind the
    gateway's exchange): agent pods reach the gateway only; OpenBao's API answers the
    labelled service pods of this namespace and its peers only; the HSM bridge answers
    OpenBao only. Default-deny for the agents' namespace, then the one allowance."""
    ns, agents = spec.namespace, spec.agent_namespace
    openbao = {"app.kubernetes.io/name": APP}
    dns = {
        "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }

    def policy(name: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": body,
        }

    return [
        policy(
            "agents-reach-only-the-gateway",
            agents,
            {
                "podSelector": {},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [],
                "egress": [
                    {
                        "to": [
                            {
                                "namespaceSelector": {
                                    "matchLabels": {"kubernetes.io/metadata.name": ns}
                                },
                                "podSelector": {"matchLabels": {"app": GATEWAY_APP}},
                            }
                        ],
                        "ports": [{"protocol": "TCP", "port": GATEWAY_PORT}],
                    },
                    dns,
                ],
            },
        ),
        policy(
            "openbao-api-from-services-only",
            ns,
            {
                "podSelector": {"matchLabels": openbao},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [{"podSelector": {"matchLabels": {OPENBAO_CLIENT_LABEL: "true"}}}],
                        "ports": [{"protocol": "TCP", "port": 8200}],
                    },
                    {
                        "from": [{"podSelector": {"matchLabels": openbao}}],
                        "ports": [
                            {"protocol": "TCP", "port": 8200},
                            {"protocol": "TCP", "port": 8201},
                        ],
                    },
                ],
            },
        ),
        policy(
            "hsm-bridge-from-openbao-only",
            ns,
            {
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "clawql-hsm-bridge"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [{"podSelector": {"matchLabels": openbao}}],
                        "ports": [{"protocol": "TCP", "port": 8443}],
                    }
                ],
            },
        ),
    ]


def _pvc(name: str, size: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
    }


def write(spec: K8sSpec, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    docs = render(spec)
    manifest = out_dir / "openbao.yaml"
    manifest.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    hcl_path = out_dir / "openbao.hcl"
    hcl_path.write_text(node_hcl(spec))
    return [manifest, hcl_path]
