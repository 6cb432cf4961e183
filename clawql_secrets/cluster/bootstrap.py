"""First start of a cluster: initialise, hand out recovery shares, drop root.

Order matters and is the point of this module:

1. ``sys/init`` with recovery shares (auto-unseal: the HSM bridge holds the
   root key's wrapping key; recovery shares gate root-token generation).
2. Each recovery share is encrypted at once to one holder's age public key and
   written; the clear shares are dropped.
3. With the initial root token (memory only, never on disk): tune autopilot,
   enable KV v2 keeping one version per key, the ``workload`` JWT auth mount
   trusting the platform's workload issuer, the service identities
   (operator, break-glass, provisioner, approval controller, gateway, secrets
   writer, registry keeper), each a role bound to one subject, and the
   session registry's own database mount (``clawql-registry``) with its roles
   (ADR 0011): not the agents' ``database`` mount, so neither the provisioner
   nor any agent policy reaches it.
4. Revoke the root token. From here on every identity comes from a JWT login.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from clawql_secrets import holders
from clawql_secrets.cluster import kv, redis_registry
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.errors import OpenBaoError
from clawql_secrets.issuer import LocalIssuer

WORKLOAD_MOUNT = "workload"
WORKLOAD_AUDIENCE = "openbao"


@dataclass(frozen=True)
class WorkloadIdentity:
    """A service identity: a JWT role on the ``workload`` mount bound to one subject."""

    role: str
    subject: str
    policy: str
    hcl: str


# The operator runs the cluster; it can neither write policies (only the approval
# controller can) nor read any tenant's secrets.
OPERATOR = WorkloadIdentity(
    role="operator",
    subject="clawql-operator",
    policy="clawql-operator",
    hcl="""\
# clawql-operator: cluster health and the operations KV area, nothing else.
path "sys/storage/raft/autopilot/state" { capabilities = ["read"] }
path "sys/storage/raft/configuration" { capabilities = ["read"] }
path "sys/storage/raft/snapshot" { capabilities = ["read"] }
path "secret/data/ops/*" { capabilities = ["create", "read", "update", "delete"] }
path "secret/metadata/ops/*" { capabilities = ["read", "list", "delete"] }
path "sys/policies/*" { capabilities = ["deny"] }
path "sys/policy/*" { capabilities = ["deny"] }
""",
)

# Starting root-token generation needs this identity AND a quorum of recovery shares.
BREAKGLASS = WorkloadIdentity(
    role="breakglass",
    subject="clawql-breakglass",
    policy="clawql-breakglass",
    hcl="""\
path "sys/generate-root-token/attempt" { capabilities = ["read", "update", "delete"] }
path "sys/generate-root-token/update" { capabilities = ["update"] }
""",
)

# The provisioner applies desired state (mounts, auth roles, engines). It reads
# policies to diff them but cannot write one, and cannot use what it configures:
# no credentials, certificates, identity tokens or injected secret values.
PROVISIONER = WorkloadIdentity(
    role="provisioner",
    subject="clawql-provisioner",
    policy="clawql-provisioner",
    hcl="""\
