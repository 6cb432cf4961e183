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
from typing import Any

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
                "claim_mappings": {
                    "tenant": "tenant",
                    "agent_role": "agent_role",
                    "sid": "sid",
                    "agent": "agent",
                },
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


# -- tools beyond SQL: PKI, KV v2, Redis (configure_tools) ------------------------
PKI_ROOT, PKI_INT = "pki", "pki_int"
KV_MOUNT = "secret"
REDIS_CONNECTION = "redis"
# A test-only "tenant admin" agent role that may write its tenant's agents' KV
# secrets: nobody else can (the provisioner is denied secret data).
SEEDER_ROLE = "kvseeder"


OIDC_KEY = "aws"
STS_AUDIENCE = "sts.amazonaws.com"


def oidc_role(agent_role: str) -> str:
    return f"{agent_role}-aws"


def pki_role(agent_role: str, tenant: str) -> str:
    return f"{tenant}-{agent_role}"


def redis_role(agent_role: str, tenant: str) -> str:
    return f"redis-{agent_role}-{tenant}"


def uri_san(tenant: str, agent: str) -> str:
    return f"spiffe://clawql/tenant/{tenant}/agent/{agent}"


def _tpl(accessor: str, key: str) -> str:
    return "{{identity.entity.aliases." + accessor + ".metadata." + key + "}}"


