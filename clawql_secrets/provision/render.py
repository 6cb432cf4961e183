"""Desired state → the OpenBao objects it means (pure).

Each ``Obj`` is one thing at one OpenBao path: what to write (``body``) and the
fields compared with what OpenBao reports (``compare``, normalised the same
way the live projection is). Nothing secret is in an ``Obj``: a database
connection's admin password is read from the environment by the adapter at
the moment it writes the connection, and rotated away right after.

Some values need the agents' JWT mount accessor (identity templates in
certificate SANs and identity-token claims); until the mount exists a
placeholder stands in, and ``apply`` renders again once it does.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clawql_secrets.cluster.kv import KV_MAX_VERSIONS
from clawql_secrets.cluster.kv import KV_MOUNT as KV_MOUNT
from clawql_secrets.names import SESSION_ROLE_SUFFIX
from clawql_secrets.provision import statements
from clawql_secrets.provision.model import AgentRole, Database, DbGrant, DesiredState, Service

ACCESSOR_PLACEHOLDER = "<accessor-of-agents-mount>"
DB_MOUNT = "database"
PKI_ROOT = "pki"
PKI_INT = "pki_int"
# Every role on the mount maps the same claims: alias metadata is last-login-wins,
# so one role without a mapping would wipe ``tenant`` for every token of the entity.
# The acting gateway rides along so that the token's metadata, and so every audit
# entry of the call, names both the agent and the gateway. The session id is mapped
# on the anchor role only (SESSION_CLAIM_MAPPINGS): alias metadata is stored on the
# entity, so a per-call value would cost a raft write per call whenever one agent has
# two sessions at once; templates read tenant and agent only.
CLAIM_MAPPINGS = {
    "tenant": "tenant",
    "agent": "agent",
    "agent_role": "agent_role",
    "/act/sub": "actor",
}
SESSION_CLAIM_MAPPINGS = {**CLAIM_MAPPINGS, "sid": "sid"}

# Creation order; deletes run in reverse.
ORDER = (
    "auth-mount",
    "mount",
    "kv-config",
    "jwt-config",
    "jwt-role",
    "pki-root-ca",
    "pki-int-ca",
    "pki-role",
    "db-connection",
    "db-role",
    "oidc-config",
    "oidc-key",
    "oidc-role",
)
UNORDERED = frozenset(
    {
        "allowed_domains",
        "bound_audiences",
        "token_bound_cidrs",
        "allowed_roles",
        "allowed_client_ids",
        "jwt_validation_pubkeys",
        "jwt_supported_algs",
        "allowed_uri_sans",
        "key_usage",
        "ext_key_usage",
    }
)


@dataclass(frozen=True)
class Obj:
    kind: str
    path: str
    body: Mapping[str, Any]
    compare: Mapping[str, Any] = field(default_factory=dict)
    # Objects created once and never updated in place (mounts' types, CAs).
    create_only: bool = False

    @property
    def order(self) -> int:
        return ORDER.index(self.kind)


def normalise(key: str, value: Any) -> Any:
    """The comparable form of one field, identical for desired and live values."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list | tuple):
        items = [normalise(key, v) for v in value]
        return sorted(items, key=str) if key in UNORDERED else items
    if isinstance(value, Mapping):
        return {
            k: sorted(normalise(k, v), key=str) if isinstance(v, list | tuple) else normalise(k, v)
            for k, v in sorted(value.items())
        }
    return value


def _obj(
    kind: str,
    path: str,
    body: Mapping[str, Any],
    *,
    keys: tuple[str, ...] | None = None,
    create_only: bool = False,
) -> Obj:
    compare_keys = keys if keys is not None else tuple(body)
    return Obj(
        kind,
        path,
        body,
        {k: normalise(k, body[k]) for k in compare_keys},
        create_only,
    )


def tpl(accessor: str, key: str) -> str:
    """An identity template reading the agent's alias metadata on the agents' mount."""
    return "{{identity.entity.aliases." + accessor + ".metadata." + key + "}}"