path "sys/mounts" { capabilities = ["read", "list"] }
path "sys/mounts/*" { capabilities = ["create", "read", "update", "delete", "list"] }
path "sys/auth" { capabilities = ["read", "list"] }
path "sys/auth/*" { capabilities = ["create", "read", "update", "delete", "sudo"] }
path "sys/policies/acl" { capabilities = ["list"] }
path "sys/policies/acl/*" { capabilities = ["read", "list"] }
# Which policies a login carries is part of an approved change, never the
# provisioner's: it may not set them on any role, user or group of any auth
# mount, new ones included (an empty list denies the parameter whatever its
# value: JSON list, string, comma-separated string). See ADR 0007. A CEL role's
# program sets its logins' policies itself (OpenBao 2.7 has CEL roles on every JWT
# mount): no cel_program either. (A deny on "auth/+/cel/*" would not do: "auth/*"
# outranks a path with a "+" segment, and ACL paths do not merge.)
path "auth/*" {
  capabilities = ["create", "read", "update", "delete", "list"]
  denied_parameters = {
    "token_policies" = []
    "policies" = []
    "cel_program" = []
  }
}
path "auth/token/*" { capabilities = ["deny"] }
path "database/*" { capabilities = ["create", "read", "update", "delete", "list"] }
path "database/creds/*" { capabilities = ["deny"] }
path "pki*" { capabilities = ["create", "read", "update", "delete", "list"] }
path "pki/issue/*" { capabilities = ["deny"] }
path "pki_int/issue/*" { capabilities = ["deny"] }
# Nor sign leaf certificates for itself (root/sign-intermediate stays: it sets up
# the intermediate; see ADR 0007 for that residual power).
path "pki/sign/*" { capabilities = ["deny"] }
path "pki_int/sign/*" { capabilities = ["deny"] }
path "pki/sign-verbatim*" { capabilities = ["deny"] }
path "pki_int/sign-verbatim*" { capabilities = ["deny"] }
path "pki/issuer/+/sign/*" { capabilities = ["deny"] }
path "pki_int/issuer/+/sign/*" { capabilities = ["deny"] }
path "pki/issuer/+/issue/*" { capabilities = ["deny"] }
path "pki_int/issuer/+/issue/*" { capabilities = ["deny"] }
path "pki/issuer/+/sign-verbatim*" { capabilities = ["deny"] }
path "pki_int/issuer/+/sign-verbatim*" { capabilities = ["deny"] }
path "identity/oidc/*" { capabilities = ["create", "read", "update", "delete", "list"] }
path "identity/oidc/token/*" { capabilities = ["deny"] }
# A key's own max_versions would override the mount's upwards: not the provisioner's to set.
path "secret/metadata/*" {
  capabilities = ["create", "read", "update", "delete", "list"]
  denied_parameters = { "max_versions" = [] }
}
# The KV mount's max_versions (one: a rotated secret keeps no older version).
path "secret/config" { capabilities = ["read", "update"] }
path "sys/policies/acl/*" { capabilities = ["read", "list"] }
# The service identities' own mount and the change-control records are not provisioned.
path "auth/workload/*" { capabilities = ["deny"] }
path "sys/auth/workload" { capabilities = ["deny"] }
# "sys/auth/workload/" (trailing slash) and ".../tune" are other paths to the same mount.
path "sys/auth/workload/*" { capabilities = ["deny"] }
path "secret/metadata/clawql-change/*" { capabilities = ["deny"] }
# The gateway's session registry is bootstrap's (ADR 0011): not provisioned, not readable.
path "sys/mounts/clawql-registry" { capabilities = ["deny"] }
path "sys/mounts/clawql-registry/*" { capabilities = ["deny"] }
path "clawql-registry/*" { capabilities = ["deny"] }
""",
)

# Only the approval controller writes policies, after two distinct approvals.
APPROVAL_CONTROLLER = WorkloadIdentity(
    role="approval-controller",
    subject="clawql-approval-controller",
    policy="clawql-approval-controller",
    hcl="""\
path "sys/policies/acl" { capabilities = ["list"] }
path "sys/policies/acl/*" { capabilities = ["create", "read", "update", "delete", "list"] }
path "sys/policies/acl/clawql-*" { capabilities = ["deny"] }
path "sys/auth" { capabilities = ["read"] }
path "identity/entity/id/*" { capabilities = ["read"] }
# Binding an applied agent-<role> policy to the agents' JWT role <role> (ADR 0007):
# only existing roles ("update", no "create"), only their token_policies.
path "auth/+/role/*" {
  capabilities = ["read", "update", "list"]
  allowed_parameters = {
    "role_type" = ["jwt"]
    "token_policies" = []
  }
}
path "auth/workload/*" { capabilities = ["deny"] }
path "secret/data/clawql-change/*" { capabilities = ["read"] }
path "secret/data/clawql-change/applied/*" { capabilities = ["create", "read"] }
path "secret/metadata/clawql-change/*" { capabilities = ["read", "list"] }
""",
)

# People taking part in policy change control (authors and approvers) log in as
# themselves: this role is bound to a claim, not a subject, and the alias name is
# the person's subject. They create records only under their own entity id.
CHANGE_PARTICIPANT = WorkloadIdentity(
    role="change-participant",
    subject="",
    policy="clawql-change-participant",
    hcl="""\
