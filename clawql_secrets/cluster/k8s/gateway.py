"""The gateway: Deployment, Service, HPA, PDB, and its gateway.yaml.

gateway.yaml is rendered: the plane's own addresses and file paths, with the
operator's ``gateway_config`` (roles, databases, tools, sessions issuer…)
merged over them, and validated by the gateway's own model before anything is
written, so a manifest never carries a configuration the gateway would refuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import yaml
from pydantic import ValidationError

from clawql_secrets.cluster.k8s import objects as o
from clawql_secrets.cluster.k8s.openbao import INTERNAL_CA, NODES_CA, peer
from clawql_secrets.cluster.k8s.spec import (
    GATEWAY,
    GATEWAY_PORT,
    OPENBAO_CLIENT_LABEL,
    REDIS,
    REDIS_PORT,
    K8sSpec,
)
from clawql_secrets.errors import ConfigError
from clawql_secrets.validation import describe_validation_error

EXCHANGE_DIR: Final = "/var/run/clawql/exchange"
SESSIONS_JWKS: Final = "sessions-jwks.json"


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def gateway_config(spec: K8sSpec) -> dict[str, Any]:
    from clawql_secrets.gateway.config import GatewayConfig

    base: dict[str, Any] = {
        "host": "0.0.0.0",  # noqa: S104
        "port": GATEWAY_PORT,
        "openbao": {
            "addrs": [peer(spec, i) for i in range(spec.replicas)],
            "ca_file": f"{o.TRUST_DIR}/{NODES_CA}",
        },
        "sessions": {"jwks_file": f"{o.TRUST_DIR}/{SESSIONS_JWKS}"},
        "identity": {
            "mount": "workload",
            "role": "gateway",
            "audience": o.OPENBAO_AUDIENCE,
            "jwt_file": f"{o.TOKEN_DIR}/token",
        },
        # Bootstrap trust (ADR 0010): from the secret store, mounted in these pods only.
        "exchange": {"key_file": f"{EXCHANGE_DIR}/signing.key"},
        "registry": {
            "host": spec.svc(REDIS),
            "port": REDIS_PORT,
            "ca_file": f"{o.TRUST_DIR}/{INTERNAL_CA}",
        },
    }
    config = _merge(base, spec.gateway_config)
    try:
        GatewayConfig.model_validate(config)
    except ValidationError as exc:
        raise ConfigError(
            f"gateway_config does not make a valid gateway.yaml: {describe_validation_error(exc)}",
            fix="see docs/configuration.md (gateway.yaml)",
        ) from exc
    return config


def gateway_objects(spec: K8sSpec) -> list[dict[str, Any]]:
    ns = spec.namespace
    config = gateway_config(spec)
    trust = [NODES_CA, INTERNAL_CA, SESSIONS_JWKS]
    if "admin" in config:
        trust.append("admin-jwks.json")
    gw = o.container(
        "gateway",
        spec.image,
        ["clawql-secrets", "gateway", "serve", "--config", "/etc/clawql/gateway.yaml"],
        ports=[("http", GATEWAY_PORT)],
        probe=o.http_probe("/healthz", GATEWAY_PORT),
        readiness=o.http_probe("/readyz", GATEWAY_PORT, period=5),
        res=o.resources("250m", "256Mi", "2", "1Gi"),
        mounts=[
            o.mount("config", "/etc/clawql/gateway.yaml", sub_path="gateway.yaml"),
            o.mount("trust", o.TRUST_DIR),
            o.mount("openbao-token", o.TOKEN_DIR),
            o.mount("exchange-key", EXCHANGE_DIR),
        ],
    )
    volumes = [
        o.configmap_volume("config", GATEWAY),
        o.trust_volume(trust),
        o.openbao_token_volume(),
        o.secret_store_volume("exchange-key", spec.exchange_key_provider),
    ]
    labels = {**o.labels(GATEWAY), OPENBAO_CLIENT_LABEL: "true"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": o.meta(GATEWAY, ns, GATEWAY),
        "spec": {
            # The HPA owns the replica count; this is the first apply's.
            "replicas": spec.gateway_min_replicas,
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "selector": {"matchLabels": o.selector(GATEWAY)},
            "template": {
                "metadata": {"labels": labels},
                "spec": o.pod_spec(
                    GATEWAY,
                    [gw],
                    volumes,
                    affinity=o.spread(GATEWAY, required=False),
                    # A tool call in flight finishes; sessions live in the registry.
                    terminationGracePeriodSeconds=30,
                ),
            },
        },
    }
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": o.meta(GATEWAY, ns, GATEWAY),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": GATEWAY},
            "minReplicas": spec.gateway_min_replicas,
            "maxReplicas": spec.gateway_max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": spec.gateway_cpu_target,
                        },
                    },
                }
            ],
        },
    }
    return [
        o.service_account(GATEWAY, ns, GATEWAY),
        o.configmap(
            GATEWAY, ns, GATEWAY, {"gateway.yaml": yaml.safe_dump(config, sort_keys=False)}
        ),
        o.service(GATEWAY, ns, GATEWAY, [("http", GATEWAY_PORT)]),
        deployment,
        hpa,
        o.pdb(GATEWAY, ns, GATEWAY, 1),
    ]
