"""apply/plan against a real cluster, a password-auth PostgreSQL cluster and MariaDB.

One stack for the module; tests run in order and build on each other.
"""

from __future__ import annotations

import contextlib
import secrets
import shlex
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pymysql
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from clawql_secrets.cluster import bootstrap, stack
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.cluster.layout import NODE_IDS, StackSettings
from clawql_secrets.errors import OpenBaoError
from clawql_secrets.issuer import LocalIssuer
from clawql_secrets.policy import generate
from clawql_secrets.policy.binding import bind_agent_roles
from clawql_secrets.provision import agent_secrets, loader
from clawql_secrets.provision.agent_secrets import AgentSecretRef
from clawql_secrets.provision.live import Provisioner
from clawql_secrets.provision.model import DesiredState
from tests.agent_login import agent_login, exchange_yaml
from tests.gateway.live import wait_until

pytestmark = pytest.mark.cluster
SUFFIX = secrets.token_hex(3)
ACME, GLOBEX = f"acme{SUFFIX}", f"globex{SUFFIX}"
ORDERS_CN, ORDERS_URI = "orders.svc.clawql.internal", "spiffe://clawql.internal/svc/orders"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def psql(port: int, sql: str, db: str = "postgres") -> str:
    """Run SQL as the cluster's superuser over the local socket (peer auth)."""
    cmd = f"psql -p {port} -d {db} -v ON_ERROR_STOP=1 -tAc {shlex.quote(sql)}"
    out = subprocess.run(["su", "postgres", "-c", cmd], check=True, capture_output=True, text=True)
    return out.stdout.strip()


@dataclass
class Databases:
    pg_port: int
    pg_password: str
    maria_password: str


@pytest.fixture(scope="module")
def dbs() -> Iterator[Databases]:
    """A PostgreSQL cluster with scram-sha-256 (so a password matters) and a MariaDB admin."""
    if shutil.which("pg_createcluster") is None:
        pytest.skip("postgresql-common is not installed")
    name, port = f"clawql{SUFFIX}", _free_port()
    pg_pw, maria_pw = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    subprocess.run(
        ["pg_createcluster", "15", name, "-p", str(port)],
        check=True,
        capture_output=True,
    )
    hba = Path(f"/etc/postgresql/15/{name}/pg_hba.conf")
    hba.write_text("local all postgres peer\nhost all all 127.0.0.1/32 scram-sha-256\n")
    conf = Path(f"/etc/postgresql/15/{name}/postgresql.conf")
    conf.write_text(conf.read_text() + "\nlisten_addresses = '127.0.0.1'\n")
    try:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", "15", name, "start"],
            check=True,
            capture_output=True,
        )
        psql(port, f"CREATE ROLE clawql_admin SUPERUSER LOGIN PASSWORD '{pg_pw}'")
        psql(port, "CREATE DATABASE clawql")
        for t in (ACME, GLOBEX):
            psql(port, f"CREATE SCHEMA {t}; CREATE TABLE {t}.facts (v text)", "clawql")
            psql(port, f"INSERT INTO {t}.facts VALUES ('{t}')", "clawql")
        maria = pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
        with maria, maria.cursor() as cur:
            cur.execute(f"CREATE USER 'clawql_admin{SUFFIX}'@'%%' IDENTIFIED BY %s", (maria_pw,))
            cur.execute(
                f"GRANT ALL PRIVILEGES ON *.* TO 'clawql_admin{SUFFIX}'@'%' WITH GRANT OPTION"
            )
            for t in (ACME, GLOBEX):
                cur.execute(f"CREATE DATABASE {t}")
                cur.execute(f"CREATE TABLE {t}.facts (v text)")
                cur.execute(f"INSERT INTO {t}.facts VALUES (%s)", (t,))
        yield Databases(port, pg_pw, maria_pw)
    finally:
        subprocess.run(["pg_dropcluster", "--stop", "15", name], capture_output=True)
        with contextlib.suppress(pymysql.MySQLError):
            maria = pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
            with maria, maria.cursor() as cur:
                cur.execute(f"DROP USER IF EXISTS 'clawql_admin{SUFFIX}'@'%'")
                for t in (ACME, GLOBEX):
                    cur.execute(f"DROP DATABASE IF EXISTS {t}")


