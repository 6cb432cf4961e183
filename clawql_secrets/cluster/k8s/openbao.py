"""OpenBao (a raft StatefulSet with its audit sidecar) and the HSM bridge.

The node HCL is rendered by the same ``hcl.render_node`` the local stack runs,
as a template without per-node identity (each pod supplies BAO_RAFT_NODE_ID,
BAO_API_ADDR and BAO_CLUSTER_ADDR from its own name). Node and seal-client
certificates come from cert-manager's CSI driver: their keys are made in the
pod and live in its memory, so no Secret holds them and each pod has its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from clawql_secrets.cluster import hcl
from clawql_secrets.cluster.k8s import objects as o
from clawql_secrets.cluster.k8s.spec import (
    BRIDGE,
    BRIDGE_PORT,
    INGEST,
    INGEST_PORT,
    OPENBAO,
    OPENBAO_API_PORT,
    OPENBAO_CLUSTER_PORT,
    SHIPPER_METRICS_PORT,
    WITNESS,
    WITNESS_PORT,
    K8sSpec,
)
from clawql_secrets.cluster.layout import SEAL_KEY, SEAL_MOUNT

TLS_DIR: Final = Path("/openbao/tls")
SEAL_TLS_DIR: Final = Path("/openbao/seal-tls")
AUDIT_DIR: Final = "/openbao/audit"
INTERNAL: Final = f"{OPENBAO}-internal"
SEAL_URI_PREFIX: Final = "spiffe://clawql.local/openbao/"
AUDIT_URI_PREFIX: Final = "spiffe://clawql.internal/audit/"
AUDIT_PIN_DIR: Final = "/var/run/clawql/audit-hsm"
HSM_PIN_DIR: Final = "/var/run/clawql/hsm"
# Keys of the clawql-trust ConfigMap (public certificates only).
NODES_CA: Final = "nodes-ca.crt"
SEAL_CLIENT_CA: Final = "seal-client-ca.crt"
INTERNAL_CA: Final = "internal-ca.crt"
AUDIT_CLIENT_CA: Final = "audit-client-ca.crt"


def peer(spec: K8sSpec, i: int) -> str:
    return f"https://{OPENBAO}-{i}.{INTERNAL}.{spec.namespace}.svc:{OPENBAO_API_PORT}"


def node_hcl(spec: K8sSpec) -> str:
    tls = hcl.TLSFiles(TLS_DIR / "tls.crt", TLS_DIR / "tls.key", TLS_DIR / "ca.crt")
    # The seal client's CA file verifies the *bridge*, whose certificate the node
    # issuer signs; the seal-client CA itself is only the bridge's business.
    seal_tls = hcl.TLSFiles(
        SEAL_TLS_DIR / "tls.crt", SEAL_TLS_DIR / "tls.key", Path(o.TRUST_DIR) / NODES_CA
    )
    return hcl.render_node(
        hcl.NodeSpec(
            node_id=None,
            api_addr=None,
            cluster_addr=None,
            listen_address=f"0.0.0.0:{OPENBAO_API_PORT}",
            cluster_listen_address=f"0.0.0.0:{OPENBAO_CLUSTER_PORT}",
            raft_path=Path("/openbao/data"),
            audit_path=Path("audit/audit.log"),
            listener_tls=tls,
            peers=tuple(peer(spec, i) for i in range(spec.replicas)),
            seal=hcl.TransitSeal(
                address=f"https://{spec.svc(BRIDGE)}:{BRIDGE_PORT}",
                mount_path=SEAL_MOUNT,
                key_name=SEAL_KEY,
                client=seal_tls,
                server_name=spec.svc(BRIDGE),
            ),
        )
    )


def ship_config(spec: K8sSpec, pod: str) -> dict[str, Any]:
    """``audit ship`` of one pod: its own stream, the shared store and signer."""
    store: dict[str, Any] = {"kind": "s3", "uri": spec.audit_store_uri, "retention_days": 400}
    if spec.audit_store_region:
        store["region"] = spec.audit_store_region
    config: dict[str, Any] = {
        "streams": {
            pod: {"audit_file": f"{AUDIT_DIR}/audit.log", "cursor_dir": f"{AUDIT_DIR}/.cursors"}
        },
        "store": store,
        "signer": {
            "kind": "hsm",
            "token_label": spec.audit_token_label,
            "pin_file": f"{AUDIT_PIN_DIR}/pin",
            "note_key_name": spec.audit_note_key_name,
            "lib_path": spec.pkcs11_library,
        },
        "interval_seconds": 60,
        "origin_prefix": spec.audit_origin_prefix,
        "metrics": {"host": "0.0.0.0", "port": SHIPPER_METRICS_PORT},  # noqa: S104
    }
    if spec.witness_vkey:
        url = f"http://{spec.svc(WITNESS, spec.witness_namespace)}:{WITNESS_PORT}"
        config["witnesses"] = [{"url": url, "key": spec.witness_vkey}]
    return config


def fluent_bit_config(spec: K8sSpec) -> str:
    """docs/fluent-bit.md's configuration, inside the pod (``${POD_NAME}`` from env)."""
    return f"""\
[SERVICE]
    Flush                     1
    Log_Level                 info
    HTTP_Server               On
    HTTP_Listen               0.0.0.0
    HTTP_Port                 2020
    Health_Check              On
    storage.path              {AUDIT_DIR}/.fluent-bit/storage
    storage.sync              full
    storage.checksum          on
    storage.backlog.mem_limit 16M

[INPUT]
    Name              tail
    Tag               openbao.audit
    Path              {AUDIT_DIR}/audit.log
    Read_from_Head    true
    DB                {AUDIT_DIR}/.fluent-bit/openbao-audit.db
    DB.sync           full
    DB.locking        true
    Rotate_Wait       30
    Refresh_Interval  1
    Buffer_Chunk_Size 256K
    Buffer_Max_Size   2M
    Skip_Long_Lines   Off
    storage.type      filesystem

[OUTPUT]
    Name              http
    Match             openbao.audit
    Host              {spec.svc(INGEST)}
    Port              {INGEST_PORT}
    URI               /v1/audit/fluent-bit
    Format            json_lines
    json_date_key     date
    json_date_format  double
    compress          gzip
    tls               On
    tls.verify        On
    tls.ca_file       {o.TRUST_DIR}/{INTERNAL_CA}
    tls.crt_file      /var/run/clawql/audit-client/tls.crt
    tls.key_file      /var/run/clawql/audit-client/tls.key
    Retry_Limit       False
    net.io_timeout    60
"""


