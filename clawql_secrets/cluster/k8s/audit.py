"""The Fluent Bit ingest (``audit ingest``, ADR 0009) and the witness.

The ingest is rendered with ``audit_transport: fluent-bit``: OpenBao pods then
carry a Fluent Bit sidecar instead of ``audit ship``, one source per pod, its
client certificate's URI SAN naming the pod. One replica: a stream has one
writer.

The witness cosigns checkpoints and must not be the log operator's to
control (ARCHITECTURE, audit): it gets a namespace of its own, its key from
the witness operator's secret store, and its configuration (the logs and
verifier keys it accepts) from a ConfigMap that the witness operator writes.
"""

from __future__ import annotations

from typing import Any, Final

import yaml

from clawql_secrets.cluster.k8s import objects as o
from clawql_secrets.cluster.k8s.openbao import (
    AUDIT_CLIENT_CA,
    AUDIT_PIN_DIR,
    AUDIT_URI_PREFIX,
    NODES_CA,
    pin_mounts,
)
from clawql_secrets.cluster.k8s.registry import certs_config, renewer_containers
from clawql_secrets.cluster.k8s.spec import (
    INGEST,
    INGEST_PORT,
    OPENBAO,
    OPENBAO_CLIENT_LABEL,
    RENEWER_METRICS_PORT,
    WITNESS,
    WITNESS_PORT,
    K8sSpec,
)

INGEST_TLS: Final = "/var/run/clawql/ingest-tls"
RUN_DIR: Final = "/run/clawql"
WITNESS_KEY_DIR: Final = "/var/run/clawql/witness-key"
WITNESS_STATE: Final = "/var/lib/clawql-witness"


def ingest_config(spec: K8sSpec) -> dict[str, Any]:
    store: dict[str, Any] = {"kind": "s3", "uri": spec.audit_store_uri, "retention_days": 400}
    if spec.audit_store_region:
        store["region"] = spec.audit_store_region
    return {
        "listen": {
            "host": "0.0.0.0",  # noqa: S104
            "port": INGEST_PORT,
            "path": "/v1/audit/fluent-bit",
            "cert_file": f"{INGEST_TLS}/tls.crt",
            "key_file": f"{INGEST_TLS}/tls.key",
            "client_ca_file": f"{o.TRUST_DIR}/{AUDIT_CLIENT_CA}",
        },
        "sources": {
            f"{OPENBAO}-{i}": {"uri": f"{AUDIT_URI_PREFIX}{OPENBAO}-{i}"}
            for i in range(spec.replicas)
        },
        "store": store,
        "signer": {
            "kind": "hsm",
            "token_label": spec.audit_token_label,
            "pin_file": f"{AUDIT_PIN_DIR}/pin",
            "note_key_name": spec.audit_note_key_name,
            "lib_path": spec.pkcs11_library,
        },
        "origin_prefix": spec.audit_origin_prefix,
    }