def config(settings: StackSettings, dbs: Databases) -> DesiredState:
    return loader.parse(
        exchange_yaml(settings.data_dir)
        + f"""\
version: 1
tenants:
  - name: {ACME}
  - name: {GLOBEX}
databases:
  - name: pg
    engine: postgresql
    host: 127.0.0.1
    port: {dbs.pg_port}
    database: clawql
    username: clawql_admin
    password_env: PG_ADMIN
  - name: maria
    engine: mariadb
    host: 127.0.0.1
    port: 3306
    username: clawql_admin{SUFFIX}
    password_env: MARIA_ADMIN
roles:
  - name: analyst
    tenants: [{ACME}, {GLOBEX}]
    databases:
      - connection: pg
        privileges: [SELECT]
      - connection: maria
        privileges: [SELECT]
    secrets: [api_key]
  - name: integrator
    tenants: [{ACME}]
    cert_sans: ["spiffe://clawql/tenants/{{tenant}}/agents/{{agent}}"]
    cloud_role: aws
pki: {{}}
services:
  - name: orders
    common_name: {ORDERS_CN}
    dns_sans: [orders.internal]
    uri_sans: [{ORDERS_URI}]
    ttl: 10m
cloud:
  issuer: https://openbao.clawql.local
  roles:
    - name: aws
      audience: sts.amazonaws.com
approvals:
  approvers: [alice, bob]
  threshold: 2
""",
        "live.yaml",
    )


@dataclass
class Env:
    client: OpenBaoClient
    issuer: LocalIssuer
    prov: Provisioner
    state: DesiredState
    dbs: Databases
    settings: StackSettings


@pytest.fixture(scope="module")
def env(live_stack: StackSettings, dbs: Databases) -> Iterator[Env]:
    issuer = LocalIssuer.load_or_create(live_stack.issuer_dir, stack.ISSUER_URL)
    with stack.client_for(live_stack, retry_for=30) as client:
        prov = Provisioner(client, bootstrap.login(client, issuer, bootstrap.PROVISIONER))
        yield Env(client, issuer, prov, config(live_stack, dbs), dbs, live_stack)


def secrets_env(e: Env) -> dict[str, str]:
    return {"PG_ADMIN": e.dbs.pg_password, "MARIA_ADMIN": e.dbs.maria_password}


def test_apply_then_second_apply_is_a_noop(env: Env) -> None:
    _, plan = env.prov.plan(env.state)
    assert plan.pending
    first = env.prov.apply(env.state, env=secrets_env(env))
    assert first.changed
    _, plan = env.prov.plan(env.state)
    assert not plan.pending, plan.render()
    # No admin password is needed when nothing must be written.
    assert not env.prov.apply(env.state, env={}).changed


def test_rotate_root_leaves_no_known_password(env: Env) -> None:
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(
            host="127.0.0.1",
            port=env.dbs.pg_port,
            dbname="clawql",
            user="clawql_admin",
            password=env.dbs.pg_password,
            connect_timeout=5,
        )
    with pytest.raises(pymysql.MySQLError):
        pymysql.connect(
            host="127.0.0.1", user=f"clawql_admin{SUFFIX}", password=env.dbs.maria_password
        )


def test_hand_made_drift_shows_in_plan_and_apply_repairs_it(env: Env) -> None:
    token = bootstrap.login(env.client, env.issuer, bootstrap.PROVISIONER)
    role = env.client.read("auth/agents/role/analyst", token=token)["data"]
    keep = ("role_type", "user_claim", "bound_audiences", "bound_claims", "claim_mappings")
    env.client.write(
        "auth/agents/role/analyst", {**{k: role[k] for k in keep}, "token_ttl": 7}, token=token
    )
    env.client.write(
        "database/roles/stray-role",
        {"db_name": "pg", "creation_statements": ["SELECT 1"]},
        token=token,
    )
    # Keeping older versions again (10 is OpenBao's default) is drift too.
    env.client.write("secret/config", {"max_versions": 10}, token=token)
    _, plan = env.prov.plan(env.state)
    got = {(c.action, c.path) for c in plan.changes}
    assert got == {
        ("update", "auth/agents/role/analyst"),
        ("delete", "database/roles/stray-role"),
        ("update", "secret/config"),
    }
    env.prov.apply(env.state, env={})
    assert not env.prov.plan(env.state)[1].pending
    assert env.client.read("secret/config", token=token)["data"]["max_versions"] == 1