def pin_mounts(volume: str, memory: str, directory: str) -> list[dict[str, Any]]:
    """The PIN file inside a writable in-memory directory (the PIN guard keeps its
    failure record beside the PIN), mounted read-only from the secret store."""
    return [
        o.mount(memory, directory, read_only=False),
        o.mount(volume, f"{directory}/pin", sub_path="pin"),
    ]


def _audit_sidecar(spec: K8sSpec) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    env = [o.env_field("POD_NAME", "metadata.name")]
    if spec.audit_transport == "fluent-bit":
        fb = o.container(
            "fluent-bit",
            spec.fluent_bit_image,
            ["/fluent-bit/bin/fluent-bit", "--config=/fluent-bit/etc/fluent-bit.conf"],
            ports=[("fb-http", 2020)],
            env=env,
            probe=o.http_probe("/api/v1/health", 2020),
            mounts=[
                o.mount("audit", AUDIT_DIR, read_only=False),
                o.mount("fluent-bit-config", "/fluent-bit/etc"),
                o.mount("audit-client-tls", "/var/run/clawql/audit-client"),
                o.mount("trust", o.TRUST_DIR),
            ],
        )
        volumes = [
            o.configmap_volume("fluent-bit-config", f"{OPENBAO}-fluent-bit"),
            o.cert_volume(
                "audit-client-tls",
                spec,
                spec.audit_client_issuer,
                uris=[AUDIT_URI_PREFIX + "${POD_NAME}"],
                usages="client auth",
            ),
        ]
        return fb, volumes
    ship = o.container(
        "audit-ship",
        spec.image,
        ["clawql-secrets", "audit", "ship", "--config", "/etc/clawql/ship/$(POD_NAME).json"],
        ports=[("ship-metrics", SHIPPER_METRICS_PORT)],
        env=env,
        probe=o.tcp_probe(SHIPPER_METRICS_PORT),
        res=o.resources("100m", "128Mi", "1", "512Mi"),
        mounts=[
            # Reads the file device (0600, same UID as bao), keeps cursors beside it.
            o.mount("audit", AUDIT_DIR, read_only=False),
            o.mount("ship-config", "/etc/clawql/ship"),
            *pin_mounts("audit-hsm-pin", "audit-hsm-state", AUDIT_PIN_DIR),
        ],
    )
    volumes = [
        o.configmap_volume("ship-config", f"{OPENBAO}-audit-ship"),
        o.secret_store_volume("audit-hsm-pin", spec.audit_hsm_pin_provider),
        o.memory_dir("audit-hsm-state", "1Mi"),
    ]
    return ship, volumes


