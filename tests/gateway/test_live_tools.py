"""The ``http.request``, ``redis.command``, ``cloud.aws`` and MariaDB ``sql.query`` tools
against the real thing.

OpenBao is configured as ``up`` configures it (``tests.shipped``), from the example
with two edits a test needs: role ``integrator`` may also call ``cloud.aws`` (its
``cloud_role`` is the example's ``aws_readonly``), and a role ``cacher`` (both
tenants) may call ``redis.command``. One in-process gateway replica (its OpenBao
traffic recorded for the canaries), a local HTTPS server that requires client
certificates from OpenBao's intermediate CA, the local Redis, MariaDB and a moto
STS/S3.

The desired state has no Redis engine: ``_redis_engine`` below is the one piece of
OpenBao configuration this module writes itself — as the provisioner, the
connection and one dynamic role per tenant (``<tenant>-cacher-redis``, named as the
provisioner names roles), and through the same four-eyes flow as ``up``, the
``agent-cacher`` policy extended by that one creds path.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import secrets
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pymysql
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clawql_secrets.cluster import bootstrap, stack
from clawql_secrets.cluster.layout import NODE_IDS, StackSettings
from clawql_secrets.errors import OpenBaoError
from clawql_secrets.gateway import session_issuer
from clawql_secrets.gateway.config import GatewayConfig
from clawql_secrets.issuer import LocalIssuer
from clawql_secrets.policy import generate
from clawql_secrets.provision.agent_secrets import AgentSecretRef, put_on_stack
from clawql_secrets.provision.render import DB_MOUNT, db_role_name, tpl
from tests import shipped
from tests.agent_login import agent_login
from tests.audit.moto_server import MotoS3
from tests.gateway import live

pytestmark = [pytest.mark.cluster, pytest.mark.gateway]

HTTP_ROLE, CACHE_ROLE, SQL_ROLE = "integrator", "cacher", "analyst"
MARIA = "maria_main"
SECRET = "github_token"
AWS_ROLE_ARN = "arn:aws:iam::123456789012:role/clawql-{tenant}-{agent_role}"
CLOUD_ROLE = "aws_readonly"  # examples/clawql.yaml: integrator's cloud_role
STS_AUDIENCE = "sts.amazonaws.com"
AGENT_SAN = "spiffe://clawql/tenants/{tenant}/agents/{agent}"  # integrator's cert_sans
TENANTS = ("acme", "globex")
REDIS_CONNECTION = "redis"
CACHER = f"""  - name: {CACHE_ROLE}
    tenants: [acme, globex]
    tools: [redis.command]