def _csr(common_name: str, dns_sans: list[str], uri_sans: list[str]) -> str:
    """A CSR for a fresh EC P-256 key, as the certificate renewer makes them."""
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_sans]
    sans += [x509.UniformResourceIdentifier(u) for u in uri_sans]
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _sign(
    e: Env, token: str, role: str, cn: str, dns_sans: list[str], uris: list[str], ttl: str = "10m"
) -> Any:
    body = {
        "csr": _csr(cn, dns_sans, uris),
        "common_name": cn,
        "alt_names": ",".join(dns_sans),
        "uri_sans": ",".join(uris),
        "ttl": ttl,
    }
    return e.client.write(f"pki_int/sign/{role}", body, token=token)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"database/creds/{ACME}-analyst-pg"),
        ("GET", f"database/creds/{ACME}-analyst-maria"),
        ("POST", f"pki_int/issue/{ACME}-integrator"),
        ("POST", f"pki_int/sign/{ACME}-integrator"),
        ("POST", "pki_int/issue/svc-orders"),
        ("POST", "pki_int/sign/svc-orders"),
        ("GET", "identity/oidc/token/aws"),
    ],
)
def test_the_provisioner_cannot_use_what_it_configures(env: Env, method: str, path: str) -> None:
    """It writes these roles (a control read of each succeeds) but may not get a
    credential, a certificate or an identity token from any of them."""
    env.prov.apply(env.state, env=secrets_env(env))
    role_path = path.replace("/creds/", "/roles/").replace("/issue/", "/roles/")
    role_path = role_path.replace("/sign/", "/roles/").replace("/token/", "/role/")
    token = bootstrap.login(env.client, env.issuer, bootstrap.PROVISIONER)
    try:
        assert env.client.read(role_path, token=token)["data"]
        body = (
            {"common_name": ORDERS_CN, "csr": _csr(ORDERS_CN, [], [])} if method == "POST" else None
        )
        with pytest.raises(OpenBaoError) as exc:
            env.client.request(method, path, body=body, token=token)
        assert exc.value.status == 403
    finally:
        env.client.request("POST", "auth/token/revoke-self", token=token)


def test_service_role_is_rendered_and_only_its_names_can_be_signed(env: Env) -> None:
    """The renewer identity signs CSRs for the service's names, and for no other name."""
    prov = bootstrap.login(env.client, env.issuer, bootstrap.PROVISIONER)
    role = env.client.read("pki_int/roles/svc-orders", token=prov)["data"]
    env.client.request("POST", "auth/token/revoke-self", token=prov)
    assert sorted(role["allowed_domains"]) == sorted([ORDERS_CN, "orders.internal"])
    assert role["allowed_uri_sans"] == [ORDERS_URI]
    for key in ("allow_subdomains", "allow_glob_domains", "allow_any_name", "allow_localhost"):
        assert role[key] is False, key
    assert role["allow_ip_sans"] is False and role["allow_wildcard_certificates"] is False
    assert role["allow_bare_domains"] is True and role["enforce_hostnames"] is True
    assert role["server_flag"] is True and role["client_flag"] is True
    assert (role["key_type"], role["key_bits"], role["no_store"]) == ("ec", 256, True)
    assert (role["ttl"], role["max_ttl"]) == (600, 600)
    assert not env.prov.plan(env.state)[1].pending

    token = bootstrap.login(env.client, env.issuer, bootstrap.CERTS_RENEWER)
    try:
        signed = _sign(env, token, "svc-orders", ORDERS_CN, ["orders.internal"], [ORDERS_URI])
        cert = x509.load_pem_x509_certificate(signed["data"]["certificate"].encode())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(san.get_values_for_type(x509.DNSName)) == {ORDERS_CN, "orders.internal"}
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [ORDERS_URI]
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku)
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert life.total_seconds() <= 600 + 60  # ttl, plus OpenBao's not-before backdating
        # A longer request is capped at the role's max_ttl, the service's ttl.
        longer = _sign(env, token, "svc-orders", ORDERS_CN, [], [ORDERS_URI], ttl="2h")
        capped = x509.load_pem_x509_certificate(longer["data"]["certificate"].encode())
        assert (capped.not_valid_after_utc - cert.not_valid_after_utc).total_seconds() < 120
        # Names outside the list: refused by the role (400), not only by the policy.
        outside = [
            ("evil.svc.clawql.internal", [], []),
            (f"x.{ORDERS_CN}", [], []),
            ("localhost", [], []),
            (ORDERS_CN, ["billing.internal"], []),
            (ORDERS_CN, [], ["spiffe://clawql.internal/svc/billing"]),
        ]
        for cn, dns_sans, uris in outside:
            with pytest.raises(OpenBaoError) as err:
                _sign(env, token, "svc-orders", cn, dns_sans, uris)
            assert err.value.status == 400, (cn, dns_sans, uris)
        # And the agents' client-cert roles are not the renewer's to sign with.
        with pytest.raises(OpenBaoError) as err:
            _sign(env, token, f"{ACME}-integrator", ORDERS_CN, [], [])
        assert err.value.status == 403
    finally:
        env.client.request("POST", "auth/token/revoke-self", token=token)