def openbao_objects(spec: K8sSpec) -> list[dict[str, Any]]:
    ns = spec.namespace
    addr = f"$(POD_NAME).{INTERNAL}.{ns}.svc"
    node_names = [
        f"${{POD_NAME}}.{INTERNAL}.{ns}.svc",
        spec.svc(OPENBAO),
        f"{OPENBAO}-internal.{ns}.svc",
    ]
    bao = o.container(
        "openbao",
        spec.openbao_image,
        ["bao", "server", "-config=/openbao/config/openbao.hcl"],
        # The audit file_path is relative: identical config on every pod (ADR 0003).
        working_dir="/openbao",
        env=[
            o.env_field("POD_NAME", "metadata.name"),
            {"name": "BAO_RAFT_NODE_ID", "value": "$(POD_NAME)"},
            {"name": "BAO_API_ADDR", "value": f"https://{addr}:{OPENBAO_API_PORT}"},
            {"name": "BAO_CLUSTER_ADDR", "value": f"https://{addr}:{OPENBAO_CLUSTER_PORT}"},
        ],
        ports=[("api", OPENBAO_API_PORT), ("cluster", OPENBAO_CLUSTER_PORT)],
        probe=o.http_probe(
            "/v1/sys/health?standbyok=true&sealedcode=204&uninitcode=204",
            OPENBAO_API_PORT,
            https=True,
        ),
        readiness=o.http_probe("/v1/sys/health?standbyok=true", OPENBAO_API_PORT, https=True),
        res=o.resources("250m", "256Mi", "2", "1Gi"),
        mounts=[
            o.mount("config", "/openbao/config"),
            o.mount("data", "/openbao/data", read_only=False),
            o.mount("audit", AUDIT_DIR, read_only=False),
            o.mount("tls", str(TLS_DIR)),
            o.mount("seal-tls", str(SEAL_TLS_DIR)),
            o.mount("trust", o.TRUST_DIR),
        ],
    )
    sidecar, sidecar_volumes = _audit_sidecar(spec)
    volumes = [
        o.configmap_volume("config", f"{OPENBAO}-config"),
        o.cert_volume(
            "tls", spec, spec.node_issuer, dns=node_names, usages="server auth,client auth"
        ),
        o.cert_volume(
            "seal-tls",
            spec,
            spec.seal_issuer,
            uris=[SEAL_URI_PREFIX + "${POD_NAME}"],
            usages="client auth",
        ),
        o.trust_volume([NODES_CA] + ([INTERNAL_CA] if spec.audit_transport != "ship" else [])),
        *sidecar_volumes,
    ]
    pod = o.pod_spec(
        OPENBAO,
        [bao, sidecar],
        volumes,
        affinity=o.spread(OPENBAO, required=True),
        terminationGracePeriodSeconds=30,
    )
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": o.meta(OPENBAO, ns, OPENBAO),
        "spec": {
            "serviceName": INTERNAL,
            "replicas": spec.replicas,
            "podManagementPolicy": "Parallel",
            # Upgrades are done by hand, standbys first and the leader last (operations §7).
            "updateStrategy": {"type": "OnDelete"},
            "selector": {"matchLabels": o.selector(OPENBAO)},
            "template": {"metadata": {"labels": o.labels(OPENBAO)}, "spec": pod},
            "volumeClaimTemplates": [
                o.pvc_template("data", spec.storage_size, spec.storage_class),
                o.pvc_template("audit", spec.audit_size, spec.storage_class),
            ],
        },
    }
    if spec.audit_transport == "fluent-bit":
        sidecar_config = o.configmap(
            f"{OPENBAO}-fluent-bit", ns, OPENBAO, {"fluent-bit.conf": fluent_bit_config(spec)}
        )
    else:
        sidecar_config = o.configmap(
            f"{OPENBAO}-audit-ship",
            ns,
            OPENBAO,
            {
                f"{OPENBAO}-{i}.json": json.dumps(ship_config(spec, f"{OPENBAO}-{i}"), indent=2)
                for i in range(spec.replicas)
            },
        )
    metrics_ports = (
        [("ship-metrics", SHIPPER_METRICS_PORT)] if spec.audit_transport == "ship" else []
    )
    out = [
        o.service_account(OPENBAO, ns, OPENBAO),
        o.configmap(f"{OPENBAO}-config", ns, OPENBAO, {"openbao.hcl": node_hcl(spec)}),
        sidecar_config,
        # Peers find each other by DNS before they are ready (raft join needs it).
        o.service(
            INTERNAL,
            ns,
            OPENBAO,
            [("api", OPENBAO_API_PORT), ("cluster", OPENBAO_CLUSTER_PORT)],
            headless=True,
            publishNotReadyAddresses=True,
        ),
        o.service(OPENBAO, ns, OPENBAO, [("api", OPENBAO_API_PORT)]),
        statefulset,
        o.pdb(OPENBAO, ns, OPENBAO, 1),
    ]
    if metrics_ports:
        out.insert(
            5,
            o.service(
                f"{OPENBAO}-metrics",
                ns,
                OPENBAO,
                metrics_ports,
                headless=True,
                extra_labels={"clawql.io/metrics": "audit-shipper"},
            ),
        )
    return out