path "secret/data/clawql-change/proposals/{{identity.entity.id}}/*" {
  capabilities = ["create", "read"]
}
path "secret/data/clawql-change/approvals/+/{{identity.entity.id}}" {
  capabilities = ["create", "read"]
}
path "secret/data/clawql-change/rejections/+/{{identity.entity.id}}" {
  capabilities = ["create", "read"]
}
path "secret/data/clawql-change/*" { capabilities = ["read"] }
path "secret/metadata/clawql-change/*" { capabilities = ["read", "list"] }
path "sys/policies/acl/*" { capabilities = ["read"] }
path "sys/auth" { capabilities = ["read"] }
""",
)
CHANGE_PARTICIPANT_CLAIM = "clawql_role"

# The gateway's own identity: it ends sessions (revokes their leases and their anchor
# tokens by id/accessor) and records anomaly revocations (create-only). The one
# credential it obtains for itself is its session registry's Redis user (ADR 0011);
# the agents' come from agent tokens OpenBao issues per call against the gateway's
# exchange assertions (ADR 0010), so OpenBao re-checks authorization on every tool
# call. Leases are bounded to their session by the token that made them.
GATEWAY = WorkloadIdentity(
    role="gateway",
    subject="clawql-gateway",
    policy="clawql-gateway",
    hcl=f"""\
path "sys/leases/lookup" {{ capabilities = ["update"] }}
path "sys/leases/revoke" {{ capabilities = ["update"] }}
path "secret/data/clawql-anomalies/*" {{ capabilities = ["create"] }}
path "auth/token/revoke-accessor" {{ capabilities = ["update"] }}
path "auth/token/lookup-accessor" {{ capabilities = ["update"] }}
path "{redis_registry.CREDS_PATH}" {{ capabilities = ["read"] }}
""",
)

# Whatever starts the registry's Redis (``cluster/redis_registry.py``) made its admin
# password and hands it to OpenBao, then has OpenBao rotate it (ADR 0011). It may set
# where OpenBao finds that Redis and the password, nothing else: the plugin, TLS, the
# admin user and the roles are pinned (OpenBao compares pinned values as strings), and
# it can neither read the connection back nor issue, list or revoke credentials.
REGISTRY_KEEPER = WorkloadIdentity(
    role="registry-keeper",
    subject="clawql-registry-keeper",
    policy="clawql-registry-keeper",
    hcl=f"""\
path "{redis_registry.MOUNT}/config/{redis_registry.CONNECTION}" {{
  capabilities = ["create", "update"]
  allowed_parameters = {{
    "plugin_name" = ["redis-database-plugin"]
    "username" = ["{redis_registry.ADMIN_USER}"]
    "tls" = ["true"]
    "allowed_roles" = ["{",".join(redis_registry.ROLES)}"]
    "verify_connection" = ["true"]
    "host" = []
    "port" = []
    "ca_cert" = []
    "password" = []
  }}
}}
path "{redis_registry.MOUNT}/rotate-root/{redis_registry.CONNECTION}" {{
  capabilities = ["update"]
}}
""",
)

# Operators set agents' injected secrets (`agent-secret put`) as this identity. It
# writes a new version of one agent's named secret and nothing else: it cannot read a
# value back (not even its own), list names, delete or destroy versions, touch
# metadata or any other path. "+" (one segment) rather than "*": deeper paths are
# nobody's secret (agent policies read exactly .../agents/<agent>/<name>).
SECRETS_WRITER = WorkloadIdentity(
    role="secrets-writer",
    subject="clawql-secrets-writer",
    policy="clawql-secrets-writer",
    hcl="""\
path "secret/data/tenants/+/agents/+/+" { capabilities = ["create", "update"] }
path "sys/*" { capabilities = ["deny"] }
""",
)

# The renewer of internal services' certificates (`clawql-secrets certs run`): it
# signs CSRs whose keys never leave the services' hosts; `issue` (OpenBao would
# generate the key) and every other mount are not granted. Services' PKI roles are
# named svc-<service> on pki_int (docs/certs.md).
CERTS_RENEWER = WorkloadIdentity(
    role="certs-renewer",
    subject="clawql-certs-renewer",
    policy="clawql-certs-renewer",
    hcl="""\