def _agent_token(e: Env, tenant: str, agent: str, role: str) -> str:
    # The session anchor role's service token: revocable, so the tests can clean up.
    auth = agent_login(
        e.client, e.settings.data_dir, tenant=tenant, agent=agent, role=role, anchor=True
    )
    return str(auth["client_token"])


@pytest.fixture(scope="module")
def policies_applied(env: Env) -> None:
    # Test harness: write the generated policies and bind them to the roles as the
    # approval controller (the four-eyes path itself is tested in tests/policy).
    token = bootstrap.login(env.client, env.issuer, bootstrap.APPROVAL_CONTROLLER)
    accessor = env.prov.accessor("agents")
    assert accessor
    for name, text in generate.generate(env.state, accessor).items():
        env.client.write(f"sys/policies/acl/{name}", {"policy": text}, token=token)
    bound = bind_agent_roles(env.client, token, "agents")
    assert {b.role for b in bound} == {
        "analyst",
        "analyst.session",
        "integrator",
        "integrator.session",
    }


def test_binding_survives_provisioner_updates_and_rebind_repairs_a_recreated_role(
    env: Env, policies_applied: None
) -> None:
    # The provisioner neither sees nor fights the controller's binding...
    assert not env.prov.plan(env.state)[1].pending
    token = bootstrap.login(env.client, env.issuer, bootstrap.PROVISIONER)
    role = env.client.read("auth/agents/role/integrator", token=token)["data"]
    assert role["token_policies"] == ["agent-integrator"]
    # ...an update of the role by the provisioner keeps it...
    env.client.write(
        "auth/agents/role/integrator", {"role_type": "jwt", "token_ttl": 9}, token=token
    )
    env.prov.apply(env.state, env={})
    assert _policies(env, ACME, "i1", "integrator") == ["agent-integrator", "default"]
    # ...a role it deletes and recreates comes back without policy, until the
    # controller binds again (no new approval: the policy is already approved).
    env.client.delete("auth/agents/role/integrator", token=token)
    env.prov.apply(env.state, env={})
    assert _policies(env, ACME, "i1", "integrator") == ["default"]
    ctl = bootstrap.login(env.client, env.issuer, bootstrap.APPROVAL_CONTROLLER)
    assert [b.role for b in bind_agent_roles(env.client, ctl, "agents")] == ["integrator"]
    assert _policies(env, ACME, "i1", "integrator") == ["agent-integrator", "default"]


def _policies(e: Env, tenant: str, agent: str, role: str) -> list[str]:
    # The per-call role: a batch token, seconds-lived and not revocable (ADR 0010).
    auth = agent_login(e.client, e.settings.data_dir, tenant=tenant, agent=agent, role=role)
    return list(auth["policies"])


def _raw_get(settings: StackSettings, path: str, token: str) -> httpx.Response:
    """The whole answer, not the client's error: what a caller of OpenBao would see."""
    ctx = ssl.create_default_context(cafile=str(settings.node_ca_dir / "ca.pem"))
    with httpx.Client(verify=ctx, trust_env=False, timeout=10) as raw:
        return raw.get(
            f"{settings.api_addr(NODE_IDS[0])}/v1/{path}", headers={"X-Vault-Token": token}
        )


