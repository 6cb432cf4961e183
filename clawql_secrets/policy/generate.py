"""One least-privilege ACL policy per agent role (pure).

Every grant is scoped by identity templates to the calling agent's own tenant
and agent id, read from its alias on the agents' JWT mount (the alias
metadata comes from the session JWT through claim mappings that are the same
on every role, see ``provision.render.CLAIM_MAPPINGS``). Explicit ``deny``
blocks close the paths an agent must never reach even if another policy
granted them by mistake.
"""

from __future__ import annotations

from clawql_secrets.cluster.redis_registry import MOUNT as REGISTRY_MOUNT
from clawql_secrets.policy.hcl import quote
from clawql_secrets.provision.model import AgentRole, DesiredState
from clawql_secrets.provision.render import (
    DB_MOUNT,
    KV_MOUNT,
    PKI_INT,
    PKI_ROOT,
    db_role_name,
    pki_role_name,
    tpl,
)

POLICY_PREFIX = "agent-"

DENIED = (
    "sys/*",
    "auth/+/role/*",
    "auth/+/config",
    f"{KV_MOUNT}/data/tenants/+/admin/*",
    f"{KV_MOUNT}/metadata/*",
    f"{KV_MOUNT}/delete/*",
    f"{KV_MOUNT}/destroy/*",
    f"{DB_MOUNT}/config/*",
    f"{DB_MOUNT}/roles/*",
    f"{DB_MOUNT}/rotate-root/*",
    f"{DB_MOUNT}/rotate-role/*",
    f"{PKI_ROOT}/*",
    f"{PKI_INT}/roles/*",
    f"{PKI_INT}/root/*",
    f"{PKI_INT}/intermediate/*",
    "identity/entity/*",
    "identity/entity-alias/*",
    "identity/group/*",
    "identity/oidc/key/*",
    "identity/oidc/role/*",
    "identity/oidc/config",
    # The gateway's session registry (ADR 0011): its Redis users are the gateway's alone.
    f"{REGISTRY_MOUNT}/*",
)


def _block(path: str, caps: list[str]) -> str:
    return f"path {quote(path)} {{\n  capabilities = [{', '.join(quote(c) for c in caps)}]\n}}\n"


def policy_for(state: DesiredState, role: AgentRole, accessor: str) -> str:
    tenant, agent = tpl(accessor, "tenant"), tpl(accessor, "agent")
    parts = [
        f"# {role.policy_name}: generated from the desired state for agent role "
        f"{role.name!r}.\n# Change it with `clawql-secrets policy propose`, never by hand.\n"
    ]
    for name in role.secrets:
        parts.append(_block(f"{KV_MOUNT}/data/tenants/{tenant}/agents/{agent}/{name}", ["read"]))
    for conn in sorted({g.connection for g in role.databases}):
        parts.append(_block(f"{DB_MOUNT}/creds/{db_role_name(role.name, tenant, conn)}", ["read"]))
    if role.cert_sans and state.pki is not None:
        parts.append(
            _block(f"{PKI_INT}/issue/{pki_role_name(role.name, tenant)}", ["create", "update"])
        )
    if role.cloud_role is not None:
        parts.append(_block(f"identity/oidc/token/{role.cloud_role}", ["read"]))
    parts.append("# Explicit denies: nothing here is ever an agent's business.\n")
    parts.extend(_block(p, ["deny"]) for p in DENIED)
    return "\n".join(parts)


def generate(state: DesiredState, accessor: str) -> dict[str, str]:
    """Policy name → HCL for every agent role."""
    return {r.policy_name: policy_for(state, r, accessor) for r in state.roles}