"""


def _edit(text: str) -> str:
    """The example, with ``cloud.aws`` for integrator and the ``cacher`` role."""
    tools = "    tools: [http.request]\n"
    assert text.count(tools) == 1 and text.count("\nroles:\n") == 1
    text = text.replace(tools, "    tools: [http.request, cloud.aws]\n")
    return text.replace("\nroles:\n", "\nroles:\n" + CACHER)


# -- a local HTTPS server that wants client certs from pki_int ----------------------------
@dataclass
class Seen:
    requests: list[dict[str, Any]]


def _server_tls(d: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server cert for localhost (test-only, on disk)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test server CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (d / "ca.pem").write_bytes(ca.public_bytes(pem))
    (d / "server.pem").write_bytes(cert.public_bytes(pem))
    (d / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return d / "ca.pem", d / "server.pem", d / "server.key"


def start_https(d: Path, client_ca_pem: str) -> tuple[ThreadingHTTPServer, Path, Seen]:
    ca, cert, key = _server_tls(d)
    seen = Seen([])

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            peer = self.connection.getpeercert()
            uris = [v for k, v in (peer or {}).get("subjectAltName", ()) if k == "URI"]
            api_key = self.headers.get("Authorization")
            seen.requests.append({"path": self.path, "uris": uris, "api_key": api_key})
            if self.path == "/big":
                body = b"x" * 300_000
            elif self.path == "/echo":
                # A hostile or careless destination echoing the credential back.
                echoed = f"{api_key} {base64.b64encode((api_key or '').encode()).decode()}"
                body = json.dumps({"echo": echoed}).encode()
            else:
                body = json.dumps({"uris": uris, "has_key": api_key is not None}).encode()
            status = 401 if self.path == "/whoami" and not uris else 200
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            if self.path == "/echo" and api_key:
                self.send_header("X-Echo", api_key)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cadata=client_ca_pem)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, ca, seen


# -- the environment ----------------------------------------------------------------------
@dataclass
class Env:
    sh: shipped.Shipped
    cfg: GatewayConfig
    sessions: LocalIssuer
    a: live.InProcessReplica
    agent: live.Agent
    canaries: live.Canaries
    logs: live.LogCapture
    https_port: int
    seen: Seen
    kv_values: dict[str, str]
    moto: MotoS3

    @property
    def settings(self) -> StackSettings:
        return self.sh.settings

    def jwt(self, tenant: str = "acme", agent: str = "bot", role: str = HTTP_ROLE) -> str:
        return session_issuer.issue(
            self.sessions,
            tenant=tenant,
            agent=agent,
            role=role,
            ttl=600,
            audience=self.cfg.sessions.audience,
        )

    def call(self, jwt: str, tool: str, args: dict[str, Any]) -> Any:
        return self.agent.call(self.a.url, jwt, tool, args)

    def url(self, path: str, host: str = "localhost") -> str:
        return f"https://{host}:{self.https_port}{path}"

    def end(self, jwt: str) -> None:
        """DELETE the session: its credential's lease and the anchor token it hangs off
        are revoked before the answer."""
        r = self.agent.send("DELETE", f"{self.a.url}/v1/sessions/{live.sid(jwt)}", jwt)
        assert r.status_code == 200, r.text
        assert (r.json()["leases_revoked"], r.json()["state"]) == (2, "ended"), r.text


def _redis_engine(sh: shipped.Shipped, admin: tuple[str, str]) -> None:
    """OpenBao's Redis engine for role ``cacher``: what ``provision apply`` cannot express
    yet (the desired state has no redis engine), written the way it writes the rest.

    As the provisioner: a redis-database-plugin connection (its admin password rotated
    away at once) and one dynamic role per tenant, confined to ``t:<tenant>:*`` keys.
    As ``up`` does for policies: ``agent-cacher`` (generated from the state) plus read
    on ``database/creds/<tenant of the caller>-cacher-redis``, proposed, approved by
    two people, applied and bound by the approval controller.
    """
    s = sh.settings
    issuer = LocalIssuer.load(s.issuer_dir, stack.ISSUER_URL)
    roles = {t: db_role_name(CACHE_ROLE, t, REDIS_CONNECTION) for t in TENANTS}
    with stack.client_for(s, retry_for=20) as client:
        prov = bootstrap.login(client, issuer, bootstrap.PROVISIONER)
        try:
            user, password = admin
            client.write(
                f"{DB_MOUNT}/config/{REDIS_CONNECTION}",
                {
                    "plugin_name": "redis-database-plugin",
                    "host": "127.0.0.1",
                    "port": 6379,
                    "username": user,
                    "password": password,
                    "allowed_roles": sorted(roles.values()),
                    "verify_connection": True,
                },
                token=prov,
            )
            client.write(f"{DB_MOUNT}/rotate-root/{REDIS_CONNECTION}", {}, token=prov)
            for tenant, name in roles.items():
                client.write(
                    f"{DB_MOUNT}/roles/{name}",
                    {
                        "db_name": REDIS_CONNECTION,
                        "creation_statements": [
                            f"~t:{tenant}:*",
                            "+@read",
                            "+@write",
                            "-@dangerous",
                        ],
                        "default_ttl": "15m",
                        "max_ttl": "1h",
                    },
                    token=prov,
                )
        finally:
            client.request("POST", "auth/token/revoke-self", token=prov, retry_for=2)
    accessor = sh.agents_accessor()
    role = next(r for r in sh.state.roles if r.name == CACHE_ROLE)
    creds = (
        f"{DB_MOUNT}/creds/{db_role_name(CACHE_ROLE, tpl(accessor, 'tenant'), REDIS_CONNECTION)}"
    )
    hcl = generate.policy_for(sh.state, role, accessor)
    hcl += f'\npath "{creds}" {{\n  capabilities = ["read"]\n}}\n'
    sh.approve_policies({role.policy_name: hcl}, "live test: redis engine for cacher")


def _ca_pem(s: StackSettings, path: str) -> str:
    ca = ssl.create_default_context(cafile=str(s.node_ca_dir / "ca.pem"))
    r = httpx.get(f"{s.api_addr(NODE_IDS[0])}/v1/{path}", verify=ca)
    r.raise_for_status()
    return r.text.strip() + "\n"


@pytest.fixture(scope="module")
def env(live_stack: StackSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    s = live_stack
    d = tmp_path_factory.mktemp("gwtools")
    canaries = live.Canaries()
    redis_admin = f"clawql-bao-admin-{secrets.token_hex(4)}"
    redis_pw = secrets.token_urlsafe(24)
    canaries.add(redis_pw)
    with contextlib.ExitStack() as cleanup:
        logs = cleanup.enter_context(live.captured_logs())
        r = cleanup.enter_context(contextlib.closing(redis.Redis(host="127.0.0.1", port=6379)))
        r.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", redis_admin, "on", f">{redis_pw}", "~*", "&*", "+@all"
        )
        cleanup.callback(r.execute_command, "ACL", "DELUSER", redis_admin)
        sh = cleanup.enter_context(shipped.provisioned(s, d, edit=_edit))
        cleanup.callback(_drop_session_users, canaries)
        _redis_engine(sh, (redis_admin, redis_pw))
        kv_values = {}
        for t in TENANTS:  # globex has no integrator: its value must stay out of reach
            kv_values[t] = f"{t}-token-{secrets.token_urlsafe(24)}"
            put_on_stack(s, AgentSecretRef(t, "bot", SECRET), kv_values[t])
            canaries.add(kv_values[t])
        moto = MotoS3()
        moto.start()
        cleanup.callback(moto.stop)
        ca_bundle = _ca_pem(s, "pki/ca/pem") + _ca_pem(s, "pki_int/ca/pem")
        srv, https_ca, seen = start_https(d, ca_bundle)
        cleanup.callback(srv.server_close)
        cleanup.callback(srv.shutdown)
        https_port = srv.server_address[1]
        shipped_http = sh.gateway_config().tools["http.request"]
        http = {
            **shipped_http,
            "ca_file": str(https_ca),  # the destination's CA (the demo's is not running)
            "max_response_bytes": 100_000,
            "roles": {
                HTTP_ROLE: {
                    **shipped_http["roles"][HTTP_ROLE],
                    "allow": [f"https://localhost:{https_port}"],
                }
            },
        }
        tools = {
            "http.request": http,
            "redis.command": {
                "instances": {
                    "default": {
                        "host": "127.0.0.1",
                        "port": 6379,
                        "creds_role_template": db_role_name(
                            "{agent_role}", "{tenant}", REDIS_CONNECTION
                        ),
                    }
                }
            },
            "cloud.aws": {
                "endpoint_url": moto.endpoint,
                "oidc_role_template": CLOUD_ROLE,
                "roles": {
                    HTTP_ROLE: {
                        "role_arn_template": AWS_ROLE_ARN,
                        "operations": [
                            "sts:get_caller_identity",
                            "s3:list_buckets",
                            "s3:get_object",
                        ],
                    }
                },
            },
        }
        cfg = live.config_for(
            sh, live.free_port(), tools=tools, sql={"statement_timeout_ms": 300, "max_rows": 20}
        )
        a = live.start_in_process(cfg, canaries)
        cleanup.callback(a.stop)
        agent = cleanup.enter_context(contextlib.closing(live.Agent()))
        cleanup.callback(_drop_keys, r)
        yield Env(
            sh,
            cfg,
            session_issuer.load_issuer(s.data_dir),
            a,
            agent,
            canaries,
            logs,
            https_port,
            seen,
            kv_values,
            moto,
        )


def _drop_keys(r: redis.Redis) -> None:
    for key in r.scan_iter("t:*:gwtools:*"):
        r.delete(key)


def _drop_session_users(canaries: live.Canaries) -> None:
    """Redis and MariaDB users OpenBao made for this module's sessions that a failed test
    left (the cluster, and with it the leases' expiry, is gone after the module).
    PostgreSQL's go with the run's database (``shipped.provisioned``)."""
    users = list(canaries.db_users)
    with contextlib.closing(redis.Redis(host="127.0.0.1", port=6379)) as r:
        for user in users:
            with contextlib.suppress(redis.RedisError):
                if r.acl_getuser(user) is not None:
                    r.acl_deluser(user)
    with contextlib.closing(_maria_root()) as c, c.cursor() as cur:
        for user in users:
            cur.execute("SELECT host FROM mysql.user WHERE user = %s", [user])
            for (host,) in cur.fetchall():
                with contextlib.suppress(pymysql.MySQLError):
                    cur.execute(f"KILL USER '{user}'@'{host}'")
                cur.execute(f"DROP USER IF EXISTS '{user}'@'{host}'")


def _maria_root() -> Any:
    return pymysql.connect(host="127.0.0.1", user="root", autocommit=True)


def maria_user_exists(name: str) -> bool:
    with contextlib.closing(_maria_root()) as c, c.cursor() as cur:
        cur.execute("SELECT 1 FROM mysql.user WHERE user = %s", [name])
        return cur.fetchone() is not None


def _agent_token(env: Env, tenant: str, agent: str, role: str) -> str:
    """The per-call token the gateway would get for this agent (an exchange login)."""
    with stack.client_for(env.settings) as client:
        auth = agent_login(client, env.settings.data_dir, tenant=tenant, agent=agent, role=role)
    token = str(auth["client_token"])
    env.canaries.add(token)
    return token


# -- http.request -------------------------------------------------------------------------
INJECT = {"secret": SECRET, "header": "Authorization"}


def test_http_mtls_cert_names_the_agent_and_header_is_injected(env: Env) -> None:
    jwt = env.jwt("acme", "bot")
    args = {"url": env.url("/whoami"), "client_cert": True, "inject": INJECT}
    r = env.call(jwt, "http.request", args)
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    assert res["status"] == 200
    san = AGENT_SAN.format(tenant="acme", agent="bot")
    assert json.loads(res["body"]) == {"uris": [san], "has_key": True}
    last = env.seen.requests[-1]
    assert last["uris"] == [san]
    assert last["api_key"] == env.kv_values["acme"]
    # Without a client cert the server refuses /whoami.
    r = env.call(jwt, "http.request", {"url": env.url("/whoami")})
    assert r.json()["result"]["status"] == 401


def test_http_echoed_secret_is_redacted_and_body_limited(env: Env) -> None:
    jwt = env.jwt("acme", "bot")
    r = env.call(jwt, "http.request", {"url": env.url("/echo"), "inject": INJECT})
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    assert env.seen.requests[-1]["api_key"] == env.kv_values["acme"]
    assert env.kv_values["acme"] not in r.text
    assert json.loads(res["body"]) == {"echo": "[redacted] [redacted]"}
    assert ["x-echo", "[redacted]"] in res["headers"]
    r = env.call(jwt, "http.request", {"url": env.url("/big")})
    res = r.json()["result"]
    assert res["truncated"] is True and len(res["body"]) == 100_000


def test_http_refusals(env: Env) -> None:
    jwt = env.jwt("acme", "bot")

    def code(args: dict[str, Any]) -> tuple[int, str]:
        r = env.call(jwt, "http.request", args)
        return r.status_code, r.json()["error"]["code"]

    # Same server, other name: not on the allow-list.
    assert code({"url": env.url("/whoami", "127.0.0.1")}) == (403, "destination_not_allowed")
    assert code({"url": f"http://localhost:{env.https_port}/"})[1] == "bad_url"
    assert code({"url": f"https://u:p@localhost:{env.https_port}/"})[1] == "bad_url"
    # Header not allowed to carry a secret; traversal in a secret name.
    bad_header = {"url": env.url("/"), "inject": {"secret": SECRET, "header": "Cookie"}}
    assert code(bad_header) == (403, "inject_header_not_allowed")
    traversal = {
        "url": env.url("/"),
        "inject": {"secret": f"../../globex/agents/bot/{SECRET}", "header": "Authorization"},
    }
    assert code(traversal) == (400, "bad_secret_name")
    assert code({"url": env.url("/"), "headers": {"Host": "evil"}}) == (400, "bad_header")
    # Unknown arguments are refused by the argument model.
    r = env.agent.call(env.a.url, jwt, "http.request", {"url": env.url("/"), "nope": 1})
    assert r.status_code == 422


def test_http_cross_tenant_secret_and_cert_refused_by_openbao(env: Env) -> None:
    """The tool builds paths from claims; below it, OpenBao refuses B's things to A."""
    token = _agent_token(env, "acme", "bot", HTTP_ROLE)
    with stack.client_for(env.settings) as client:
        with pytest.raises(OpenBaoError) as e1:
            client.read(f"secret/data/tenants/globex/agents/bot/{SECRET}", token=token)
        assert e1.value.status == 403
        with pytest.raises(OpenBaoError) as e2:
            client.write(
                f"pki_int/issue/globex-{HTTP_ROLE}",
                {"uri_sans": AGENT_SAN.format(tenant="globex", agent="bot"), "ttl": "5m"},
                token=token,
            )
        assert e2.value.status == 403
        with pytest.raises(OpenBaoError) as e3:  # own role, someone else's name
            client.write(
                f"pki_int/issue/acme-{HTTP_ROLE}",
                {"uri_sans": AGENT_SAN.format(tenant="acme", agent="other"), "ttl": "5m"},
                token=token,
            )
        assert e3.value.status == 400
    # integrator is acme's role only: OpenBao refuses the exchange for a globex agent.
    r = env.call(env.jwt("globex", "bot"), "http.request", {"url": env.url("/"), "inject": INJECT})
    assert (r.status_code, r.json()["error"]["code"]) == (403, "exchange_refused"), r.text
    assert env.kv_values["globex"] not in r.text
    # Another acme agent gets no secret of bot's (its own path holds none).
    r = env.call(env.jwt("acme", "spy"), "http.request", {"url": env.url("/"), "inject": INJECT})
    assert r.status_code >= 400 and env.kv_values["acme"] not in r.text


# -- redis.command ------------------------------------------------------------------------
def test_redis_dynamic_user_allow_list_and_gone_after_session_end(env: Env) -> None:
    jwt = env.jwt("acme", "cache", role=CACHE_ROLE)
    before = set(env.canaries.db_users)
    key = f"t:acme:gwtools:{secrets.token_hex(4)}"
    r = env.call(jwt, "redis.command", {"command": ["SET", key, "v1"]})
    assert r.status_code == 200, r.text
    assert r.json()["result"] == {"reply": "OK"}
    r = env.call(jwt, "redis.command", {"command": ["GET", key]})
    assert r.json()["result"] == {"reply": "v1"}
    # Redis itself refuses another tenant's keys; the gateway refuses CONFIG/ACL/EVAL.
    r = env.call(jwt, "redis.command", {"command": ["GET", "t:globex:gwtools:x"]})
    assert (r.status_code, r.json()["error"]["code"]) == (403, "redis_permission_denied")
    for cmd in (["CONFIG", "GET", "*"], ["ACL", "WHOAMI"], ["EVAL", "return 1", "0"]):
        r = env.call(jwt, "redis.command", {"command": cmd})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "command_not_allowed")
    # The other tools' roles: not this one's.
    r = env.call(env.jwt("acme", "cache2", role=SQL_ROLE), "redis.command", {"command": ["PING"]})
    assert (r.status_code, r.json()["error"]["code"]) == (403, "tool_not_allowed")
    users = sorted(set(env.canaries.db_users) - before)
    admin = redis.Redis(host="127.0.0.1", port=6379)
    try:
        mine = [u for u in users if admin.acl_getuser(u) is not None]
        assert len(mine) == 1, users
        env.end(jwt)
        live.wait_until(lambda: admin.acl_getuser(mine[0]) is None, timeout=10)
    finally:
        admin.close()
    r = env.call(jwt, "redis.command", {"command": ["GET", key]})
    assert (r.status_code, r.json()["error"]["code"]) == (401, "session_ended")