def ingest_objects(spec: K8sSpec) -> list[dict[str, Any]]:
    ns = spec.namespace
    certs = certs_config(
        spec,
        "audit-ingest",
        spec.ingest_pki_role,
        spec.svc(INGEST),
        INGEST_TLS,
        {"signal": "TERM", "pid_file": f"{RUN_DIR}/ingest.pid"},
    )
    init, renewer = renewer_containers(
        spec,
        o.mount("ingest-tls", INGEST_TLS, read_only=False),
        [o.mount("run", RUN_DIR, read_only=False)],
    )
    ingest = o.container(
        "ingest",
        spec.image,
        [
            "python",
            "-m",
            "clawql_secrets.cluster.k8s.pidfile",
            f"{RUN_DIR}/ingest.pid",
            "--",
            "clawql-secrets",
            "audit",
            "ingest",
            "--config",
            "/etc/clawql/ingest.yaml",
        ],
        ports=[("ingest", INGEST_PORT)],
        probe=o.tcp_probe(INGEST_PORT),
        res=o.resources("100m", "256Mi", "1", "1Gi"),
        mounts=[
            o.mount("ingest-config", "/etc/clawql/ingest.yaml", sub_path="ingest.yaml"),
            o.mount("ingest-tls", INGEST_TLS),
            o.mount("trust", o.TRUST_DIR),
            o.mount("run", RUN_DIR, read_only=False),
            *pin_mounts("audit-hsm-pin", "audit-hsm-state", AUDIT_PIN_DIR),
        ],
    )
    volumes = [
        o.configmap_volume("ingest-config", INGEST, ["ingest.yaml"]),
        o.configmap_volume("certs-config", INGEST, ["certs.yaml"]),
        o.memory_dir("ingest-tls", "1Mi"),
        o.memory_dir("run", "1Mi"),
        o.trust_volume([NODES_CA, AUDIT_CLIENT_CA]),
        o.openbao_token_volume(),
        o.secret_store_volume("audit-hsm-pin", spec.audit_hsm_pin_provider),
        o.memory_dir("audit-hsm-state", "1Mi"),
    ]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": o.meta(INGEST, ns, INGEST),
        "spec": {
            "replicas": 1,  # one writer per stream
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": o.selector(INGEST)},
            "template": {
                "metadata": {"labels": {**o.labels(INGEST), OPENBAO_CLIENT_LABEL: "true"}},
                "spec": o.pod_spec(
                    INGEST,
                    [ingest, renewer],
                    volumes,
                    initContainers=[init],
                    shareProcessNamespace=True,
                ),
            },
        },
    }
    return [
        o.service_account(INGEST, ns, INGEST),
        o.configmap(
            INGEST,
            ns,
            INGEST,
            {
                "ingest.yaml": yaml.safe_dump(ingest_config(spec), sort_keys=False),
                "certs.yaml": yaml.safe_dump(certs, sort_keys=False),
            },
        ),
        o.service(INGEST, ns, INGEST, [("ingest", INGEST_PORT)]),
        o.service(
            f"{INGEST}-metrics",
            ns,
            INGEST,
            [("renewer-metrics", RENEWER_METRICS_PORT)],
            headless=True,
            extra_labels={"clawql.io/metrics": "certs-renewer"},
        ),
        deployment,
    ]


def witness_config_example(spec: K8sSpec) -> dict[str, Any]:
    """The shape of the witness operator's ``witness.json`` (docs/kubernetes.md)."""
    return {
        "name": "witness.example.org/w1",
        "key_file": f"{WITNESS_KEY_DIR}/witness.key",
        "state_dir": f"{WITNESS_STATE}/state",
        "host": "0.0.0.0",  # noqa: S104
        "port": WITNESS_PORT,
        "logs": [
            {"origin": f"{spec.audit_origin_prefix}/{OPENBAO}-{i}", "verifier_keys": ["<vkey>"]}
            for i in range(spec.replicas)
        ],
    }


def witness_objects(spec: K8sSpec) -> list[dict[str, Any]]:
    ns = spec.witness_namespace
    witness = o.container(
        "witness",
        spec.image,
        ["clawql-secrets", "audit", "witness", "serve", "--config", "/etc/clawql/witness.json"],
        ports=[("witness", WITNESS_PORT)],
        probe=o.tcp_probe(WITNESS_PORT),
        mounts=[
            # Written by the witness operator, not rendered (the logs and keys it trusts).
            o.mount("witness-config", "/etc/clawql/witness.json", sub_path="witness.json"),
            o.mount("witness-key", WITNESS_KEY_DIR),
            o.mount("state", WITNESS_STATE, read_only=False),
        ],
    )
    volumes = [
        o.configmap_volume("witness-config", WITNESS, ["witness.json"]),
        o.secret_store_volume("witness-key", spec.witness_key_provider),
    ]
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": o.meta(WITNESS, ns, WITNESS),
        "spec": {
            "serviceName": WITNESS,
            "replicas": 1,  # one state file: a witness never signs two different heads
            "selector": {"matchLabels": o.selector(WITNESS)},
            "template": {
                "metadata": {"labels": o.labels(WITNESS)},
                "spec": o.pod_spec(WITNESS, [witness], volumes),
            },
            "volumeClaimTemplates": [
                o.pvc_template("state", spec.witness_size, spec.storage_class)
            ],
        },
    }
    return [
        o.namespace(ns),
        o.service_account(WITNESS, ns, WITNESS),
        o.service(WITNESS, ns, WITNESS, [("witness", WITNESS_PORT)]),
        statefulset,
    ]
