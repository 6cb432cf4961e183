"""Production output: the whole secrets plane as Kubernetes manifests (ADR 0013).

``render`` is pure (``cluster/k8s/``); ``write`` puts one file per component
in a directory, ready for ``kubectl apply -f DIR``. No Kubernetes Secret is
ever generated or referenced: keys are made in the pods that use them
(cert-manager's CSI driver, the certificate renewer), bootstrap trust (HSM
PINs, the gateway's exchange key, the witness key) is mounted from the
organisation's secret store by the Secrets Store CSI driver, identities to
OpenBao are projected service-account tokens, and the registry Redis's admin
password is made in memory and known only to OpenBao (docs/kubernetes.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from clawql_secrets.cluster.k8s import audit, gateway, monitoring, network, openbao, registry
from clawql_secrets.cluster.k8s import objects as o
from clawql_secrets.cluster.k8s.spec import OPENBAO_CLIENT_LABEL, K8sSpec
from clawql_secrets.errors import ConfigError
from clawql_secrets.validation import describe_validation_error

__all__ = ["OPENBAO_CLIENT_LABEL", "K8sSpec", "files", "load_values", "node_hcl", "render", "write"]

node_hcl = openbao.node_hcl


def files(spec: K8sSpec) -> dict[str, list[dict[str, Any]]]:
    """File name -> the objects in it, in apply order."""
    out = {
        "00-namespace.yaml": [o.namespace(spec.namespace)],
        "10-openbao.yaml": openbao.openbao_objects(spec),
        "20-hsm-bridge.yaml": openbao.bridge_objects(spec),
        "30-registry.yaml": registry.registry_objects(spec),
        "40-gateway.yaml": gateway.gateway_objects(spec),
        "50-witness.yaml": audit.witness_objects(spec),
        "70-monitoring.yaml": monitoring.monitoring_objects(spec),
        "80-network-policies.yaml": network.network_policies(spec),
    }
    if spec.audit_transport == "fluent-bit":
        out["60-audit-ingest.yaml"] = audit.ingest_objects(spec)
    return dict(sorted(out.items()))


def render(spec: K8sSpec) -> list[dict[str, Any]]:
    return [obj for objs in files(spec).values() for obj in objs]


def write(spec: K8sSpec, out_dir: Path) -> list[Path]:
    """Write every file (and the node HCL, for review); returns the paths written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name, objs in files(spec).items():
            path = out_dir / name
            path.write_text(yaml.safe_dump_all(objs, sort_keys=False))
            written.append(path)
        hcl_path = out_dir / "openbao.hcl"
        hcl_path.write_text(node_hcl(spec))
    except OSError as exc:
        raise ConfigError(f"cannot write the manifests to {out_dir} ({exc.strerror})") from exc
    return [*written, hcl_path]


def load_values(path: Path | None, **overrides: Any) -> K8sSpec:
    """A ``K8sSpec`` from a YAML/JSON values file, command-line ``overrides`` on top."""
    raw: Any = {}
    if path is not None:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"the values file {path} cannot be read as YAML") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"the values file {path} is not a mapping")
    values = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return TypeAdapter(K8sSpec).validate_python(values)
    except ValidationError as exc:
        raise ConfigError(
            f"render-k8s values are invalid: {describe_validation_error(exc)}",
            fix="see docs/kubernetes.md (values)",
        ) from exc
