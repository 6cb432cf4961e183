"""The session registry's Redis: TLS only, ``default`` user off, no static password.

ADR 0011 in Kubernetes terms (ADR 0013 says what differs from the local
stack). One pod, four containers:

- ``certs-init`` (init) and ``certs-renewer`` (sidecar): the server certificate
  from OpenBao's ``pki_int`` (``clawql-secrets certs``), key made in the pod,
  kept in memory. Redis reads its certificate at start only, so the renewer
  reloads it by SIGTERM (the pod shares its process namespace; Redis's
  append-only file keeps the data across the restart).
- ``keeper`` (a native sidecar, started before Redis): makes the admin
  password in its memory, writes the ACL file Redis loads (hash only), and
  hands the password to OpenBao, which rotates it at once, at every start of
  Redis (``keeper.py``).
- ``redis``: ``port 0``, ``tls-port``, ``aclfile``, append-only persistence.
"""

from __future__ import annotations

import json
from typing import Any, Final

import yaml

from clawql_secrets.cluster.k8s import objects as o
from clawql_secrets.cluster.k8s.openbao import INTERNAL_CA, NODES_CA, peer
from clawql_secrets.cluster.k8s.spec import (
    OPENBAO_CLIENT_LABEL,
    REDIS,
    REDIS_PORT,
    RENEWER_METRICS_PORT,
    K8sSpec,
)

TLS_DIR: Final = "/var/run/clawql/redis-tls"
ACL_DIR: Final = "/var/run/clawql/registry-acl"
RUN_DIR: Final = "/run/redis"
KEEPER = ["python", "-m", "clawql_secrets.cluster.k8s.keeper"]
# Redis reloads its certificate only by restarting: a day-long certificate renewed
# at two thirds of its life restarts Redis every 16 hours (docs/kubernetes.md).
REDIS_CERT_TTL: Final = 86400


def redis_conf() -> str:
    lines = [
        "# The gateway's session registry (ADR 0011, ADR 0013): TLS only, no password here.",
        "bind 0.0.0.0",
        "protected-mode yes",
        "port 0",
        f"tls-port {REDIS_PORT}",
        f"tls-cert-file {TLS_DIR}/tls.crt",
        f"tls-key-file {TLS_DIR}/tls.key",
        f"tls-ca-cert-file {TLS_DIR}/ca.crt",
        "tls-auth-clients no",
        'tls-protocols "TLSv1.2 TLSv1.3"',
        "daemonize no",
        f"pidfile {RUN_DIR}/redis.pid",
        'logfile ""',
        "dir /data",
        "appendonly yes",
        "appendfsync everysec",
        'save ""',
        f"aclfile {ACL_DIR}/users.acl",
        "acl-pubsub-default resetchannels",
        "enable-debug-command no",
        "enable-module-command no",
        "enable-protected-configs no",
    ]
    return "\n".join(lines) + "\n"


def certs_config(
    spec: K8sSpec, name: str, pki_role: str, dns: str, directory: str, reload: dict[str, Any] | None
) -> dict[str, Any]:
    """certs.yaml of a renewer beside one service (docs/certs.md)."""
    service: dict[str, Any] = {
        "name": name,
        "pki_role": pki_role,
        "common_name": dns,
        "ttl": REDIS_CERT_TTL,
        "key_file": f"{directory}/tls.key",
        "cert_file": f"{directory}/tls.crt",
        "ca_file": f"{directory}/ca.crt",
    }
    if reload is not None:
        service["reload"] = reload
    return {
        "openbao": {
            "addrs": [peer(spec, i) for i in range(spec.replicas)],
            "ca_file": f"{o.TRUST_DIR}/{NODES_CA}",
        },
        "identity": {
            "mount": "workload",
            "role": "certs-renewer",
            "jwt_file": f"{o.TOKEN_DIR}/token",
        },
        "services": [service],
        "metrics": {"host": "0.0.0.0", "port": RENEWER_METRICS_PORT},  # noqa: S104
    }


def keeper_config(spec: K8sSpec) -> dict[str, Any]:
    return {
        "openbao": {
            "addrs": [peer(spec, i) for i in range(spec.replicas)],
            "ca_file": f"{o.TRUST_DIR}/{NODES_CA}",
        },
        "identity": {
            "mount": "workload",
            "role": "registry-keeper",
            "jwt_file": f"{o.TOKEN_DIR}/token",
        },
        "redis": {"host": spec.svc(REDIS), "port": REDIS_PORT, "ca_file": f"{TLS_DIR}/ca.crt"},
        "acl_file": f"{ACL_DIR}/users.acl",
    }