def bridge_config(spec: K8sSpec) -> dict[str, Any]:
    return {
        "lib_path": spec.pkcs11_library,
        "token_label": spec.hsm_token_label,
        "pin_file": f"{HSM_PIN_DIR}/pin",
        "host": "0.0.0.0",  # noqa: S104
        "port": BRIDGE_PORT,
        "tls_cert": "/var/run/clawql/tls/tls.crt",
        "tls_key": "/var/run/clawql/tls/tls.key",
        "client_ca": f"{o.TRUST_DIR}/{SEAL_CLIENT_CA}",
        "allowed_uri_prefix": SEAL_URI_PREFIX,
    }


def bridge_objects(spec: K8sSpec) -> list[dict[str, Any]]:
    ns = spec.namespace
    bridge = o.container(
        "bridge",
        spec.image,
        ["clawql-secrets", "hsm", "serve", "--config", "/etc/clawql/bridge.json"],
        ports=[("transit", BRIDGE_PORT)],
        probe=o.http_probe("/v1/health", BRIDGE_PORT, https=True),
        res=o.resources("100m", "128Mi", "1", "512Mi"),
        mounts=[
            o.mount("bridge-config", "/etc/clawql/bridge.json", sub_path="bridge.json"),
            # Bootstrap trust: the HSM user PIN, from the organisation's secret store.
            *pin_mounts("hsm-pin", "hsm-state", HSM_PIN_DIR),
            o.mount("tls", "/var/run/clawql/tls"),
            o.mount("trust", o.TRUST_DIR),
        ],
    )
    volumes = [
        o.configmap_volume("bridge-config", BRIDGE),
        o.secret_store_volume("hsm-pin", spec.hsm_pin_provider),
        o.memory_dir("hsm-state", "1Mi"),
        o.cert_volume("tls", spec, spec.node_issuer, dns=[spec.svc(BRIDGE)]),
        o.trust_volume([SEAL_CLIENT_CA]),
    ]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": o.meta(BRIDGE, ns, BRIDGE),
        "spec": {
            # One writer per PKCS#11 token; OpenBao nodes restart until it is back.
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": o.selector(BRIDGE)},
            "template": {
                "metadata": {"labels": o.labels(BRIDGE)},
                "spec": o.pod_spec(BRIDGE, [bridge], volumes),
            },
        },
    }
    return [
        o.service_account(BRIDGE, ns, BRIDGE),
        o.configmap(BRIDGE, ns, BRIDGE, {"bridge.json": json.dumps(bridge_config(spec), indent=2)}),
        o.service(BRIDGE, ns, BRIDGE, [("transit", BRIDGE_PORT)]),
        deployment,
    ]
