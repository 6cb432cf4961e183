"""A minimal, real OpenBao + PostgreSQL configuration for the gateway's live tests.

TO BE REPLACED by ``provision apply`` (clawql_secrets/provision, in progress)
once it lands: this module exists only so the gateway can be tested against
the real thing now. It does what the desired state will do for one agent
role, and nothing with a root token:

- as the PROVISIONER identity: a ``sessions`` JWT auth mount trusting the
  session issuer's key (ES256 only), one role per agent role (bound audience,
  bound claims ``agent_role`` and ``tenant``, user claim ``sub`` =
  ``tenant/agent``, claim mappings, batch tokens); a ``database`` mount with a
  PostgreSQL connection whose password is rotated at once (``rotate-root``),
  and one dynamic role per (agent role, tenant) confined to the tenant's
  schema, whose revocation terminates the user's backends and drops it;
- as the APPROVAL_CONTROLLER identity: the agent role's identity-templated
  policy (``database/creds/<role>-<tenant of the caller's entity alias>``),
  then its binding to the role (``token_policies``, which the provisioner may
  not set; ADR 0007), as ``policy apply`` does.

PostgreSQL side (as the local superuser, test-only): a database, an admin
role for the engine (its password is rotated by OpenBao right away), one
schema per tenant with a table.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass

import psycopg
from psycopg import sql

from clawql_secrets.cluster import bootstrap
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.issuer import LocalIssuer
from clawql_secrets.policy.binding import bind_agent_roles

PG_HOST, PG_PORT = "127.0.0.1", 5432
SESSIONS_MOUNT = "sessions"
DB_MOUNT = "database"
CONNECTION = "pg"


@dataclass(frozen=True)
class PGFixture:
    run_id: str
    dbname: str
    admin: str
    tenants: tuple[str, ...]

    @property
    def user_prefix(self) -> str:
        return f"cgw{self.run_id}-"


def _superuser(dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        host=PG_HOST, port=PG_PORT, user="postgres", dbname=dbname, autocommit=True
    )


def setup_postgres(tenants: tuple[str, ...]) -> tuple[PGFixture, str]:
    """The database, schemas and engine admin; returns the admin's first password."""
    run_id = secrets.token_hex(4)
    fx = PGFixture(run_id, f"clawql_gw_{run_id}", f"clawql_gw_admin_{run_id}", tenants)
    password = secrets.token_urlsafe(24)
    with _superuser() as c:
        c.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
                sql.Identifier(fx.admin), sql.Literal(password)
            )
        )
        c.execute(sql.SQL("GRANT pg_signal_backend TO {}").format(sql.Identifier(fx.admin)))
        c.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(fx.dbname), sql.Identifier(fx.admin)
            )
        )
        c.execute(
            sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(fx.dbname))
        )
    with psycopg.connect(
        host=PG_HOST,
        port=PG_PORT,
        user=fx.admin,
        password=password,
        dbname=fx.dbname,
        autocommit=True,
    ) as c:
        for t in tenants:
            schema = sql.Identifier(f"t_{t}")
            c.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
            c.execute(
                sql.SQL("CREATE TABLE {}.items (id int PRIMARY KEY, name text)").format(schema)
            )
            c.execute(
                sql.SQL(
                    "INSERT INTO {}.items SELECT g, {} || g FROM generate_series(1, 50) g"
                ).format(schema, sql.Literal(f"{t}-row-"))
            )
    return fx, password


def teardown_postgres(fx: PGFixture) -> None:
    with _superuser() as c:
        c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [fx.dbname]
        )
        c.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(fx.dbname))
        )
        rows = c.execute(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE %s", [fx.user_prefix + "%"]
        ).fetchall()
        for (name,) in rows:
            c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [name]
            )
            c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(str(name))))
        c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(fx.admin)))


def db_role(agent_role: str, tenant: str) -> str:
    return f"{agent_role}-{tenant}"