def db_role_name(role: str, tenant: str, connection: str) -> str:
    return f"{tenant}-{role}-{connection}"


def pki_role_name(role: str, tenant: str) -> str:
    return f"{tenant}-{role}"


# -- SQL ----------------------------------------------------------------------
# Every identifier below comes from a validated name ([a-z][a-z0-9_]*), and is
# still quoted; ``{{name}}``/``{{password}}``/``{{expiration}}`` are filled in
# by OpenBao's database plugin.
def _db_statements(
    state: DesiredState, db: Database, g: DbGrant, schema: str
) -> tuple[list[str], list[str]]:
    """Creation and revocation statements (``provision.statements``): connections only
    to its own database on PostgreSQL; on MariaDB accounts only at the gateways'
    addresses (``exchange.bound_cidrs``), every account found dropped at revocation."""
    if db.engine == "postgresql":
        s = statements.postgresql(schema, g.privileges, database=db.database)
    else:
        s = statements.mariadb(
            schema, g.privileges, hosts=mariadb_hosts(state.exchange.bound_cidrs)
        )
    return list(s.creation), list(s.revocation)


def mariadb_hosts(cidrs: tuple[str, ...]) -> tuple[str, ...]:
    """MariaDB account hosts for the gateways' CIDR blocks (``'%'`` when none is given)."""
    out = []
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr)
        if net.prefixlen == net.max_prefixlen:
            out.append(str(net.network_address))
        else:  # MariaDB's host/netmask form
            out.append(f"{net.network_address}/{net.netmask}")
    return tuple(out) or ("%",)


def connection_url(db: Database) -> str:
    if db.engine == "postgresql":
        return (
            f"postgresql://{{{{username}}}}:{{{{password}}}}@{db.host}:{db.port}/{db.database}"
            f"?sslmode={db.sslmode}"
        )
    return f"{{{{username}}}}:{{{{password}}}}@tcp({db.host}:{db.port})/"


PLUGINS = {"postgresql": "postgresql-database-plugin", "mariadb": "mysql-database-plugin"}


