"""Which policy an agent's login carries: set by the approval controller only.

The provisioner creates the agents' JWT roles but is denied the parameters
that attach policies to a login (``token_policies``/``policies``, on every
auth path: see ``cluster.bootstrap.PROVISIONER`` and ADR 0007). The binding is
fixed by naming convention, so it follows from the approved change itself:
role ``<role>`` on the agents' mount carries exactly ``agent-<role>`` when
that policy exists in OpenBao (only an approved apply can have written it),
and nothing otherwise.

``bind_agent_roles`` makes every role on the mount match that rule. It only
*updates* roles the provisioner created (the controller may not create or
delete one, nor change any field but ``token_policies``), so it is safe to
rerun at any time, e.g. after the provisioner recreated a role.
"""

from __future__ import annotations

from dataclasses import dataclass

from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.errors import OpenBaoError
from clawql_secrets.names import ROLE_RE as ROLE_RE
from clawql_secrets.names import SESSION_ROLE_SUFFIX
from clawql_secrets.policy.generate import POLICY_PREFIX


@dataclass(frozen=True)
class Binding:
    role: str
    before: tuple[str, ...]
    after: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.role}: {list(self.before)} -> {list(self.after)}"


def _policy_exists(client: OpenBaoClient, token: str, name: str) -> bool:
    try:
        client.read(f"sys/policies/acl/{name}", token=token)
    except OpenBaoError as exc:
        if exc.status == 404:
            return False
        raise
    return True


def _roles(client: OpenBaoClient, token: str, mount: str) -> list[str]:
    try:
        resp = client.request("LIST", f"auth/{mount}/role", token=token)
    except OpenBaoError as exc:
        if exc.status == 404:
            return []
        raise
    return sorted(str(k) for k in (resp.get("data") or {}).get("keys") or [])


def wanted_policies(client: OpenBaoClient, token: str, role: str) -> tuple[str, ...]:
    """What the role's logins must carry: its own approved policy, or nothing.

    ``<role>`` and its session anchor ``<role>.session`` both carry ``agent-<role>``.
    """
    base = role.removesuffix(SESSION_ROLE_SUFFIX)
    if not ROLE_RE.fullmatch(base):
        return ()
    name = POLICY_PREFIX + base
    return (name,) if _policy_exists(client, token, name) else ()


def bind_agent_roles(client: OpenBaoClient, token: str, mount: str) -> list[Binding]:
    """Make each JWT role on ``mount`` carry exactly its ``agent-<role>`` policy.

    ``token`` is the approval controller's. Returns the roles that changed.
    """
    changed: list[Binding] = []
    for role in _roles(client, token, mount):
        path = f"auth/{mount}/role/{role}"
        data = client.read(path, token=token).get("data") or {}
        if data.get("role_type") != "jwt":
            continue
        before = tuple(sorted(str(p) for p in data.get("token_policies") or ()))
        after = wanted_policies(client, token, role)
        if before == after:
            continue
        # role_type must accompany any write (the plugin otherwise assumes an
        # OIDC role); it is the value the role already has.
        client.write(path, {"role_type": "jwt", "token_policies": list(after)}, token=token)
        changed.append(Binding(role, before, after))
    return changed
