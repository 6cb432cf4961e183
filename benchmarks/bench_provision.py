"""Provision benchmarks: ``apply`` of 10 tenants x 5 roles from empty, and a no-op apply.

A real 3-node stack; the database connection points at this machine's
PostgreSQL with a temporary admin role (dropped at the end). Between
from-empty runs the provisioner disables the mounts it created, so every run
starts from nothing.
"""

from __future__ import annotations

import secrets
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from clawql_secrets.cluster import bootstrap, stack
from clawql_secrets.issuer import LocalIssuer
from clawql_secrets.provision import loader
from clawql_secrets.provision.live import Provisioner
from clawql_secrets.provision.model import DesiredState

TENANTS, ROLES = 10, 5
EMPTY_RUNS, NOOP_RUNS = 3, 5


def _config(pem: str, admin: str) -> DesiredState:
    indented = "\n".join("      " + ln for ln in pem.strip().splitlines())
    tenants = "\n".join(f"  - name: t{i}" for i in range(TENANTS))
    names = ", ".join(f"t{i}" for i in range(TENANTS))
    roles = "\n".join(
        f"""  - name: r{j}
    tenants: [{names}]
    databases: [{{connection: pg, privileges: [SELECT]}}]
    secrets: [key{j}]
    cert_sans: ["spiffe://clawql/tenants/{{tenant}}/agents/{{agent}}"]
    cloud_role: aws"""
        for j in range(ROLES)
    )
    return loader.parse(
        f"""\
version: 1
session_issuer:
  issuer: {stack.ISSUER_URL}
  audience: clawql-gateway
  public_keys:
    - |
{indented}
tenants:
{tenants}
databases:
  - {{name: pg, engine: postgresql, host: 127.0.0.1, port: 5432, database: postgres,
      username: {admin}, password_env: PG_ADMIN}}
roles:
{roles}
pki: {{}}
cloud:
  issuer: https://openbao.clawql.local
  roles: [{{name: aws, audience: sts.amazonaws.com}}]
approvals: {{approvers: [alice, bob], threshold: 2}}
"""
    )


def _psql(sql: str) -> None:
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", sql], check=True)


def run() -> str:
    admin = f"clawql_bench_{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(18)
    _psql(f"CREATE ROLE {admin} SUPERUSER LOGIN PASSWORD '{password}'")
    empty: list[float] = []
    noop: list[float] = []
    objects = 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = stack.free_settings(Path(tmp) / "stack")
            stack.up(settings)
            try:
                issuer = LocalIssuer.load_or_create(settings.issuer_dir, stack.ISSUER_URL)
                state = _config(issuer.public_pem(), admin)
                with stack.client_for(settings, retry_for=30) as client:
                    token = bootstrap.login(client, issuer, bootstrap.PROVISIONER)
                    prov = Provisioner(client, token)
                    for _ in range(EMPTY_RUNS):
                        t0 = time.perf_counter()
                        result = prov.apply(state, env={"PG_ADMIN": password})
                        empty.append(time.perf_counter() - t0)
                        objects = len(result.applied)
                        for _ in range(NOOP_RUNS):
                            t0 = time.perf_counter()
                            if prov.apply(state, env={}).changed:
                                raise RuntimeError("a second apply changed something")
                            noop.append(time.perf_counter() - t0)
                        # back to empty (rotate-root changed the password: reset it)
                        for m in (
                            "sys/auth/agents",
                            "sys/mounts/database",
                            "sys/mounts/pki",
                            "sys/mounts/pki_int",
                            "identity/oidc/role/aws",
                            "identity/oidc/key/clawql",
                        ):
                            client.delete(m, token=token)
                        _psql(f"ALTER ROLE {admin} PASSWORD '{password}'")
            finally:
                stack.down(settings)
    finally:
        _psql(f"DROP ROLE IF EXISTS {admin}")
    return (
        "## Provision\n\n"
        f"{TENANTS} tenants x {ROLES} roles, one PostgreSQL connection, PKI, identity tokens "
        f"({objects} OpenBao objects written per apply from empty).\n\n"
        "| operation | runs | median | min | max |\n|---|---|---|---|---|\n"
        f"| apply from empty | {len(empty)} | {statistics.median(empty):.2f} s "
        f"| {min(empty):.2f} s | {max(empty):.2f} s |\n"
        f"| no-op apply (read + diff) | {len(noop)} | {statistics.median(noop):.2f} s "
        f"| {min(noop):.2f} s | {max(noop):.2f} s |\n"
    )


if __name__ == "__main__":
    print(run())