def render(state: DesiredState, accessor: str | None = None) -> list[Obj]:
    """All objects, in creation order."""
    acc = accessor or ACCESSOR_PLACEHOLDER
    si = state.exchange
    out: list[Obj] = []
    # JWT auth for agents: it trusts the gateway's exchange key only (ADR 0010).
    out.append(_obj("auth-mount", f"sys/auth/{si.mount}", {"type": "jwt"}, create_only=True))
    cfg: dict[str, Any] = {"bound_issuer": si.issuer, "jwt_supported_algs": list(si.algorithms)}
    if si.jwks_url:
        cfg["jwks_url"] = si.jwks_url
    else:
        cfg["jwt_validation_pubkeys"] = [k.strip() + "\n" for k in si.public_keys or ()]
    out.append(_obj("jwt-config", f"auth/{si.mount}/config", cfg))
    for role in state.roles:
        for name, role_body in jwt_roles(state, role).items():
            out.append(_obj("jwt-role", f"auth/{si.mount}/role/{name}", role_body))
    # KV v2 for injected secrets (bootstrap creates it; we insist on its type and
    # on keeping no older version of any secret).
    out.append(
        _obj(
            "mount",
            f"sys/mounts/{KV_MOUNT}",
            {"type": "kv", "options": {"version": "2"}},
            create_only=True,
        )
    )
    out.append(_obj("kv-config", f"{KV_MOUNT}/config", {"max_versions": KV_MAX_VERSIONS}))
    # Database engine.
    if state.databases:
        out.append(_obj("mount", f"sys/mounts/{DB_MOUNT}", {"type": "database"}, create_only=True))
    for db in state.databases:
        allowed = sorted(
            db_role_name(r.name, t, db.name)
            for r in state.roles
            for g in r.databases
            if g.connection == db.name
            for t in r.tenants
        )
        body: dict[str, Any] = {
            "plugin_name": PLUGINS[db.engine],
            "connection_url": connection_url(db),
            "username": db.username,
            "allowed_roles": allowed,
            "verify_connection": True,
        }
        out.append(
            _obj(
                "db-connection",
                f"{DB_MOUNT}/config/{db.name}",
                body,
                keys=("plugin_name", "connection_url", "username", "allowed_roles"),
            )
        )
    for role in state.roles:
        for g in role.databases:
            db = state.database(g.connection)
            for tenant in role.tenants:
                schema = g.schema_for(tenant)
                create, revoke = _db_statements(state, db, g, schema)
                out.append(
                    _obj(
                        "db-role",
                        f"{DB_MOUNT}/roles/{db_role_name(role.name, tenant, db.name)}",
                        {
                            "db_name": db.name,
                            "creation_statements": create,
                            "revocation_statements": revoke,
                            "default_ttl": db.credential_ttl,
                            "max_ttl": db.credential_max_ttl,
                        },
                    )
                )
    # PKI: root, intermediate, one client-cert role per (role, tenant), one
    # server+client role per internal service.
    if state.pki is not None:
        p = state.pki
        out.append(
            _obj(
                "mount",
                f"sys/mounts/{PKI_ROOT}",
                {"type": "pki", "config": {"max_lease_ttl": p.root_ttl}},
                keys=("type",),
                create_only=True,
            )
        )
        out.append(
            _obj(
                "mount",
                f"sys/mounts/{PKI_INT}",
                {"type": "pki", "config": {"max_lease_ttl": p.intermediate_ttl}},
                keys=("type",),
                create_only=True,
            )
        )
        out.append(
            _obj(
                "pki-root-ca",
                f"{PKI_ROOT}/cert/ca",
                {"common_name": p.root_common_name, "ttl": p.root_ttl, "present": True},
                keys=("present",),
                create_only=True,
            )
        )
        out.append(
            _obj(
                "pki-int-ca",
                f"{PKI_INT}/cert/ca",
                {
                    "common_name": p.intermediate_common_name,
                    "ttl": p.intermediate_ttl,
                    "present": True,
                },
                keys=("present",),
                create_only=True,
            )
        )
        for role in state.roles:
            if not role.cert_sans:
                continue
            for tenant in role.tenants:
                sans = [
                    s.replace("{tenant}", tenant).replace("{agent}", tpl(acc, "agent"))
                    for s in role.cert_sans
                ]
                out.append(
                    _obj(
                        "pki-role",
                        f"{PKI_INT}/roles/{pki_role_name(role.name, tenant)}",
                        {
                            "allowed_uri_sans": sans,
                            "allowed_uri_sans_template": True,
                            "allow_any_name": False,
                            "allowed_domains": [],
                            "allow_subdomains": False,
                            "allow_ip_sans": False,
                            "require_cn": False,
                            "client_flag": True,
                            "server_flag": False,
                            "key_type": "ec",
                            "key_bits": 256,
                            "ttl": p.client_ttl,
                            "max_ttl": p.client_max_ttl,
                            "no_store": True,
                        },
                    )
                )
        for svc in state.services:
            out.append(_obj("pki-role", f"{PKI_INT}/roles/{svc.pki_role}", service_role(svc)))
    # Identity tokens for cloud federation.
    if state.cloud is not None:
        c = state.cloud
        out.append(_obj("oidc-config", "identity/oidc/config", {"issuer": c.issuer}))
        out.append(
            _obj(
                "oidc-key",
                f"identity/oidc/key/{c.key}",
                {
                    "algorithm": "ES256",
                    "allowed_client_ids": sorted(r.audience for r in c.roles) or ["none"],
                    "verification_ttl": max([r.ttl for r in c.roles] + [3600]),
                    "rotation_period": 86400,
                },
            )
        )
        # OpenBao substitutes each template as a JSON value: it goes in unquoted.
        template = (
            "{"
            + ", ".join(
                f"{json.dumps(k)}: {tpl(acc, k)}" for k in ("agent", "agent_role", "tenant")
            )
            + "}"
        )
        for cr in c.roles:
            out.append(
                _obj(
                    "oidc-role",
                    f"identity/oidc/role/{cr.name}",
                    {"key": c.key, "client_id": cr.audience, "ttl": cr.ttl, "template": template},
                )
            )
    return sorted(out, key=lambda o: o.order)


