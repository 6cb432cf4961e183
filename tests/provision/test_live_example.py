"""The local stack's example: seeded schemas, applied desired state, policies through
four-eyes with demo people, an agent of one tenant reading its own schema only, and
the audit log the stack shipped holding the access but none of the credentials.

Runs the same code as `clawql-secrets up` with a private admin user name, so it
never touches the admin of a developer's stack on the same machine.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from clawql_secrets.cluster import bootstrap, stack
from clawql_secrets.cluster.layout import StackSettings
from clawql_secrets.errors import OpenBaoError
from clawql_secrets.gateway import session_issuer
from clawql_secrets.issuer import LocalIssuer
from clawql_secrets.provision.localstack import provision_example
from tests.agent_login import agent_login
from tests.provision.live_example import private_example

pytestmark = pytest.mark.cluster
ADMIN = f"clawql_admin_t{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with private_example(tmp_path_factory.mktemp("example"), ADMIN) as path:
        yield path


def cli_verify(store: Path, verifier: str) -> int:
    from clawql_secrets.cli import main

    return main(["audit", "verify", "--store", str(store), "--pubkey", verifier])


def agent_token(s: StackSettings, client: stack.OpenBaoClient, tenant: str, role: str) -> str:
    """The token the gateway would get for a session's credential (ADR 0010)."""
    auth = agent_login(client, s.data_dir, tenant=tenant, agent="a1", role=role, anchor=True)
    return str(auth["client_token"])


def test_up_example_applies_binds_and_isolates_tenants(
    live_stack: StackSettings, example: Path
) -> None:
    notes: list[str] = []
    first = provision_example(live_stack, notes.append, example)
    assert first.applied > 0 and first.proposal
    roles = {"analyst", "integrator", "reporter"}
    # Each agent role's per-call role and its session anchor role (ADR 0010).
    assert {b.split(":")[0] for b in first.bound} == roles | {f"{r}.session" for r in roles}
    assert any("four-eyes" in n for n in notes)
    # A second run changes nothing and needs no admin password.
    again = provision_example(live_stack, notes.append, example)
    assert again.applied == 0 and again.proposal is None

    # Regression (issue 12): the agent's own bearer was an OpenBao credential.
    session_jwt = session_issuer.issue(
        session_issuer.load_issuer(live_stack.data_dir),
        tenant="acme",
        agent="a1",
        role="analyst",
        ttl=300,
        audience=live_stack.gateway_addr,
    )
    with stack.client_for(live_stack, retry_for=20) as client:
        for role in ("analyst", "analyst.session", "integrator", "reporter"):
            with pytest.raises(OpenBaoError) as err:
                client.request(
                    "POST", "auth/agents/login", body={"role": role, "jwt": session_jwt}, token=""
                )
            assert err.value.status == 400, role
        token = agent_token(live_stack, client, "acme", "analyst")
        lease = client.read("database/creds/acme-analyst-pg_main", token=token)
        creds = lease["data"]
        with pytest.raises(OpenBaoError) as err:
            client.read("database/creds/globex-analyst-pg_main", token=token)
        assert err.value.status == 403
    with psycopg.connect(host="127.0.0.1", dbname="clawql", user=creds["username"],
                         password=creds["password"], autocommit=True) as conn:  # fmt: skip
        assert conn.execute("SELECT v FROM acme.facts").fetchall() == [("acme",)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT v FROM globex.facts")
    # Leave nothing behind on the machine's PostgreSQL: the gateway identity revokes.
    issuer = LocalIssuer.load(live_stack.issuer_dir, stack.ISSUER_URL)
    with stack.client_for(live_stack, retry_for=20) as client:
        gw = bootstrap.login(client, issuer, bootstrap.GATEWAY)
        client.write("sys/leases/revoke", {"lease_id": lease["lease_id"]}, token=gw)
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres") as conn:
        gone = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (creds["username"],))
        assert gone.fetchone() is None

    # Canary (audit invariant 1): stop the stack so the shipper publishes its last
    # checkpoint, then search every stored byte for the credentials just issued.
    assert stack.down(live_stack)
    store = live_stack.audit_dir / "store"
    blobs = b"".join(p.read_bytes() for p in store.rglob("*") if p.is_file())
    assert b"database/creds/acme-analyst-pg_main" in blobs  # the access itself is logged
    for canary in (creds["password"], token):
        assert canary.encode() not in blobs
    verifier = (live_stack.audit_dir / "verifier.txt").read_text().strip()
    assert cli_verify(store, verifier) == 0
