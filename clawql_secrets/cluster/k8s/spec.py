"""What a rendering of the plane is made from: one frozen, validated ``K8sSpec``.

Everything deployment-specific is a field here (``render-k8s --values FILE``
sets any of them, validated by pydantic against this very dataclass); the
names, labels and ports the components agree on are module constants, because
the NetworkPolicies and the reachability test depend on them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final, Literal

from pydantic import ConfigDict

from clawql_secrets.errors import ConfigError

# -- the components: pod label value (app.kubernetes.io/name) and ports ---------------
NAME_LABEL: Final = "app.kubernetes.io/name"
PART_OF: Final = {"app.kubernetes.io/part-of": "clawql-secrets"}
# Pods of the plane's namespace that may call OpenBao's API (8200): the gateway, the
# registry's keeper and the certificate renewers, and operators' jobs (backups,
# provisioning) that carry it. Agents never do: they live in another namespace.
OPENBAO_CLIENT_LABEL: Final = "clawql.io/openbao-client"

OPENBAO: Final = "openbao"
BRIDGE: Final = "clawql-hsm-bridge"
GATEWAY: Final = "clawql-gateway"
REDIS: Final = "clawql-redis"
INGEST: Final = "clawql-audit-ingest"
WITNESS: Final = "clawql-witness"

OPENBAO_API_PORT: Final = 8200
OPENBAO_CLUSTER_PORT: Final = 8201
SHIPPER_METRICS_PORT: Final = 9464
RENEWER_METRICS_PORT: Final = 9465
BRIDGE_PORT: Final = 8443
GATEWAY_PORT: Final = 8270
REDIS_PORT: Final = 6379
INGEST_PORT: Final = 9880
WITNESS_PORT: Final = 7380
DNS_PORT: Final = 53

# A digest pins the bytes; a tag can be moved under a running cluster.
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9._-]{1,128})?@sha256:[0-9a-f]{64}$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Placeholders for review and tests: the reserved .invalid domain never resolves, so a
# manifest rendered with them cannot start anything by accident (docs/kubernetes.md).
PLACEHOLDER_DIGEST: Final = "sha256:" + "0" * 64
PLACEHOLDER_IMAGES: Final = {
    "image": f"registry.invalid/clawql/clawql-secrets@{PLACEHOLDER_DIGEST}",
    "openbao_image": f"registry.invalid/openbao/openbao:2.7.2@{PLACEHOLDER_DIGEST}",
    "redis_image": f"registry.invalid/library/redis:7.4@{PLACEHOLDER_DIGEST}",
    "fluent_bit_image": f"registry.invalid/fluent/fluent-bit:4.0@{PLACEHOLDER_DIGEST}",
}
# Addresses that are never "outside": pod and service ranges, CGNAT, link-local (the
# cloud metadata endpoint). Egress to the internet is 0.0.0.0/0 except these.
DEFAULT_CLUSTER_CIDRS: Final = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
)
# The repository's alert rules; --rules names another file when installed elsewhere.
DEFAULT_RULES_FILE: Final = (
    Path(__file__).resolve().parents[3] / "deploy" / "prometheus" / "clawql-secrets.rules.yml"
)


@dataclass(frozen=True)
class DatabaseSelector:
    """Tool databases running as pods: only the gateway and OpenBao may reach them."""

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    namespace: str = "clawql-data"
    labels: Mapping[str, str] = field(default_factory=lambda: {"clawql.io/tool-database": "true"})
    ports: tuple[int, ...] = (5432, 3306)


@dataclass(frozen=True)
class K8sSpec:
    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    namespace: str = "clawql"
    # Where the platform runs agent pods: they may reach the gateway and nothing else.
    agent_namespace: str = "clawql-agents"
    # The witness belongs to someone other than the log operator (docs/kubernetes.md).
    witness_namespace: str = "clawql-witness"
    replicas: int = 3
    image: str = PLACEHOLDER_IMAGES["image"]
    openbao_image: str = PLACEHOLDER_IMAGES["openbao_image"]
    redis_image: str = PLACEHOLDER_IMAGES["redis_image"]
    fluent_bit_image: str = PLACEHOLDER_IMAGES["fluent_bit_image"]
    # "ship": an `audit ship` sidecar tails each node's file device (the reference path);
    # "fluent-bit": a Fluent Bit sidecar sends it to `audit ingest` (ADR 0009).
    audit_transport: Literal["ship", "fluent-bit"] = "ship"
    storage_size: str = "10Gi"
    audit_size: str = "20Gi"
    redis_size: str = "2Gi"
    witness_size: str = "1Gi"
    storage_class: str | None = None
    gateway_min_replicas: int = 3
    gateway_max_replicas: int = 12
    gateway_cpu_target: int = 70
    # cert-manager issuers for the bootstrap layer (csi.cert-manager.io: keys made in
    # the pod, never in a Secret): node listeners and the bridge, seal clients (a CA
    # that signs nothing else, ADR 0001), Fluent Bit clients of the ingest.
    issuer_kind: Literal["Issuer", "ClusterIssuer"] = "Issuer"
    node_issuer: str = "clawql-nodes"
    seal_issuer: str = "clawql-seal-clients"
    audit_client_issuer: str = "clawql-audit-clients"
    # Secrets Store CSI SecretProviderClasses: bootstrap trust fetched from the
    # organisation's secret store at mount time, never a Kubernetes Secret.
    hsm_pin_provider: str = "clawql-hsm-pin"
    audit_hsm_pin_provider: str = "clawql-audit-hsm-pin"
    exchange_key_provider: str = "clawql-gateway-exchange-key"
    witness_key_provider: str = "clawql-witness-key"
    # The PKCS#11 module inside the clawql-secrets image, and the tokens used.
    pkcs11_library: str = "/opt/hsm/lib/libpkcs11.so"
    hsm_token_label: str = "clawql"
    audit_token_label: str = "clawql-audit"
    hsm_cidrs: tuple[str, ...] = ()
    hsm_ports: tuple[int, ...] = (1792,)
    audit_store_uri: str = "s3://clawql-audit/prod"
    audit_store_region: str | None = None
    audit_origin_prefix: str = "clawql.example/audit"
    audit_note_key_name: str = "clawql.example/audit"
    # The witness's C2SP vkey (`audit witness init` prints it); None: shippers ask none.
    witness_vkey: str | None = None
    cluster_cidrs: tuple[str, ...] = DEFAULT_CLUSTER_CIDRS
    # Third-party APIs and cloud STS (gateway), S3 (audit): HTTPS outside the cluster.
    internet_cidrs: tuple[str, ...] = ("0.0.0.0/0",)
    object_store_cidrs: tuple[str, ...] = ("0.0.0.0/0",)
    databases: tuple[DatabaseSelector, ...] = (DatabaseSelector(),)
    # Tool databases outside the cluster (managed PostgreSQL/MariaDB).
    database_cidrs: tuple[str, ...] = ()
    database_ports: tuple[int, ...] = (5432, 3306)
    prometheus_namespace: str = "monitoring"
    prometheus_labels: Mapping[str, str] = field(default_factory=lambda: {NAME_LABEL: "prometheus"})
    # Labels the Prometheus Operator selects ServiceMonitors and PrometheusRules by.
    monitor_labels: Mapping[str, str] = field(default_factory=dict)
    rules_file: Path = DEFAULT_RULES_FILE
    # Merged over the rendered gateway.yaml (roles, databases, tools, sessions, admin…);
    # the result is validated by the gateway's own model at render time.
    gateway_config: Mapping[str, Any] = field(default_factory=dict)
    # The registry Redis's PKI role and name on pki_int (`services:` in clawql.yaml).
    registry_pki_role: str = "svc-registry"
    ingest_pki_role: str = "svc-audit-ingest"

    def __post_init__(self) -> None:
        if self.replicas < 3:
            raise ConfigError(
                f"{self.replicas} replicas cannot survive the loss of a node",
                fix="use 3 or more (raft needs a majority: 3 tolerates 1 loss, 5 tolerates 2)",
            )
        for name in ("image", "openbao_image", "redis_image", "fluent_bit_image"):
            ref = getattr(self, name)
            if not _IMAGE.fullmatch(ref):
                raise ConfigError(
                    f"{name} {ref!r} is not pinned by digest",
                    fix="give REGISTRY/NAME[:TAG]@sha256:<64 hex> (`crane digest IMAGE`)",
                )
        namespaces = (self.namespace, self.agent_namespace, self.witness_namespace)
        for ns in (*namespaces, self.prometheus_namespace, *(d.namespace for d in self.databases)):
            if not _DNS_LABEL.fullmatch(ns):
                raise ConfigError(f"namespace {ns!r} is not a DNS label")
        if len(set(namespaces)) != 3 or self.namespace in {d.namespace for d in self.databases}:
            raise ConfigError(
                "the plane, the agents, the witness and the tool databases need "
                "namespaces of their own",
                fix="a default-deny policy of one would silently cover the others",
            )
        if not 2 <= self.gateway_min_replicas <= self.gateway_max_replicas:
            raise ConfigError(
                "gateway replicas: need 2 <= gateway_min_replicas <= gateway_max_replicas",
                fix="two replicas at least, so that a drain never stops every tool call",
            )
        cidrs = (
            *self.hsm_cidrs,
            *self.cluster_cidrs,
            *self.internet_cidrs,
            *self.object_store_cidrs,
            *self.database_cidrs,
        )
        for cidr in cidrs:
            try:
                ipaddress.ip_network(cidr)
            except ValueError as exc:
                raise ConfigError(f"{cidr!r} is not a CIDR block") from exc
        ports = (
            *self.hsm_ports,
            *self.database_ports,
            *(p for d in self.databases for p in d.ports),
        )
        if any(not 0 < p < 65536 for p in ports):
            raise ConfigError("ports must be between 1 and 65535")

    def svc(self, name: str, namespace: str | None = None) -> str:
        """A Service's DNS name inside the cluster."""
        return f"{name}.{namespace or self.namespace}.svc"