# -- sql.query on MariaDB -----------------------------------------------------------------
def test_mariadb_query_limits_cross_tenant_and_user_gone_after_session_end(env: Env) -> None:
    jwt = env.jwt("acme", "dba", role=SQL_ROLE)

    def q(text: str, *params: Any, token: str = jwt, **kw: Any) -> Any:
        body = {"sql": text, "params": list(params), "database": MARIA, **kw}
        return env.call(token, "sql.query", body)

    r = q("SELECT k, v FROM facts WHERE k = %s", "tenant")
    assert r.status_code == 200, r.text
    assert r.json()["result"]["rows"] == [["tenant", "acme"]]
    r = q("SELECT seq FROM seq_1_to_50 ORDER BY seq")
    assert r.json()["result"]["truncated"] is True and len(r.json()["result"]["rows"]) == 20
    r = q("SELECT seq FROM seq_1_to_50 ORDER BY seq", max_rows=3)
    assert r.json()["result"]["row_count"] == 3
    r = q("SELECT COUNT(*) FROM seq_1_to_50")  # the connection is still usable after a cut
    assert r.json()["result"]["rows"] == [[50]]
    # The server hides the other tenant's database from this user.
    r = q("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'globex'")
    assert r.json()["result"]["rows"] == [[0]], r.text
    r = q("SELECT 1; DROP TABLE facts")
    assert (r.status_code, r.json()["error"]["code"]) == (400, "sql_multiple_statements")
    r = q("SELECT COUNT(*) FROM seq_1_to_100000 a, seq_1_to_100000 b WHERE a.seq + b.seq = 7")
    assert (r.status_code, r.json()["error"]["code"]) == (422, "sql_timeout")
    # A transaction cannot be carried into the next call: BEGIN is refused, the
    # connection stays as it was.
    conn_id = q("SELECT CONNECTION_ID()").json()["result"]["rows"][0][0]
    r = q("BEGIN")
    assert (r.status_code, r.json()["error"]["code"]) == (403, "sql_transaction_refused")
    assert q("SELECT CONNECTION_ID()").json()["result"]["rows"][0][0] == conn_id
    r = q("SELECT CURRENT_USER()")
    user = str(r.json()["result"]["rows"][0][0]).split("@")[0]
    assert maria_user_exists(user)
    held = pymysql.connect(
        host="127.0.0.1", user=user, password=env.canaries.db_users[user], autocommit=True
    )
    try:
        env.end(jwt)
        live.wait_until(lambda: not maria_user_exists(user), timeout=10)
        with pytest.raises(pymysql.MySQLError), held.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        with contextlib.suppress(Exception):
            held.close()
    # Naming the other tenant's database: the anomaly rule ends the session.
    spy = env.jwt("acme", "dba-spy", role=SQL_ROLE)
    r = q("SELECT * FROM globex.facts", token=spy)
    assert (r.status_code, r.json()["error"]["code"]) == (403, "anomaly_revoked"), r.text
    assert "globex" not in json.dumps(r.json().get("result"))


