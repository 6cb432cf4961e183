"""The local stack's example tenants: seed the machine's databases, apply the
example desired state, and run the four-eyes flow with demo people.

Everything here is for a developer's laptop: the demo approvers (alice, bob)
and the author (carol) are identities minted by the stack's own workload
issuer, which is exactly what makes them demo identities. The flow itself is
the production one: the provisioner applies, a person proposes, two other
people approve the exact content hash, the approval controller writes the
policies and binds them to their roles.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pymysql
from psycopg import sql

from clawql_secrets.cluster import bootstrap, stack
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.cluster.layout import StackSettings
from clawql_secrets.errors import BackendError, ClawQLError, ConfigError
from clawql_secrets.gateway import exchange
from clawql_secrets.issuer import LocalIssuer
from clawql_secrets.policy import generate, lint
from clawql_secrets.policy.changes import ApprovalController, ChangeStore
from clawql_secrets.provision import loader
from clawql_secrets.provision.live import Provisioner
from clawql_secrets.provision.model import DesiredState
from clawql_secrets.provision.session import person_login, workload_accessor

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "clawql.yaml"
AUTHOR, APPROVERS = "carol", ("alice", "bob")
_KEY_LINE = "  public_key_files: [../.clawql/gateway-exchange/public.pem]"
Progress = Callable[[str], None]


@dataclass
class ExampleResult:
    applied: int = 0
    proposal: str | None = None
    bound: list[str] = field(default_factory=list)
    tenants: list[str] = field(default_factory=list)


def load_example(settings: StackSettings, path: Path = EXAMPLE) -> DesiredState:
    """The example, trusting this stack's gateway exchange key wherever its data dir is."""
    public = exchange.load_or_create(exchange.stack_key_dir(settings.data_dir))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the example desired state {path}") from exc
    if _KEY_LINE not in text:
        raise ConfigError(f"{path} does not name the gateway's exchange key as expected")
    pem = "\n".join("      " + ln for ln in exchange.public_pem(public).strip().splitlines())
    text = text.replace(_KEY_LINE, "  public_keys:\n    - |\n" + pem)
    return loader.parse(text, str(path))


def seed_databases(state: DesiredState, reset: set[str]) -> dict[str, str]:
    """Create the admin users, tenant schemas and a sample table on this machine.

    Only connections in ``reset`` (those OpenBao does not manage yet) get a new
    random admin password, returned as the environment ``apply`` reads; others
    are left alone, since OpenBao rotated their password and is the only one
    who knows it.
    """
    env: dict[str, str] = {}
    schemas = sorted({s for t in state.tenants for s in t.owned_schemas()})
    for db in state.databases:
        password = secrets.token_urlsafe(24) if db.name in reset else None
        try:
            if db.engine == "postgresql":
                _seed_postgres(db.host, db.port, db.database, db.username, password, schemas)
            else:
                _seed_mariadb(db.host, db.port, db.username, password, schemas)
        except (psycopg.Error, pymysql.MySQLError, OSError) as exc:
            raise BackendError(
                f"cannot seed {db.engine} at {db.host}:{db.port} ({type(exc).__name__})",
                fix="start the database server, or run `up --no-example`",
            ) from exc
        if password is not None:
            env[db.password_env] = password
    return env


def _seed_postgres(
    host: str, port: int, database: str, admin: str, password: str | None, schemas: list[str]
) -> None:
    """The engine admin as docs/operations.md asks a DBA to set it up: not a superuser,
    ``CREATEROLE`` and ``pg_signal_backend`` (to create, terminate and drop session
    users), the tenants' schemas and tables ``WITH GRANT OPTION`` (granted, not owned,
    so two stacks' admins on one machine can share the database); no ``PUBLIC``
    connection or temporary objects there; no large objects for session users."""
    a = sql.Identifier(admin)
    # The machine's PostgreSQL trusts local logins (see README): `postgres` seeds.
    with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres",
                         autocommit=True, connect_timeout=5) as conn:  # fmt: skip
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (admin,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(sql.SQL(verb + " ROLE {} LOGIN CREATEROLE NOSUPERUSER").format(a))
        conn.execute(sql.SQL("GRANT pg_signal_backend TO {}").format(a))
        if password is not None:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(a, sql.Literal(password)))
        db = sql.Identifier(database)
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(db))
        conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(db))
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {} WITH GRANT OPTION").format(db, a))
    with psycopg.connect(host=host, port=port, user="postgres", dbname=database,
                         autocommit=True, connect_timeout=5) as conn:  # fmt: skip
        conn.execute(
            "REVOKE EXECUTE ON FUNCTION lo_create(oid), lo_creat(integer), "
            "lo_from_bytea(oid, bytea) FROM PUBLIC"
        )
        for schema in schemas:
            ident = sql.Identifier(schema)
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
            conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {}.facts (k text PRIMARY KEY, v text)").format(
                    ident
                )
            )
            conn.execute(
                sql.SQL("INSERT INTO {}.facts VALUES ('tenant', %s) ON CONFLICT DO NOTHING").format(
                    ident
                ),
                (schema,),
            )
            conn.execute(
                sql.SQL("GRANT USAGE ON SCHEMA {} TO {} WITH GRANT OPTION").format(ident, a)
            )
            conn.execute(
                sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA {} TO {} WITH GRANT OPTION").format(
                    ident, a
                )
            )


