"""The shipped configuration, for live tests and benchmarks: what ``up`` runs.

A live test gets OpenBao configured exactly as ``clawql-secrets up`` configures
it: the example desired state (``examples/clawql.yaml``), applied by the
provisioner and its policies approved four-eyes (``provision_state``), and a
gateway whose configuration is derived from that same state
(``stack_gateway_config``: the stack's registry Redis, TLS only, a Redis user
OpenBao issues per replica). The only differences are names a test must own on a
shared machine: its PostgreSQL database and the engines' admin user carry a run
id, so two stacks (a developer's ``make up`` and a test) never share an admin
whose password OpenBao rotates. ``extra`` appends YAML (more roles, tenants).

``approve_policies`` takes a change to the agents' policies through the same
four-eyes flow (for a test whose backend the desired state cannot express yet).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pymysql
from psycopg import sql

from clawql_secrets.cluster import bootstrap, stack
from clawql_secrets.cluster.layout import StackSettings
from clawql_secrets.gateway.config import GatewayConfig
from clawql_secrets.gateway.localstack import stack_gateway_config
from clawql_secrets.issuer import LocalIssuer
from clawql_secrets.policy.changes import ApprovalController, ChangeStore
from clawql_secrets.provision.localstack import (
    APPROVERS,
    AUTHOR,
    EXAMPLE,
    ExampleResult,
    load_example,
    provision_state,
)
from clawql_secrets.provision.model import DesiredState
from clawql_secrets.provision.session import person_login, workload_accessor


@dataclass(frozen=True)
class Shipped:
    settings: StackSettings
    state: DesiredState
    path: Path  # the desired-state file the test applied
    run_id: str
    pg_database: str
    admin: str
    result: ExampleResult

    def gateway_config(
        self, port: int | None = None, *, registry_prefix: str | None = None, **update: Any
    ) -> GatewayConfig:
        """The gateway configuration ``up`` would write for this state (another port; its
        own namespace in the stack's registry, under the gateway role's key pattern)."""
        cfg = stack_gateway_config(self.settings, self.state)
        if port is not None:
            update["port"] = port
        if registry_prefix is not None:
            update["registry"] = cfg.registry.model_copy(update={"prefix": registry_prefix})
        return cfg.model_copy(update=update) if update else cfg

    def agents_accessor(self) -> str:
        """The accessor of the agents' JWT mount (identity templates name it)."""
        issuer = LocalIssuer.load(self.settings.issuer_dir, stack.ISSUER_URL)
        with stack.client_for(self.settings, retry_for=20) as client:
            token = bootstrap.login(client, issuer, bootstrap.PROVISIONER)
            mounts = client.request("GET", "sys/auth", token=token)
            client.request("POST", "auth/token/revoke-self", token=token, retry_for=2)
        return str((mounts.get("data") or mounts)[f"{self.state.exchange.mount}/"]["accessor"])

    def approve_policies(self, policies: Mapping[str, str], note: str) -> str:
        """Write ``policies`` (name -> HCL) as ``up`` writes the generated ones: the demo
        author proposes, two demo approvers approve the content hash, the approval
        controller applies and binds. Returns the proposal id."""
        issuer = LocalIssuer.load(self.settings.issuer_dir, stack.ISSUER_URL)
        with stack.client_for(self.settings, retry_for=20) as client:
            pid = ChangeStore(client, person_login(client, issuer, AUTHOR)).propose(
                dict(policies), note
            )
            for person in APPROVERS:
                store = ChangeStore(client, person_login(client, issuer, person))
                ttl = self.state.approvals.proposal_ttl
                store.approve(pid, store.proposal(pid, ttl).content_hash)
            token = bootstrap.login(client, issuer, bootstrap.APPROVAL_CONTROLLER)
            ctl = ApprovalController(
                client,
                token,
                self.state.approvals,
                workload_accessor(client, token),
                agents_mount=self.state.exchange.mount,
            )
            ctl.apply(pid)
        return pid


def example_text(run_id: str, extra: str = "", edit: Callable[[str], str] | None = None) -> str:
    text = EXAMPLE.read_text(encoding="utf-8")
    text = text.replace("username: clawql_admin", f"username: cqadmin_{run_id}")
    text = text.replace("database: clawql\n", f"database: clawql_{run_id}\n")
    if edit is not None:
        text = edit(text)
    return text + extra


@contextlib.contextmanager
def provisioned(
    settings: StackSettings,
    directory: Path,
    *,
    extra: str = "",
    edit: Callable[[str], str] | None = None,
) -> Iterator[Shipped]:
    """Apply the example (per-run names) to the stack at ``settings``; clean up after."""
    run_id = secrets.token_hex(3)
    path = directory / "clawql.yaml"
    path.write_text(example_text(run_id, extra, edit), encoding="utf-8")
    state = load_example(settings, path)
    admin, database = f"cqadmin_{run_id}", f"clawql_{run_id}"
    try:
        result = provision_state(settings, state, lambda _: None)
        yield Shipped(settings, state, path, run_id, database, admin, result)
    finally:
        drop_databases(state, database, admin)


def _pg(dbname: str = "postgres") -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(host="127.0.0.1", user="postgres", dbname=dbname, autocommit=True)


def session_users(database: str) -> list[str]:
    """Dynamic users OpenBao made on ``database``: those named in a grant on one of its
    schemas. Roles are cluster-wide; only an explicit grantee is this database's (a
    ``GRANT … TO PUBLIC`` would make every stack's users pass ``has_schema_privilege``)."""
    with contextlib.suppress(psycopg.Error), _pg(database) as c:
        rows = c.execute(
            "SELECT r.rolname FROM pg_namespace n, aclexplode(n.nspacl) a "
            "JOIN pg_roles r ON r.oid = a.grantee WHERE r.rolname LIKE 'v-%' "
            "AND n.nspname NOT LIKE 'pg_%' "
            "AND n.nspname NOT IN ('information_schema', 'public') AND NOT r.rolsuper"
        ).fetchall()
        return sorted({str(r[0]) for r in rows})
    return []


def drop_databases(state: DesiredState, database: str, admin: str) -> None:
    users = session_users(database)
    with contextlib.suppress(psycopg.Error), _pg() as c:
        c.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )
        for name in [*users, admin]:
            c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [name]
            )
            with contextlib.suppress(psycopg.Error):
                c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
    with contextlib.suppress(pymysql.MySQLError):
        maria = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
        with maria, maria.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{admin}'@'%'")
    # MariaDB's tenant databases (acme, globex) are the example's, shared with a
    # developer's stack: kept. Its dynamic users carry no run id; the tests end their
    # sessions, which drops them.
    del state