# -- cloud.aws ----------------------------------------------------------------------------
def test_aws_web_identity_exchange_and_allowed_operations(env: Env) -> None:
    bucket = env.moto.new_bucket(object_lock=False)
    env.moto.client().put_object(Bucket=bucket, Key="report.txt", Body=b"acme report")
    jwt = env.jwt("acme", "bot")
    r = env.call(jwt, "cloud.aws", {"service": "sts", "operation": "get_caller_identity"})
    assert r.status_code == 200, r.text
    arn = r.json()["result"]["result"]["Arn"]
    assert f"assumed-role/clawql-acme-{HTTP_ROLE}/acme.bot." in arn
    r = env.call(jwt, "cloud.aws", {"service": "s3", "operation": "list_buckets"})
    assert bucket in [b["Name"] for b in r.json()["result"]["result"]["Buckets"]]
    r = env.call(
        jwt,
        "cloud.aws",
        {
            "service": "s3",
            "operation": "get_object",
            "params": {"Bucket": bucket, "Key": "report.txt"},
        },
    )
    assert r.json()["result"]["result"]["Body"] == "acme report"
    for service, op in (("iam", "list_users"), ("s3", "generate_presigned_url")):
        r = env.call(jwt, "cloud.aws", {"service": service, "operation": op})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "operation_not_allowed")
    # moto validates nothing: prove the token AWS would see against OpenBao's keys.
    token = env.canaries.identity_tokens[-1]
    s = env.settings
    keys = httpx.get(
        f"{s.api_addr(NODE_IDS[0])}/v1/identity/oidc/.well-known/keys",
        verify=ssl.create_default_context(cafile=str(s.node_ca_dir / "ca.pem")),
    ).json()
    kid = pyjwt.get_unverified_header(token)["kid"]
    key = pyjwt.PyJWKSet.from_dict(keys)[kid]
    cloud = env.sh.state.cloud
    assert cloud is not None
    claims = pyjwt.decode(
        token,
        key,
        algorithms=["ES256"],
        audience=STS_AUDIENCE,
        issuer=f"{cloud.issuer}/v1/identity/oidc",
    )
    assert (claims["tenant"], claims["agent"], claims["agent_role"]) == ("acme", "bot", HTTP_ROLE)
    ttl = next(r.ttl for r in cloud.roles if r.name == CLOUD_ROLE)
    assert claims["exp"] - claims["iat"] <= ttl
    head, body, sig = token.split(".")
    forged = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    forged["tenant"] = "globex"
    fbody = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    with pytest.raises(pyjwt.InvalidSignatureError):
        pyjwt.decode(f"{head}.{fbody}.{sig}", key, algorithms=["ES256"], audience=STS_AUDIENCE)
    # The STS credentials moto handed out join the canaries.
    for secret in _sts_secrets():
        env.canaries.add(secret)


