"""First start of a cluster: initialise, hand out recovery shares, drop root.

Order matters and is the point of this module:

1. ``sys/init`` with recovery shares (auto-unseal: the HSM bridge holds the
   root key's wrapping key; recovery shares gate root-token generation).
2. Each recovery share is encrypted at once to one holder's age public key and
   written; the clear shares are dropped.
3. With the initial root token (memory only, never on disk): tune autopilot,
   enable KV v2, the ``workload`` JWT auth mount trusting the platform's
   workload issuer, and the ``clawql-operator`` role and policy.
4. Revoke the root token. From here on every identity comes from a JWT login.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from clawql_secrets import holders
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.errors import OpenBaoError
from clawql_secrets.issuer import LocalIssuer

WORKLOAD_MOUNT = "workload"
WORKLOAD_AUDIENCE = "openbao"
OPERATOR_ROLE = "operator"
OPERATOR_SUBJECT = "clawql-operator"
OPERATOR_POLICY = "clawql-operator"
BREAKGLASS_ROLE = "breakglass"
BREAKGLASS_SUBJECT = "clawql-breakglass"
BREAKGLASS_POLICY = "clawql-breakglass"

# Starting root-token generation needs this identity AND a quorum of recovery shares.
BREAKGLASS_POLICY_HCL = """\
path "sys/generate-root-token/attempt" { capabilities = ["read", "update", "delete"] }
path "sys/generate-root-token/update" { capabilities = ["update"] }
"""

# The operator runs the cluster; it can neither write policies (only the approval
# controller can) nor read any tenant's secrets.
OPERATOR_POLICY_HCL = """\
# clawql-operator: cluster health and the operations KV area, nothing else.
path "sys/storage/raft/autopilot/state" { capabilities = ["read"] }
path "sys/storage/raft/configuration" { capabilities = ["read"] }
path "sys/storage/raft/snapshot" { capabilities = ["read"] }
path "secret/data/ops/*" { capabilities = ["create", "read", "update", "delete"] }
path "secret/metadata/ops/*" { capabilities = ["read", "list", "delete"] }
path "sys/policies/*" { capabilities = ["deny"] }
path "sys/policy/*" { capabilities = ["deny"] }
"""


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
    w("sys/mounts/secret", {"type": "kv", "options": {"version": "2"}})
    w("sys/auth/" + WORKLOAD_MOUNT, {"type": "jwt", "description": "platform workload identities"})
    w(
        f"auth/{WORKLOAD_MOUNT}/config",
        {"jwt_validation_pubkeys": [issuer.public_pem()], "bound_issuer": issuer.issuer},
    )
    w(f"sys/policies/acl/{OPERATOR_POLICY}", {"policy": OPERATOR_POLICY_HCL})
    w(f"sys/policies/acl/{BREAKGLASS_POLICY}", {"policy": BREAKGLASS_POLICY_HCL})
    for role, subject, policy in (
        (OPERATOR_ROLE, OPERATOR_SUBJECT, OPERATOR_POLICY),
        (BREAKGLASS_ROLE, BREAKGLASS_SUBJECT, BREAKGLASS_POLICY),
    ):
        w(
            f"auth/{WORKLOAD_MOUNT}/role/{role}",
            {
                "role_type": "jwt",
                "bound_audiences": [WORKLOAD_AUDIENCE],
                "bound_subject": subject,
                "user_claim": "sub",
                "token_policies": [policy],
                "token_ttl": "15m",
                "token_max_ttl": "1h",
                "token_type": "service",
            },
        )


def operator_login(
    client: OpenBaoClient,
    issuer: LocalIssuer,
    *,
    role: str = OPERATOR_ROLE,
    subject: str = OPERATOR_SUBJECT,
) -> str:
    """A short-lived token from a freshly minted workload JWT (operator by default)."""
    token_jwt = issuer.mint(subject, WORKLOAD_AUDIENCE, ttl=60)
    resp = client.request(
        "POST",
        f"auth/{WORKLOAD_MOUNT}/login",
        body={"role": role, "jwt": token_jwt},
        token="",
    )
    token = str((resp.get("auth") or {}).get("client_token", ""))
    if not token:
        raise OpenBaoError("operator login returned no token")
    return token