def _statements(fx: PGFixture, tenant: str) -> tuple[list[str], list[str]]:
    schema, db = f'"t_{tenant}"', f'"{fx.dbname}"'
    create = [
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' "
        "VALID UNTIL '{{expiration}}' CONNECTION LIMIT 8;",
        f'GRANT CONNECT ON DATABASE {db} TO "{{{{name}}}}";',
        f'GRANT USAGE ON SCHEMA {schema} TO "{{{{name}}}}";',
        f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO "{{{{name}}}}";',
        f'ALTER ROLE "{{{{name}}}}" SET search_path = {schema};',
    ]
    revoke = [
        f'REVOKE ALL PRIVILEGES ON ALL TABLES IN SCHEMA {schema} FROM "{{{{name}}}}";',
        f'REVOKE USAGE ON SCHEMA {schema} FROM "{{{{name}}}}";',
        f'REVOKE CONNECT ON DATABASE {db} FROM "{{{{name}}}}";',
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';",
        'DROP ROLE IF EXISTS "{{name}}";',
    ]
    return create, revoke


def configure(
    client: OpenBaoClient,
    workload: LocalIssuer,
    sessions: LocalIssuer,
    fx: PGFixture,
    admin_password: str,
    *,
    agent_role: str,
    audience: str,
) -> str:
    """Apply the configuration; returns the sessions mount accessor."""
    prov = bootstrap.login(client, workload, bootstrap.PROVISIONER)
    try:

        def w(path: str, body: dict[str, object]) -> None:
            client.request("POST", path, body=body, token=prov, retry_for=30)

        w(f"sys/auth/{SESSIONS_MOUNT}", {"type": "jwt", "description": "agent sessions"})
        w(
            f"auth/{SESSIONS_MOUNT}/config",
            {
                "jwt_validation_pubkeys": [sessions.public_pem()],
                "bound_issuer": sessions.issuer,
                "jwt_supported_algs": ["ES256"],
            },
        )
        w(
            f"auth/{SESSIONS_MOUNT}/role/{agent_role}",
            {
                "role_type": "jwt",
                "bound_audiences": [audience],
                "user_claim": "sub",
                "bound_claims": {"agent_role": [agent_role], "tenant": list(fx.tenants)},
                "claim_mappings": {"tenant": "tenant", "agent_role": "agent_role", "sid": "sid"},
                "token_type": "batch",
                "token_ttl": "1h",
                "token_max_ttl": "1h",
                # No token_policies: the provisioner is denied them (ADR 0007).
            },
        )
        w(f"sys/mounts/{DB_MOUNT}", {"type": "database"})
        roles = [db_role(agent_role, t) for t in fx.tenants]
        w(
            f"{DB_MOUNT}/config/{CONNECTION}",
            {
                "plugin_name": "postgresql-database-plugin",
                "connection_url": (
                    f"postgresql://{{{{username}}}}:{{{{password}}}}@{PG_HOST}:{PG_PORT}/"
                    f"{fx.dbname}?sslmode=disable"
                ),
                "username": fx.admin,
                "password": admin_password,
                "allowed_roles": roles,
                "username_template": fx.user_prefix + "{{random 20}}",
                "verify_connection": True,
            },
        )
        w(f"{DB_MOUNT}/rotate-root/{CONNECTION}", {})
        for t in fx.tenants:
            create, revoke = _statements(fx, t)
            w(
                f"{DB_MOUNT}/roles/{db_role(agent_role, t)}",
                {
                    "db_name": CONNECTION,
                    "creation_statements": create,
                    "revocation_statements": revoke,
                    "default_ttl": "1h",
                    "max_ttl": "1h",
                },
            )
        mounts = client.request("GET", "sys/auth", token=prov)
        accessor = str((mounts.get("data") or mounts)[f"{SESSIONS_MOUNT}/"]["accessor"])
    finally:
        with contextlib.suppress(Exception):
            client.request("POST", "auth/token/revoke-self", token=prov, retry_for=2)
    controller = bootstrap.login(client, workload, bootstrap.APPROVAL_CONTROLLER)
    try:
        tenant = f"{{{{identity.entity.aliases.{accessor}.metadata.tenant}}}}"
        hcl = f'path "{DB_MOUNT}/creds/{agent_role}-{tenant}" {{ capabilities = ["read"] }}\n'
        client.request(
            "POST",
            f"sys/policies/acl/agent-{agent_role}",
            body={"policy": hcl},
            token=controller,
            retry_for=30,
        )
        bind_agent_roles(client, controller, SESSIONS_MOUNT)
    finally:
        with contextlib.suppress(Exception):
            client.request("POST", "auth/token/revoke-self", token=controller, retry_for=2)
    return accessor
