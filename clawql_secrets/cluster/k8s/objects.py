"""Building blocks every workload shares, so that none can drift from the policy.

Every pod is ``restricted`` under the Pod Security Standards: non-root with a
high UID, read-only root filesystem, no privilege escalation, every capability
dropped, seccomp ``RuntimeDefault``, no service-account token unless a
projected one with an audience is asked for. Credentials reach pods through
volumes that are not Kubernetes Secrets: keys made in the pod
(``csi.cert-manager.io``), bootstrap trust from the organisation's secret
store (``secrets-store.csi.k8s.io``), short-lived projected tokens, and
in-memory ``emptyDir`` for what a pod makes itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from clawql_secrets.cluster.k8s.spec import NAME_LABEL, PART_OF, K8sSpec

Obj = dict[str, Any]

# One UID per trust domain inside a pod; files shared between containers are the
# pod's fsGroup. 10000+ keeps clear of host users (and of images' own users).
UID: Final = 10001
KEEPER_UID: Final = 10002
# Public trust anchors and session/admin JWKS, written by the operator (not credentials).
TRUST_CONFIGMAP: Final = "clawql-trust"
OPENBAO_AUDIENCE: Final = "openbao"
TOKEN_DIR: Final = "/var/run/secrets/openbao"
TRUST_DIR: Final = "/etc/clawql/trust"

RESTRICTED: Final[Obj] = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def labels(component: str) -> dict[str, str]:
    return {NAME_LABEL: component, **PART_OF}


def selector(component: str) -> dict[str, str]:
    return {NAME_LABEL: component}


def meta(name: str, namespace: str, component: str, **extra: Any) -> Obj:
    out: Obj = {"name": name, "namespace": namespace, "labels": labels(component)}
    out.update(extra)
    return out


def pod_security(uid: int = UID) -> Obj:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def resources(cpu: str, memory: str, cpu_limit: str, memory_limit: str) -> Obj:
    return {
        "requests": {"cpu": cpu, "memory": memory},
        "limits": {"cpu": cpu_limit, "memory": memory_limit},
    }


SMALL: Final = resources("50m", "64Mi", "500m", "256Mi")


def container(
    name: str,
    image: str,
    command: Sequence[str],
    *,
    ports: Sequence[tuple[str, int]] = (),
    mounts: Sequence[Obj] = (),
    env: Sequence[Obj] = (),
    probe: Obj | None = None,
    readiness: Obj | None = None,
    res: Obj = SMALL,
    uid: int | None = None,
    working_dir: str | None = None,
) -> Obj:
    """A container under the restricted profile; ``probe`` is liveness (and readiness
    unless ``readiness`` differs)."""
    out: Obj = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",  # the reference is a digest: same bytes
        "command": list(command),
    }
    if working_dir:
        out["workingDir"] = working_dir
    if env:
        out["env"] = list(env)
    if ports:
        out["ports"] = [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in ports]
    if probe is not None:
        out["livenessProbe"] = probe
        out["readinessProbe"] = readiness if readiness is not None else probe
    out["resources"] = res
    sc = dict(RESTRICTED)
    if uid is not None:
        sc.update({"runAsUser": uid, "runAsGroup": uid})
    out["securityContext"] = sc
    if mounts:
        out["volumeMounts"] = list(mounts)
    return out


def pod_spec(
    service_account: str, containers: Sequence[Obj], volumes: Sequence[Obj], **extra: Any
) -> Obj:
    spec: Obj = {
        "serviceAccountName": service_account,
        # No API token anywhere; the pods that log in to OpenBao get a projected,
        # audience-bound token volume instead.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security(),
        **extra,
        "containers": list(containers),
    }
    if volumes:
        spec["volumes"] = list(volumes)
    return spec


def mount(name: str, path: str, *, read_only: bool = True, sub_path: str | None = None) -> Obj:
    out: Obj = {"name": name, "mountPath": path, "readOnly": read_only}
    if sub_path:
        out["subPath"] = sub_path
    return out


def env_field(name: str, path: str) -> Obj:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


# -- probes -----------------------------------------------------------------------


def http_probe(path: str, port: int, *, https: bool = False, period: int = 10) -> Obj:
    get: Obj = {"path": path, "port": port}
    if https:
        get["scheme"] = "HTTPS"
    return {"httpGet": get, "periodSeconds": period, "timeoutSeconds": 3, "failureThreshold": 3}


def tcp_probe(port: int, period: int = 10) -> Obj:
    return {"tcpSocket": {"port": port}, "periodSeconds": period, "timeoutSeconds": 3}


def exec_probe(command: Sequence[str], period: int = 30) -> Obj:
    return {"exec": {"command": list(command)}, "periodSeconds": period, "timeoutSeconds": 10}


# -- volumes ------------------------------------------------------------------------


def configmap_volume(name: str, configmap: str, items: Sequence[str] = ()) -> Obj:
    source: Obj = {"name": configmap, "defaultMode": 0o444}
    if items:
        source["items"] = [{"key": k, "path": k} for k in items]
    return {"name": name, "configMap": source}


def trust_volume(items: Sequence[str]) -> Obj:
    """The public trust anchors a pod needs, and only those (``clawql-trust``)."""
    return configmap_volume("trust", TRUST_CONFIGMAP, items)


def openbao_token_volume() -> Obj:
    """A projected service-account token for OpenBao's ``workload`` mount only (10 min)."""
    return {
        "name": "openbao-token",
        "projected": {
            "defaultMode": 0o440,
            "sources": [
                {
                    "serviceAccountToken": {
                        "path": "token",
                        "audience": OPENBAO_AUDIENCE,
                        "expirationSeconds": 600,
                    }
                }
            ],
        },
    }