def _seed_mariadb(
    host: str, port: int, admin: str, password: str | None, schemas: list[str]
) -> None:
    """The engine admin with what docs/operations.md lists, nothing more: create, lock,
    kill and drop users, read ``mysql.user``'s names, everything on the tenant databases
    (with grant option) — no ``ALL ON *.*``."""
    conn = pymysql.connect(host=host, port=port, user="root", autocommit=True, connect_timeout=5)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM mysql.user WHERE user = %s AND host = '%%'", (admin,))
        row = cur.fetchone()
        if not row or not row[0]:
            cur.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (admin, secrets.token_urlsafe(24)))
        else:  # an older stack's admin may hold ALL ON *.*: narrow it
            cur.execute(f"REVOKE ALL PRIVILEGES, GRANT OPTION FROM `{admin}`@'%'")
        cur.execute(f"GRANT CREATE USER, CONNECTION ADMIN ON *.* TO `{admin}`@'%'")
        cur.execute(f"GRANT SELECT (User, Host) ON mysql.user TO `{admin}`@'%'")
        if password is not None:
            cur.execute("ALTER USER %s@'%%' IDENTIFIED BY %s", (admin, password))
        # Names are validated by the model ([a-z][a-z0-9_]{0,30}): safe as identifiers.
        for schema in schemas:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{schema}`")
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS `{schema}`.facts (k VARCHAR(64) PRIMARY KEY, v TEXT)"
            )
            cur.execute(f"INSERT IGNORE INTO `{schema}`.facts VALUES ('tenant', %s)", (schema,))  # noqa: S608
            cur.execute(f"GRANT ALL PRIVILEGES ON `{schema}`.* TO `{admin}`@'%' WITH GRANT OPTION")


def provision_example(
    settings: StackSettings, progress: Progress, example: Path = EXAMPLE
) -> ExampleResult:
    """Seed, apply, and put the generated policies through four-eyes with demo people."""
    return provision_state(settings, load_example(settings, example), progress)


def provision_state(
    settings: StackSettings, state: DesiredState, progress: Progress
) -> ExampleResult:
    """What ``up`` does with the example, for any desired state: seed its databases on
    this machine, apply it as the provisioner, and take its policies through four-eyes
    with the demo people. The live tests and benchmarks provision through here, so they
    run OpenBao exactly as ``up`` configures it."""
    issuer = LocalIssuer.load(settings.issuer_dir, stack.ISSUER_URL)
    result = ExampleResult(tenants=[t.name for t in state.tenants])
    tokens: list[str] = []  # every identity's token, revoked when done

    def login(token: str) -> str:
        tokens.append(token)
        return token

    with stack.client_for(settings, retry_for=20) as client:
        try:
            return _provision(client, issuer, state, progress, result, login)
        finally:
            for token in tokens:
                with contextlib.suppress(ClawQLError):
                    client.request("POST", "auth/token/revoke-self", token=token, retry_for=2)


def _provision(
    client: OpenBaoClient,
    issuer: LocalIssuer,
    state: DesiredState,
    progress: Progress,
    result: ExampleResult,
    login: Callable[[str], str],
) -> ExampleResult:
    prov = Provisioner(client, login(bootstrap.login(client, issuer, bootstrap.PROVISIONER)))
    _, plan = prov.plan(state)
    writes = {c.path.rsplit("/", 1)[1] for c in plan.changes
              if c.kind == "db-connection" and c.action != "delete"}  # fmt: skip
    progress("seeding tenant schemas in PostgreSQL and MariaDB")
    env = seed_databases(state, writes)
    progress("applying the desired state as the provisioner")
    result.applied = len(prov.apply(state, env=env).applied)
    env.clear()
    accessor = prov.accessor(state.exchange.mount)
    if accessor is None:
        raise BackendError("the agents' auth mount is missing after apply")
    policies = generate.generate(state, accessor)
    findings = lint.lint_generated(policies, "the desired state", used=list(policies))
    if findings:
        raise ConfigError("policy lint failed:\n  " + "\n  ".join(map(str, findings)))
    changed = {n: t for n, t in policies.items() if prov.live_policy(n) != t}
    ctl_token = login(bootstrap.login(client, issuer, bootstrap.APPROVAL_CONTROLLER))
    ctl = ApprovalController(
        client, ctl_token, state.approvals, workload_accessor(client, ctl_token),
        agents_mount=state.exchange.mount,
    )  # fmt: skip
    if changed:
        progress(f"four-eyes: {AUTHOR} proposes, {' and '.join(APPROVERS)} approve (demo)")
        pid = ChangeStore(client, login(person_login(client, issuer, AUTHOR))).propose(
            changed, "local stack example"
        )
        for person in APPROVERS:
            store = ChangeStore(client, login(person_login(client, issuer, person)))
            store.approve(pid, store.proposal(pid, state.approvals.proposal_ttl).content_hash)
        review = ctl.apply(pid)
        result.proposal = pid
        result.bound = [b.describe() for b in review.bound]
    else:
        result.bound = [b.describe() for b in ctl.bind()]
    return result