path "pki_int/sign/svc-*" { capabilities = ["update"] }
path "sys/*" { capabilities = ["deny"] }
""",
)

IDENTITIES = (
    OPERATOR,
    BREAKGLASS,
    PROVISIONER,
    APPROVAL_CONTROLLER,
    GATEWAY,
    CHANGE_PARTICIPANT,
    SECRETS_WRITER,
    CERTS_RENEWER,
    REGISTRY_KEEPER,
)


@dataclass(frozen=True)
class InitResult:
    share_files: tuple[Path, ...]


def initialise(
    client: OpenBaoClient,
    node_addr: str,
    *,
    shares: int,
    threshold: int,
    recipients: list[str],
    recovery_dir: Path,
    issuer: LocalIssuer,
) -> InitResult:
    """Run steps 1-4 above against an uninitialised cluster."""
    if len(recipients) != shares:
        raise OpenBaoError(f"{shares} recovery shares need {shares} holders, got {len(recipients)}")
    parsed = holders.parse_recipients(recipients)  # fail before init
    # 1. init
    resp = client.request(
        "PUT",
        "sys/init",
        body={"recovery_shares": shares, "recovery_threshold": threshold},
        node=node_addr,
        retry_for=30,
    )
    root = str(resp.get("root_token", ""))
    keys = list(resp.get("recovery_keys_base64") or [])
    resp.clear()
    if not root or len(keys) != shares:
        raise OpenBaoError("OpenBao's init answer lacks the root token or recovery shares")
    # 2. shares to holders, at once
    recovery_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = []
    for i, (key_b64, rcpt) in enumerate(zip(keys, parsed, strict=True), start=1):
        path = recovery_dir / f"recovery-share-{i}.age"
        path.write_bytes(holders.encrypt_to(rcpt, base64.b64decode(key_b64)))
        files.append(path)
    keys.clear()
    # 3. configure with root, then 4. revoke it, even if 3 failed.
    try:
        _configure(client, root, issuer)
    finally:
        client.request("POST", "auth/token/revoke-self", token=root, retry_for=30)
    return InitResult(tuple(files))


def _configure(client: OpenBaoClient, root: str, issuer: LocalIssuer) -> None:
    def w(path: str, body: dict[str, object]) -> None:
        client.request("POST", path, body=body, token=root, retry_for=30)

    # Joiners become voters after server_stabilization_time (10 s by default).
    w(
        "sys/storage/raft/autopilot/configuration",
        {"server_stabilization_time": "2s", "cleanup_dead_servers": False},
    )
    w(f"sys/mounts/{kv.KV_MOUNT}", {"type": "kv", "options": {"version": "2"}})
    # Safe before any apply: a put permanently deletes the value it replaces.
    kv.write_config(client, root, {"max_versions": kv.KV_MAX_VERSIONS})
    w("sys/auth/" + WORKLOAD_MOUNT, {"type": "jwt", "description": "platform workload identities"})
    w(
        f"auth/{WORKLOAD_MOUNT}/config",
        {"jwt_validation_pubkeys": [issuer.public_pem()], "bound_issuer": issuer.issuer},
    )
    for ident in IDENTITIES:
        w(f"sys/policies/acl/{ident.policy}", {"policy": ident.hcl})
        bound: dict[str, object] = (
            {"bound_subject": ident.subject}
            if ident.subject
            else {"bound_claims": {CHANGE_PARTICIPANT_CLAIM: [ident.role]}}
        )
        w(
            f"auth/{WORKLOAD_MOUNT}/role/{ident.role}",
            {
                "role_type": "jwt",
                "bound_audiences": [WORKLOAD_AUDIENCE],
                **bound,
                "user_claim": "sub",
                "token_policies": [ident.policy],
                "token_ttl": "15m",
                "token_max_ttl": "1h",
                "token_type": "service",
            },
        )
    # The session registry's mount and roles; its connection is the keeper's to write.
    w(
        f"sys/mounts/{redis_registry.MOUNT}",
        {
            "type": "database",
            "description": "the gateway's session registry (ADR 0011)",
            "config": {"default_lease_ttl": "10m", "max_lease_ttl": "15m"},
        },
    )
    for role, body in redis_registry.role_bodies().items():
        w(f"{redis_registry.MOUNT}/roles/{role}", body)


def login(client: OpenBaoClient, issuer: LocalIssuer, identity: WorkloadIdentity) -> str:
    """A short-lived token for ``identity`` from a freshly minted workload JWT."""
    token_jwt = issuer.mint(identity.subject, WORKLOAD_AUDIENCE, ttl=60)
    resp = client.request(
        "POST",
        f"auth/{WORKLOAD_MOUNT}/login",
        body={"role": identity.role, "jwt": token_jwt},
        token="",
    )
    token = str((resp.get("auth") or {}).get("client_token", ""))
    if not token:
        raise OpenBaoError(f"login as {identity.role} returned no token")
    return token


def operator_login(client: OpenBaoClient, issuer: LocalIssuer) -> str:
    return login(client, issuer, OPERATOR)