def memory_dir(name: str, size: str = "16Mi") -> Obj:
    return {"name": name, "emptyDir": {"medium": "Memory", "sizeLimit": size}}


def secret_store_volume(name: str, provider: str) -> Obj:
    """Bootstrap trust from the organisation's secret store (Secrets Store CSI driver).

    The SecretProviderClass must not sync to a Kubernetes Secret (no ``secretObjects``).
    """
    return {
        "name": name,
        "csi": {
            "driver": "secrets-store.csi.k8s.io",
            "readOnly": True,
            "volumeAttributes": {"secretProviderClass": provider},
        },
    }


def cert_volume(
    name: str,
    spec: K8sSpec,
    issuer: str,
    *,
    dns: Sequence[str] = (),
    uris: Sequence[str] = (),
    usages: str = "server auth",
    duration: str = "24h",
) -> Obj:
    """A certificate whose key is generated in the pod by cert-manager's CSI driver.

    ``${POD_NAME}`` and ``${POD_NAMESPACE}`` are expanded by the driver per pod.
    """
    attrs = {
        "csi.cert-manager.io/issuer-name": issuer,
        "csi.cert-manager.io/issuer-kind": spec.issuer_kind,
        "csi.cert-manager.io/issuer-group": "cert-manager.io",
        "csi.cert-manager.io/key-usages": usages,
        "csi.cert-manager.io/duration": duration,
        "csi.cert-manager.io/fs-group": str(UID),
    }
    if dns:
        attrs["csi.cert-manager.io/common-name"] = dns[0]
        attrs["csi.cert-manager.io/dns-names"] = ",".join(dns)
    if uris:
        attrs["csi.cert-manager.io/uri-sans"] = ",".join(uris)
    return {
        "name": name,
        "csi": {"driver": "csi.cert-manager.io", "readOnly": True, "volumeAttributes": attrs},
    }


def pvc_template(name: str, size: str, storage_class: str | None) -> Obj:
    spec: Obj = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if storage_class:
        spec["storageClassName"] = storage_class
    return {"metadata": {"name": name}, "spec": spec}


# -- small objects -----------------------------------------------------------------


def configmap(name: str, namespace: str, component: str, data: Mapping[str, str]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(name, namespace, component),
        "data": dict(data),
    }


def service_account(name: str, namespace: str, component: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(name, namespace, component),
        "automountServiceAccountToken": False,
    }


def service(
    name: str,
    namespace: str,
    component: str,
    ports: Sequence[tuple[str, int]],
    *,
    headless: bool = False,
    extra_labels: Mapping[str, str] | None = None,
    **spec_extra: Any,
) -> Obj:
    m = meta(name, namespace, component)
    if extra_labels:
        m["labels"].update(extra_labels)
    spec: Obj = {
        "selector": selector(component),
        "ports": [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p in ports],
        **spec_extra,
    }
    if headless:
        spec["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service", "metadata": m, "spec": spec}


def pdb(name: str, namespace: str, component: str, max_unavailable: int = 1) -> Obj:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(name, namespace, component),
        "spec": {
            "maxUnavailable": max_unavailable,
            "selector": {"matchLabels": selector(component)},
        },
    }


def namespace(name: str) -> Obj:
    """A namespace that admits restricted pods only (Pod Security Admission)."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {
                **PART_OF,
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
                "pod-security.kubernetes.io/audit": "restricted",
                "pod-security.kubernetes.io/warn": "restricted",
            },
        },
    }


def spread(component: str, *, required: bool) -> Obj:
    """Pod anti-affinity on hosts: required for raft voters, preferred elsewhere."""
    term = {
        "labelSelector": {"matchLabels": selector(component)},
        "topologyKey": "kubernetes.io/hostname",
    }
    if required:
        return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": term}
            ]
        }
    }