def renewer_containers(
    spec: K8sSpec, cert_mount: dict[str, Any], extra_mounts: list[dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``certs run --once`` (init) and ``certs run`` (sidecar), as docs/operations.md §5."""
    mounts = [
        o.mount("certs-config", "/etc/clawql/certs.yaml", sub_path="certs.yaml"),
        o.mount("trust", o.TRUST_DIR),
        o.mount("openbao-token", o.TOKEN_DIR),
        cert_mount,
        *extra_mounts,
    ]
    run = ["clawql-secrets", "certs", "run", "--config", "/etc/clawql/certs.yaml"]
    check = ["clawql-secrets", "certs", "check", "--config", "/etc/clawql/certs.yaml"]
    init = o.container("certs-init", spec.image, [*run, "--once"], mounts=mounts)
    sidecar = o.container(
        "certs-renewer",
        spec.image,
        run,
        ports=[("renewer-metrics", RENEWER_METRICS_PORT)],
        probe=o.exec_probe(check),
        mounts=mounts,
    )
    return init, sidecar


def registry_objects(spec: K8sSpec) -> list[dict[str, Any]]:
    ns = spec.namespace
    dns = spec.svc(REDIS)
    certs = certs_config(
        spec,
        "registry",
        spec.registry_pki_role,
        dns,
        TLS_DIR,
        {"signal": "TERM", "pid_file": f"{RUN_DIR}/redis.pid"},
    )
    tls_rw = o.mount("redis-tls", TLS_DIR, read_only=False)
    init, renewer = renewer_containers(spec, tls_rw, [o.mount("run", RUN_DIR, read_only=False)])
    keeper = o.container(
        "keeper",
        spec.image,
        [*KEEPER, "serve", "--config", "/etc/clawql/keeper.json"],
        uid=o.KEEPER_UID,  # its memory holds the password: not ptrace-able by the others
        probe=o.exec_probe([*KEEPER, "check", "--config", "/etc/clawql/keeper.json"]),
        mounts=[
            o.mount("keeper-config", "/etc/clawql/keeper.json", sub_path="keeper.json"),
            o.mount("acl", ACL_DIR, read_only=False),
            o.mount("redis-tls", TLS_DIR),
            o.mount("trust", o.TRUST_DIR),
            o.mount("openbao-token", o.TOKEN_DIR),
        ],
    )
    keeper["restartPolicy"] = "Always"  # a native sidecar: up before Redis starts
    keeper["startupProbe"] = {
        "exec": {"command": [*KEEPER, "check", "--config", "/etc/clawql/keeper.json"]},
        "periodSeconds": 2,
        "failureThreshold": 30,
    }
    redis = o.container(
        "redis",
        spec.redis_image,
        ["redis-server", "/etc/redis/redis.conf"],
        ports=[("redis", REDIS_PORT)],
        probe=o.tcp_probe(REDIS_PORT),
        res=o.resources("100m", "128Mi", "1", "1Gi"),
        mounts=[
            o.mount("redis-config", "/etc/redis"),
            o.mount("data", "/data", read_only=False),
            o.mount("redis-tls", TLS_DIR),
            o.mount("acl", ACL_DIR),
            o.mount("run", RUN_DIR, read_only=False),
        ],
    )
    volumes = [
        o.configmap_volume("redis-config", REDIS, ["redis.conf"]),
        o.configmap_volume("certs-config", REDIS, ["certs.yaml"]),
        o.configmap_volume("keeper-config", REDIS, ["keeper.json"]),
        o.memory_dir("redis-tls", "1Mi"),
        o.memory_dir("acl", "1Mi"),
        o.memory_dir("run", "1Mi"),
        o.trust_volume([NODES_CA, INTERNAL_CA]),
        o.openbao_token_volume(),
    ]
    pod = o.pod_spec(
        REDIS,
        [redis, renewer],
        volumes,
        initContainers=[init, keeper],
        # The renewer restarts Redis (SIGTERM by pid file) to load a new certificate.
        shareProcessNamespace=True,
    )
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": o.meta(REDIS, ns, REDIS),
        "spec": {
            "serviceName": REDIS,
            "replicas": 1,
            "selector": {"matchLabels": o.selector(REDIS)},
            "template": {
                "metadata": {"labels": {**o.labels(REDIS), OPENBAO_CLIENT_LABEL: "true"}},
                "spec": pod,
            },
            "volumeClaimTemplates": [o.pvc_template("data", spec.redis_size, spec.storage_class)],
        },
    }
    return [
        o.service_account(REDIS, ns, REDIS),
        o.configmap(
            REDIS,
            ns,
            REDIS,
            {
                "redis.conf": redis_conf(),
                "certs.yaml": yaml.safe_dump(certs, sort_keys=False),
                "keeper.json": json.dumps(keeper_config(spec), indent=2),
            },
        ),
        o.service(REDIS, ns, REDIS, [("redis", REDIS_PORT)]),
        o.service(
            f"{REDIS}-metrics",
            ns,
            REDIS,
            [("renewer-metrics", RENEWER_METRICS_PORT)],
            headless=True,
            extra_labels={"clawql.io/metrics": "certs-renewer"},
        ),
        statefulset,
    ]