def service_role(svc: Service) -> dict[str, Any]:
    """Server and client certificates for exactly the service's names, keys made elsewhere.

    Names match exactly: no subdomain, glob, wildcard, localhost or IP. The
    certificate renewer signs CSRs with it (``pki_int/sign/svc-*``).
    """
    return {
        "allowed_domains": list(dict.fromkeys((svc.common_name, *svc.dns_sans))),
        "allow_bare_domains": True,
        "allow_subdomains": False,
        "allow_glob_domains": False,
        "allow_wildcard_certificates": False,
        "allow_any_name": False,
        "allow_localhost": False,
        "allow_ip_sans": False,
        "enforce_hostnames": True,
        "allowed_uri_sans": list(svc.uri_sans),
        "allowed_uri_sans_template": False,
        "server_flag": True,
        "client_flag": True,
        "key_type": "ec",
        "key_bits": 256,
        "ttl": svc.ttl,
        "max_ttl": svc.ttl,
        "no_store": True,
    }


def jwt_roles(state: DesiredState, role: AgentRole) -> dict[str, dict[str, Any]]:
    """The agent role's two JWT roles on the agents' mount (ADR 0010).

    ``<role>``: per-call batch tokens living ``call_token_ttl`` (no raft write,
    never revocable, so seconds-lived); ``<role>.session``: the session's anchor,
    a service token created with the short ``anchor_ttl`` that the gateway sets to
    the session's remaining life at once (never beyond ``max_session``); the leases
    of the session's credentials hang off it. Both take the gateway's exchange
    assertions only: audience, actor (``/act/sub``), tenant and role are bound, and
    the claims the audit log needs (tenant, agent, role, session, actor) are mapped.
    """
    x = state.exchange
    common: dict[str, Any] = {
        "role_type": "jwt",
        "bound_audiences": [x.audience],
        "bound_claims": {
            "tenant": sorted(role.tenants),
            "agent_role": [role.name],
            "/act/sub": [x.actor],
        },
        "bound_claims_type": "string",
        "user_claim": x.user_claim,
        "claim_mappings": dict(CLAIM_MAPPINGS),
        # No token_policies: the provisioner is denied that parameter on every auth
        # path; the approval controller binds agent-<role> (ADR 0007).
        "token_no_default_policy": False,
        "token_bound_cidrs": list(x.bound_cidrs),
        # An assertion is dead at its own exp (OpenBao's default leeway is 150 s):
        # a replay outlives the gateway's intent by nothing. clock_skew_leeway widens
        # exp too (measured), so it is off; nbf gets a few seconds, and the gateway
        # backdates iat/nbf by as much for skew between its clock and OpenBao's.
        "expiration_leeway": -1,
        "not_before_leeway": 5,
        "clock_skew_leeway": -1,
    }
    # An assertion names what it is for: one signed for a call cannot open an anchor
    # (a service token its holder could renew), and the other way round.
    call = {
        **common,
        "bound_claims": {**common["bound_claims"], "use": ["call"]},
        "token_type": "batch",
        "token_ttl": x.call_token_ttl,
        "token_max_ttl": x.call_token_ttl,
    }
    anchor = {
        **common,
        "bound_claims": {**common["bound_claims"], "use": ["session"]},
        "claim_mappings": dict(SESSION_CLAIM_MAPPINGS),
        "token_type": "service",
        "token_ttl": min(x.anchor_ttl, role.max_session),
        "token_max_ttl": role.max_session,
    }
    return {role.name: call, role.name + SESSION_ROLE_SUFFIX: anchor}