def _sts_secrets() -> list[str]:
    from moto.sts.models import sts_backends

    return [
        value
        for account in list(sts_backends)
        for region in list(sts_backends[account])
        for role in sts_backends[account][region].assumed_roles
        for value in (role.secret_access_key, role.session_token)
    ]


# -- canaries -----------------------------------------------------------------------------
def test_zz_canaries_never_leak(env: Env) -> None:
    """Every credential of this module (tokens, anchors, assertions, KV values, private
    keys, identity tokens, STS keys, DB and Redis passwords): in no response, gateway
    log line, OpenBao audit log or registry key."""
    env.agent.send("GET", f"{env.a.url}/metrics")
    haystacks = {
        "responses": "\n".join(env.agent.bodies),
        "gateway log": "\n".join(env.logs.lines),
        "OpenBao audit logs": live.audit_text(env.settings),
    }
    keys = [v for v in env.canaries.values if "PRIVATE KEY" in v]
    assert len(keys) >= 1  # a private key was issued and recorded
    assert env.canaries.identity_tokens  # an identity token was issued and recorded
    assert env.canaries.assertions and env.canaries.anchors
    sts = _sts_secrets()
    assert sts and all(v in env.canaries.values for v in sts)
    assert all(v in env.canaries.values for v in env.kv_values.values())
    for where, text in haystacks.items():
        hits = env.canaries.found_in(text)
        loggers = sorted(
            {ln.split(" ", 1)[0] for ln in env.logs.lines for c in env.canaries.values if c in ln}
        )
        assert not hits, f"{len(hits)} credentials found in {where} (loggers: {loggers})"
    registry = live.redis_text(env.sh.settings, env.cfg.registry.prefix)
    assert registry  # the module's sessions (their leases revoked and gone with them)
    hits = env.canaries.found_in(registry, accessors=False)
    assert not hits, f"{len(hits)} credentials found in the Redis registry"