def test_rotated_agent_secret_keeps_no_older_version(
    live_stack: StackSettings, env: Env, policies_applied: None
) -> None:
    """Regression: after a rotation the agent's token still read the leaked value
    with ``?version=1`` (the KV mount kept 10 versions per key)."""
    ref = AgentSecretRef(ACME, "a1", "api_key")
    meta_path = ref.path.replace("/data/", "/metadata/", 1)
    leaked, rotated = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    writer = agent_secrets.writer_login(env.client, env.issuer)
    try:
        assert agent_secrets.put(env.client, writer, ref, leaked) == 1
        assert agent_secrets.put(env.client, writer, ref, rotated) == 2
    finally:
        env.client.request("POST", "auth/token/revoke-self", token=writer)
    token = _agent_token(env, ACME, "a1", "analyst")
    try:
        latest = _raw_get(live_stack, ref.path, token)
        assert latest.status_code == 200
        assert latest.json()["data"]["data"] == {"value": rotated}
        old = _raw_get(live_stack, ref.path + "?version=1", token)
        # (No response text in assertion messages: it could hold the canary.)
        assert old.status_code == 404, old.status_code
        assert not (old.json().get("data") or {}).get("data")
        for resp in (latest, old, _raw_get(live_stack, ref.path + "?version=0", token)):
            assert leaked not in resp.text
    finally:
        env.client.request("POST", "auth/token/revoke-self", token=token)
    # Destroyed, not hidden: the metadata lists the current version only.
    prov = bootstrap.login(env.client, env.issuer, bootstrap.PROVISIONER)
    meta = _raw_get(live_stack, meta_path, prov)
    env.client.request("POST", "auth/token/revoke-self", token=prov)
    assert leaked not in meta.text
    data = meta.json()["data"]
    assert (data["current_version"], data["oldest_version"], list(data["versions"])) == (
        2,
        2,
        ["2"],
    )


def test_pg_creds_read_own_schema_only_and_revocation_drops_and_terminates(
    env: Env, policies_applied: None
) -> None:
    token = _agent_token(env, ACME, "a1", "analyst")
    creds = env.client.read(f"database/creds/{ACME}-analyst-pg", token=token)["data"]
    user = creds["username"]
    conn = psycopg.connect(
        host="127.0.0.1",
        port=env.dbs.pg_port,
        dbname="clawql",
        user=user,
        password=creds["password"],
        autocommit=True,
    )
    assert conn.execute(f"SELECT v FROM {ACME}.facts").fetchall() == [(ACME,)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(f"SELECT v FROM {GLOBEX}.facts")
    # Another tenant's creds path is refused by OpenBao itself.
    with pytest.raises(Exception, match="403"):
        env.client.read(f"database/creds/{GLOBEX}-analyst-pg", token=token)
    # Session end: revoking the token revokes its lease; the role is dropped and
    # the open connection terminated. OpenBao may finish the lease revocation just
    # after answering, so wait for it (bounded; no timing is asserted).
    env.client.request("POST", "auth/token/revoke-self", token=token)
    wait_until(lambda: _dead(conn.execute, "SELECT 1"), timeout=30)
    conn.close()
    wait_until(
        lambda: (
            psql(env.dbs.pg_port, f"SELECT count(*) FROM pg_roles WHERE rolname = '{user}'") == "0"
        ),
        timeout=30,
    )


def _dead(execute: Any, sql: str) -> bool:
    """Whether running ``sql`` on a connection fails: it was terminated."""
    try:
        execute(sql)
    except (psycopg.OperationalError, pymysql.MySQLError):
        return True
    return False


def test_mariadb_creds_read_own_database_only(env: Env, policies_applied: None) -> None:
    token = _agent_token(env, GLOBEX, "g1", "analyst")
    creds = env.client.read(f"database/creds/{GLOBEX}-analyst-maria", token=token)["data"]
    conn = pymysql.connect(host="127.0.0.1", user=creds["username"], password=creds["password"])
    with conn.cursor() as cur:
        cur.execute(f"SELECT v FROM {GLOBEX}.facts")
        assert cur.fetchall() == ((GLOBEX,),)
        with pytest.raises(pymysql.MySQLError):
            cur.execute(f"SELECT v FROM {ACME}.facts")
    env.client.request("POST", "auth/token/revoke-self", token=token)
    wait_until(lambda: _dead(conn.cursor().execute, "SELECT 1"), timeout=30)
    with contextlib.suppress(pymysql.MySQLError):
        conn.close()