def configure_tools(
    client: OpenBaoClient,
    workload: LocalIssuer,
    sessions: LocalIssuer,
    accessor: str,
    tenants: tuple[str, ...],
    *,
    agent_role: str,
    audience: str,
    redis_admin: tuple[str, str] | None = None,
    maria: tuple[MariaFixture, str] | None = None,
    oidc_issuer: str | None = None,
) -> str:
    """PKI root + intermediate and a client-cert role per tenant, a KV seeder role,
    and (with ``redis_admin``) a Redis connection with a role per tenant; the agent
    role's policy is extended to use them. Returns the CA bundle (root + intermediate).
    """
    prov = bootstrap.login(client, workload, bootstrap.PROVISIONER)
    try:

        def w(path: str, body: dict[str, object]) -> dict[str, Any]:
            return client.request("POST", path, body=body, token=prov, retry_for=30) or {}

        w(f"sys/mounts/{PKI_ROOT}", {"type": "pki", "config": {"max_lease_ttl": "87600h"}})
        root = w(
            f"{PKI_ROOT}/root/generate/internal",
            {"common_name": "clawql test root", "key_type": "ec", "key_bits": 256, "ttl": "8760h"},
        )
        root_pem = str(root["data"]["certificate"])
        w(f"sys/mounts/{PKI_INT}", {"type": "pki", "config": {"max_lease_ttl": "4380h"}})
        csr = w(
            f"{PKI_INT}/intermediate/generate/internal",
            {"common_name": "clawql test intermediate", "key_type": "ec", "key_bits": 256},
        )
        signed = w(
            f"{PKI_ROOT}/root/sign-intermediate",
            {
                "csr": csr["data"]["csr"],
                "format": "pem",
                "ttl": "4380h",
            },
        )
        int_pem = str(signed["data"]["certificate"])
        w(f"{PKI_INT}/intermediate/set-signed", {"certificate": int_pem})
        for t in tenants:
            w(
                f"{PKI_INT}/roles/{pki_role(agent_role, t)}",
                {
                    "allowed_uri_sans": [uri_san(t, _tpl(accessor, "agent"))],
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
                    "ttl": "5m",
                    "max_ttl": "5m",
                    "no_store": True,
                },
            )
        w(
            f"auth/{SESSIONS_MOUNT}/role/{SEEDER_ROLE}",
            {
                "role_type": "jwt",
                "bound_audiences": [audience],
                "user_claim": "sub",
                "bound_claims": {"agent_role": [SEEDER_ROLE], "tenant": list(tenants)},
                "claim_mappings": {
                    "tenant": "tenant",
                    "agent_role": "agent_role",
                    "sid": "sid",
                    "agent": "agent",
                },
                "token_type": "batch",
                "token_ttl": "10m",
                "token_max_ttl": "10m",
            },
        )
        if redis_admin is not None:
            user, password = redis_admin
            w(
                f"{DB_MOUNT}/config/{REDIS_CONNECTION}",
                {
                    "plugin_name": "redis-database-plugin",
                    "host": "127.0.0.1",
                    "port": 6379,
                    "username": user,
                    "password": password,
                    "allowed_roles": [redis_role(agent_role, t) for t in tenants],
                    "verify_connection": True,
                },
            )
            for t in tenants:
                w(
                    f"{DB_MOUNT}/roles/{redis_role(agent_role, t)}",
                    {
                        "db_name": REDIS_CONNECTION,
                        "creation_statements": [f"~t:{t}:*", "+@read", "+@write", "-@dangerous"],
                        "default_ttl": "1h",
                        "max_ttl": "1h",
                    },
                )
        if maria is not None:
            mfx, maria_pw = maria
            w(
                f"{DB_MOUNT}/config/{MARIA_CONNECTION}",
                {
                    "plugin_name": "mysql-database-plugin",
                    "connection_url": f"{{{{username}}}}:{{{{password}}}}@tcp({MARIA_HOST}:3306)/",
                    "username": mfx.admin,
                    "password": maria_pw,
                    "allowed_roles": [maria_role(agent_role, t) for t in tenants],
                    "username_template": mfx.user_prefix + "{{random 12}}",
                    "verify_connection": True,
                },
            )
            w(f"{DB_MOUNT}/rotate-root/{MARIA_CONNECTION}", {})
            for t in tenants:
                w(
                    f"{DB_MOUNT}/roles/{maria_role(agent_role, t)}",
                    {
                        "db_name": MARIA_CONNECTION,
                        "creation_statements": [
                            "CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}';",
                            f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{mfx.db(t)}`.* "
                            "TO '{{name}}'@'%';",
                        ],
                        "revocation_statements": [
                            "REVOKE ALL PRIVILEGES, GRANT OPTION FROM '{{name}}'@'%';",
                            "KILL USER '{{name}}';",
                            "DROP USER IF EXISTS '{{name}}'@'%';",
                        ],
                        "default_ttl": "1h",
                        "max_ttl": "1h",
                    },
                )
        if oidc_issuer is not None:
            w("identity/oidc/config", {"issuer": oidc_issuer})
            w(
                f"identity/oidc/key/{OIDC_KEY}",
                {
                    "algorithm": "ES256",
                    "allowed_client_ids": [STS_AUDIENCE],
                    "verification_ttl": 3600,
                    "rotation_period": 86400,
                },
            )
            claims = ", ".join(
                f'"{k}": {_tpl(accessor, k)}' for k in ("agent", "agent_role", "tenant")
            )
            w(
                f"identity/oidc/role/{oidc_role(agent_role)}",
                {
                    "key": OIDC_KEY,
                    "client_id": STS_AUDIENCE,
                    "ttl": "5m",
                    "template": "{" + claims + "}",
                },
            )
    finally:
        with contextlib.suppress(Exception):
            client.request("POST", "auth/token/revoke-self", token=prov, retry_for=2)
    controller = bootstrap.login(client, workload, bootstrap.APPROVAL_CONTROLLER)
    try:
        tenant, agent = _tpl(accessor, "tenant"), _tpl(accessor, "agent")
        name = f"sys/policies/acl/agent-{agent_role}"
        current = client.read(name, token=controller)
        hcl = str((current.get("data") or current).get("policy", ""))
        hcl += (
            f'path "{PKI_INT}/issue/{tenant}-{agent_role}" {{ capabilities = ["update"] }}\n'
            f'path "{KV_MOUNT}/data/tenants/{tenant}/agents/{agent}/*" '
            '{ capabilities = ["read"] }\n'
            f'path "{DB_MOUNT}/creds/redis-{agent_role}-{tenant}" {{ capabilities = ["read"] }}\n'
            f'path "{DB_MOUNT}/creds/maria-{agent_role}-{tenant}" {{ capabilities = ["read"] }}\n'
            f'path "identity/oidc/token/{oidc_role(agent_role)}" {{ capabilities = ["read"] }}\n'
        )
        client.request("POST", name, body={"policy": hcl}, token=controller, retry_for=30)
        seeder = (
            f'path "{KV_MOUNT}/data/tenants/{tenant}/agents/*" '
            '{ capabilities = ["create", "update", "read"] }\n'
        )
        client.request(
            "POST",
            f"sys/policies/acl/agent-{SEEDER_ROLE}",
            body={"policy": seeder},
            token=controller,
            retry_for=30,
        )
        bind_agent_roles(client, controller, SESSIONS_MOUNT)
    finally:
        with contextlib.suppress(Exception):
            client.request("POST", "auth/token/revoke-self", token=controller, retry_for=2)
    return root_pem.strip() + "\n" + int_pem.strip() + "\n"


# -- MariaDB (root over TCP without password: test machine only) -------------------------
MARIA_HOST = "127.0.0.1"
MARIA_CONNECTION = "maria"


def maria_role(agent_role: str, tenant: str) -> str:
    return f"maria-{agent_role}-{tenant}"


@dataclass(frozen=True)
class MariaFixture:
    run_id: str
    admin: str
    tenants: tuple[str, ...]

    @property
    def user_prefix(self) -> str:
        return f"cgwm{self.run_id}-"

    def db(self, tenant: str) -> str:
        return f"clawql_gw_{self.run_id}_{tenant}"


def _maria_root() -> Any:
    import pymysql

    return pymysql.connect(host=MARIA_HOST, user="root", autocommit=True)


def setup_mariadb(tenants: tuple[str, ...]) -> tuple[MariaFixture, str]:
    """One database per tenant with a table, and the engine's admin (password rotated
    by OpenBao right away): CREATE USER and CONNECTION ADMIN globally, all on the
    tenant databases with GRANT OPTION."""
    run_id = secrets.token_hex(4)
    fx = MariaFixture(run_id, f"cgwmadmin{run_id}", tenants)
    password = secrets.token_urlsafe(24)
    try:
        with contextlib.closing(_maria_root()) as c, c.cursor() as cur:
            cur.execute(f"CREATE USER '{fx.admin}'@'%%' IDENTIFIED BY %s", [password])
            cur.execute(f"GRANT CREATE USER, CONNECTION ADMIN ON *.* TO '{fx.admin}'@'%'")
            for t in tenants:
                db = fx.db(t)
                cur.execute(f"CREATE DATABASE `{db}`")
                cur.execute(f"USE `{db}`")
                cur.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
                cur.execute(
                    "INSERT INTO items SELECT seq, CONCAT(%s, seq) FROM seq_1_to_50", [f"{t}-row-"]
                )
                cur.execute(
                    f"GRANT ALL PRIVILEGES ON `{db}`.* TO '{fx.admin}'@'%' WITH GRANT OPTION"
                )
    except BaseException:
        teardown_mariadb(fx)
        raise
    return fx, password


def maria_user_exists(name: str) -> bool:
    with contextlib.closing(_maria_root()) as c, c.cursor() as cur:
        cur.execute("SELECT 1 FROM mysql.user WHERE user = %s", [name])
        return cur.fetchone() is not None


def teardown_mariadb(fx: MariaFixture) -> None:
    with contextlib.closing(_maria_root()) as c, c.cursor() as cur:
        cur.execute("SELECT user, host FROM mysql.user WHERE user LIKE %s", [fx.user_prefix + "%"])
        for user, host in cur.fetchall():
            with contextlib.suppress(Exception):
                cur.execute(f"KILL USER '{user}'")
            cur.execute(f"DROP USER IF EXISTS '{user}'@'{host}'")
        for t in fx.tenants:
            cur.execute(f"DROP DATABASE IF EXISTS `{fx.db(t)}`")
        cur.execute(f"DROP USER IF EXISTS '{fx.admin}'@'%'")
