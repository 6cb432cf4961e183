"""The capability matrix: generated from the config (pure), run against live OpenBao.

For every agent role and up to two of its tenants, a synthetic agent logs in
for real (a session JWT through the agents' JWT mount) and OpenBao is asked,
with that agent's own token, what it may do on its own paths (allowed) and on
a sibling agent's, another tenant's, the deny blocks' and ``sys/`` paths (all
denied); denied secret paths are also read for real and must answer 403.
Every login must also carry exactly ``default`` and the role's own
``agent-<role>`` policy (bound by the approval controller, ADR 0007): no other
policy, and not none.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.errors import OpenBaoError, SecurityError
from clawql_secrets.policy.generate import DENIED, POLICY_PREFIX
from clawql_secrets.provision.model import DesiredState
from clawql_secrets.provision.render import DB_MOUNT, KV_MOUNT, PKI_INT, db_role_name, pki_role_name

Mint = Callable[..., str]


@dataclass(frozen=True)
class Agent:
    tenant: str
    agent: str

    @property
    def subject(self) -> str:
        return f"{self.tenant}/{self.agent}"


@dataclass(frozen=True)
class Case:
    role: str
    agent: Agent
    label: str
    path: str
    capability: str
    allowed: bool
    real_read: bool = False


@dataclass(frozen=True)
class Outcome:
    case: Case
    capabilities: tuple[str, ...]
    status: int | None = None

    @property
    def ok(self) -> bool:
        granted = self.case.capability in self.capabilities and "deny" not in self.capabilities
        if granted != self.case.allowed:
            return False
        if self.status is not None:
            return (self.status != 403) == self.case.allowed
        return True


@dataclass
class MatrixResult:
    outcomes: list[Outcome] = field(default_factory=list)
    login_refusals: list[tuple[str, str, bool]] = field(default_factory=list)  # role, tenant, ok
    # role, subject, the policies the login carried, when not exactly its own
    wrong_policies: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def ok(self) -> bool:
        return (
            bool(self.outcomes)
            and not self.failures
            and not self.wrong_policies
            and all(r[2] for r in self.login_refusals)
        )

    def render(self) -> str:
        lines = []
        for o in self.outcomes:
            mark = "ok  " if o.ok else "FAIL"
            want = "allow" if o.case.allowed else "deny "
            lines.append(
                f"{mark} {o.case.role:<12} {o.case.agent.subject:<20} {want} {o.case.label:<16} "
                f"{o.case.path} caps={list(o.capabilities)}"
                + (f" read={o.status}" if o.status is not None else "")
            )
        for role, subject, got in self.wrong_policies:
            lines.append(
                f"FAIL {role:<12} {subject:<20} login carries {list(got)}, not exactly "
                f"['agent-{role}', 'default'] (run `policy bind` after an approved apply?)"
            )
        for role, tenant, ok in self.login_refusals:
            lines.append(f"{'ok  ' if ok else 'FAIL'} {role:<12} login as tenant {tenant} refused")
        lines.append(f"{len(self.outcomes) - len(self.failures)}/{len(self.outcomes)} cases pass")
        return "\n".join(lines)


def _concrete(pattern: str, tenant: str) -> str:
    return pattern.replace("+", tenant).replace("*", "x")


def build(state: DesiredState) -> list[Case]:
    """Every case for every role (pure); the matrix covers the whole config."""
    cases: list[Case] = []
    for role in state.roles:
        for tenant in role.tenants[:2]:
            me, sib = Agent(tenant, "matrix_a"), Agent(tenant, "matrix_b")
            other_t = next((t.name for t in state.tenants if t.name != tenant), None)

            def add(
                label: str,
                path: str,
                cap: str,
                allowed: bool,
                real: bool = False,
                me: Agent = me,
                role_name: str = role.name,
            ) -> None:
                cases.append(Case(role_name, me, label, path, cap, allowed, real))

            secret = role.secrets[0] if role.secrets else "probe"

            def kv(a: Agent, name: str = secret) -> str:
                return f"{KV_MOUNT}/data/tenants/{a.tenant}/agents/{a.agent}/{name}"

            if role.secrets:
                add("own-secret", kv(me), "read", True, real=True)
            add("sibling-secret", kv(sib), "read", False, real=True)
            for conn in sorted({g.connection for g in role.databases}):
                add(
                    "own-db-creds",
                    f"{DB_MOUNT}/creds/{db_role_name(role.name, tenant, conn)}",
                    "read",
                    True,
                )
            if role.cert_sans and state.pki is not None:
                add(
                    "own-cert",
                    f"{PKI_INT}/issue/{pki_role_name(role.name, tenant)}",
                    "update",
                    True,
                )
            if role.cloud_role:
                add("cloud-token", f"identity/oidc/token/{role.cloud_role}", "read", True)
            add("own-admin", f"{KV_MOUNT}/data/tenants/{tenant}/admin/x", "read", False, True)
            if other_t is not None:
                them = Agent(other_t, "matrix_c")
                add("other-tenant", kv(them), "read", False, real=True)
                add(
                    "other-admin", f"{KV_MOUNT}/data/tenants/{other_t}/admin/x", "read", False, True
                )
                for conn in sorted({g.connection for g in role.databases}):
                    add(
                        "other-db-creds",
                        f"{DB_MOUNT}/creds/{db_role_name(role.name, other_t, conn)}",
                        "read",
                        False,
                        True,
                    )
                if role.cert_sans and state.pki is not None:
                    add(
                        "other-cert",
                        f"{PKI_INT}/issue/{pki_role_name(role.name, other_t)}",
                        "update",
                        False,
                    )
            for pattern in DENIED:
                add("deny-block", _concrete(pattern, other_t or tenant), "read", False)
            add("sys", f"sys/policies/acl/{role.policy_name}", "update", False)
            add("sys", "sys/mounts", "read", False)
    return cases


def run(
    client: OpenBaoClient, state: DesiredState, mint: Mint, cases: list[Case] | None = None
) -> MatrixResult:
    si = state.exchange
    cases = build(state) if cases is None else cases
    result = MatrixResult()
    tokens: dict[tuple[str, Agent], str] = {}

    def login(role: str, a: Agent) -> str:
        # An exchange assertion as the gateway signs it (ADR 0010): the only JWT the
        # agents' mount takes. ``mint`` signs with the gateway's exchange key.
        jwt = mint(
            a.subject,
            si.audience,
            ttl=60,
            tenant=a.tenant,
            agent=a.agent,
            agent_role=role,
            sid=f"matrix-{a.tenant}-{a.agent}",
            act={"sub": si.actor},
            use="call",
        )
        resp = client.request(
            "POST", f"auth/{si.mount}/login", body={"role": role, "jwt": jwt}, token=""
        )
        auth = resp.get("auth") or {}
        tok = str(auth.get("client_token") or "")
        if not tok:
            raise SecurityError(f"login of synthetic agent {a.subject} as {role} gave no token")
        got = tuple(sorted(str(p) for p in auth.get("policies") or ()))
        if got != tuple(sorted(("default", POLICY_PREFIX + role))):
            result.wrong_policies.append((role, a.subject, got))
        return tok

    try:
        by_token: dict[tuple[str, Agent], list[Case]] = {}
        for c in cases:
            by_token.setdefault((c.role, c.agent), []).append(c)
        for (role, agent), group in by_token.items():
            tok = tokens[(role, agent)] = login(role, agent)
            caps: dict[str, Any] = client.write(
                "sys/capabilities-self", {"paths": sorted({c.path for c in group})}, token=tok
            )
            for c in group:
                got = tuple(
                    str(x) for x in caps.get(c.path) or (caps.get("data") or {}).get(c.path) or ()
                )
                status = _read_status(client, c.path, tok) if c.real_read else None
                result.outcomes.append(Outcome(c, got, status))
        for agent_role in state.roles:
            outsiders = [t.name for t in state.tenants if t.name not in agent_role.tenants]
            if outsiders:
                try:
                    login(agent_role.name, Agent(outsiders[0], "matrix_x"))
                    result.login_refusals.append((agent_role.name, outsiders[0], False))
                except OpenBaoError:
                    result.login_refusals.append((agent_role.name, outsiders[0], True))
    finally:
        for tok in tokens.values():
            with contextlib.suppress(OpenBaoError):
                client.request("POST", "auth/token/revoke-self", token=tok)
    return result


def _read_status(client: OpenBaoClient, path: str, token: str) -> int:
    try:
        client.read(path, token=token)
    except OpenBaoError as exc:
        return exc.status or 0
    return 200
