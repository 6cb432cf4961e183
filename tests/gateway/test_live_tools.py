"""The ``http.request`` and ``redis.command`` tools against the real thing.

One 3-node OpenBao cluster, one in-process gateway replica (its OpenBao
traffic recorded for the canaries), a local HTTPS server that requires client
certificates from OpenBao's intermediate CA, and the local Redis with an
OpenBao redis-database-plugin connection whose admin user this module creates
and removes.

``ToolContext.write_secret`` (needed for ``pki_int/issue``) is not in core yet:
this module adds a test-only implementation to ``core._Context`` for its
duration, mirroring ``read_secret`` (see the report / ADR follow-up).
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
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clawql_secrets.cluster import stack
from clawql_secrets.cluster.layout import NODE_IDS, StackSettings
from clawql_secrets.errors import OpenBaoError
from clawql_secrets.gateway import session_issuer
from clawql_secrets.issuer import LocalIssuer
from tests.audit.moto_server import MotoS3
from tests.gateway import live, openbao_setup

pytestmark = [pytest.mark.cluster, pytest.mark.gateway]

ROLE = "analyst"
AWS_ROLE_ARN = "arn:aws:iam::123456789012:role/clawql-{tenant}-{agent_role}"
TENANTS = ("acme", "globex")


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
            api_key = self.headers.get("X-Api-Key")
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
    settings: StackSettings
    sessions: LocalIssuer
    a: live.InProcessReplica
    agent: live.Agent
    canaries: live.Canaries
    logs: live.LogCapture
    https_port: int
    seen: Seen
    kv_values: dict[str, str]
    maria: openbao_setup.MariaFixture
    moto: MotoS3
    oidc_issuer: str

    def jwt(self, tenant: str = "acme", agent: str = "bot", role: str = ROLE) -> str:
        return session_issuer.issue(self.sessions, tenant=tenant, agent=agent, role=role, ttl=600)

    def call(self, jwt: str, tool: str, args: dict[str, Any]) -> Any:
        return self.agent.call(self.a.url, jwt, tool, args)

    def url(self, path: str, host: str = "localhost") -> str:
        return f"https://{host}:{self.https_port}{path}"


def _gateway_config(
    d: Path,
    s: StackSettings,
    port: int,
    prefix: str,
    https_ca: Path,
    https_port: int,
    maria: openbao_setup.MariaFixture,
    moto_url: str,
) -> Any:
    return {
        "host": "127.0.0.1",
        "port": port,
        "openbao": {
            "addrs": [s.api_addr(n) for n in NODE_IDS],
            "ca_file": str(s.node_ca_dir / "ca.pem"),
            "retry_for": 5,
        },
        "sessions": {"jwks_file": str(d / "sessions-issuer" / "jwks.json")},
        "identity": {"local_issuer_dir": str(s.issuer_dir), "local_issuer_url": stack.ISSUER_URL},
        "registry": {"redis_url": "redis://127.0.0.1:6379/0", "prefix": prefix},
        "sweep_interval": 0.3,
        "sql": {"statement_timeout_ms": 300, "max_rows": 20},
        "databases": {
            "maria": {
                "kind": "mariadb",
                "host": "127.0.0.1",
                "dbname": f"clawql_gw_{maria.run_id}_{{tenant}}",
                "creds_role_template": "maria-{agent_role}-{tenant}",
            }
        },
        "tools": {
            "http.request": {
                "ca_file": str(https_ca),
                "max_response_bytes": 100_000,
                "roles": {
                    ROLE: {
                        "allow": [f"https://localhost:{https_port}"],
                        "client_cert": True,
                        "inject_headers": ["X-Api-Key"],
                    }
                },
            },
            "redis.command": {"instances": {"default": {"host": "127.0.0.1", "port": 6379}}},
            "cloud.aws": {
                "endpoint_url": moto_url,
                "roles": {
                    ROLE: {
                        "role_arn_template": AWS_ROLE_ARN,
                        "operations": [
                            "sts:get_caller_identity",
                            "s3:list_buckets",
                            "s3:get_object",
                        ],
                    }
                },
            },
        },
    }


@pytest.fixture(scope="module")
def env(live_stack: StackSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    s = live_stack
    d = tmp_path_factory.mktemp("gwtools")
    sessions = session_issuer.load_issuer(d)
    workload = LocalIssuer.load_or_create(s.issuer_dir, stack.ISSUER_URL)
    prefix = f"clawql:gwtools:{secrets.token_hex(4)}"
    redis_admin = f"clawql-bao-admin-{secrets.token_hex(4)}"
    redis_pw = secrets.token_urlsafe(24)
    canaries = live.Canaries()
    canaries.add(redis_pw)
    with contextlib.ExitStack() as cleanup:
        r = cleanup.enter_context(contextlib.closing(redis.Redis(host="127.0.0.1", port=6379)))
        fx, admin_pw = openbao_setup.setup_postgres(TENANTS)
        cleanup.callback(openbao_setup.teardown_postgres, fx)
        mfx, maria_pw = openbao_setup.setup_mariadb(TENANTS)
        cleanup.callback(openbao_setup.teardown_mariadb, mfx)
        r.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", redis_admin, "on", f">{redis_pw}", "~*", "&*", "+@all"
        )
        cleanup.callback(r.execute_command, "ACL", "DELUSER", redis_admin)
        before = set(r.acl_users())
        cleanup.callback(_drop_new_redis_users, r, before)
        moto = MotoS3()
        moto.start()
        cleanup.callback(moto.stop)
        canaries.add(admin_pw)
        canaries.add(maria_pw)
        yield from _env(
            s,
            d,
            sessions,
            workload,
            fx,
            admin_pw,
            mfx,
            maria_pw,
            prefix,
            r,
            (redis_admin, redis_pw),
            canaries,
            moto,
        )


def _drop_new_redis_users(r: redis.Redis, before: set[Any]) -> None:
    """Users OpenBao made for sessions that a failed test left open (the cluster, and
    with it the leases' expiry, is gone after the module)."""
    for user in set(r.acl_users()) - before:
        name = user.decode() if isinstance(user, bytes) else str(user)
        if "_REDIS-" in name.upper():
            r.acl_deluser(name)


def _env(
    s: StackSettings,
    d: Path,
    sessions: LocalIssuer,
    workload: LocalIssuer,
    fx: openbao_setup.PGFixture,
    admin_pw: str,
    mfx: openbao_setup.MariaFixture,
    maria_pw: str,
    prefix: str,
    r: redis.Redis,
    redis_cred: tuple[str, str],
    canaries: live.Canaries,
    moto: MotoS3,
) -> Iterator[Env]:
    oidc_issuer = s.api_addr(NODE_IDS[0])
    stop: list[Any] = []
    with live.captured_logs() as logs:
        try:
            with stack.client_for(s) as client:
                accessor = openbao_setup.configure(
                    client,
                    workload,
                    sessions,
                    fx,
                    admin_pw,
                    agent_role=ROLE,
                    audience=session_issuer.SESSION_AUDIENCE,
                )
                ca_bundle = openbao_setup.configure_tools(
                    client,
                    workload,
                    sessions,
                    accessor,
                    TENANTS,
                    agent_role=ROLE,
                    audience=session_issuer.SESSION_AUDIENCE,
                    redis_admin=redis_cred,
                    maria=(mfx, maria_pw),
                    oidc_issuer=oidc_issuer,
                )
                kv_values = _seed_kv(client, sessions)
            for v in kv_values.values():
                canaries.add(v)
            srv, https_ca, seen = start_https(d, ca_bundle)
            stop.append(srv)
            port = live.free_port()
            a = live.start_in_process(
                _gateway_config(
                    d, s, port, prefix, https_ca, srv.server_address[1], mfx, moto.endpoint
                ),
                canaries,
            )
            stop.append(a)
            agent = live.Agent()
            stop.append(agent)
            yield Env(
                s,
                sessions,
                a,
                agent,
                canaries,
                logs,
                srv.server_address[1],
                seen,
                kv_values,
                mfx,
                moto,
                oidc_issuer,
            )
        finally:
            for thing in reversed(stop):
                with contextlib.suppress(Exception):
                    if isinstance(thing, ThreadingHTTPServer):
                        thing.shutdown()
                        thing.server_close()
                    else:
                        thing.stop() if hasattr(thing, "stop") else thing.close()
            for key in r.scan_iter(f"{prefix}:*"):
                r.delete(key)
            for key in r.scan_iter("t:*:gwtools:*"):
                r.delete(key)


def _seed_kv(client: Any, sessions: LocalIssuer) -> dict[str, str]:
    """Each tenant's ``bot`` gets an ``api-key`` secret, written by that tenant's seeder."""
    values = {}
    for t in TENANTS:
        jwt = session_issuer.issue(
            sessions, tenant=t, agent="seeder", role=openbao_setup.SEEDER_ROLE, ttl=60
        )
        login = client.request(
            "POST",
            "auth/sessions/login",
            body={"role": openbao_setup.SEEDER_ROLE, "jwt": jwt},
            token="",
        )
        token = login["auth"]["client_token"]
        values[t] = f"{t}-apikey-{secrets.token_urlsafe(24)}"
        client.request(
            "POST",
            f"secret/data/tenants/{t}/agents/bot/api-key",
            body={"data": {"value": values[t]}},
            token=token,
            retry_for=10,
        )
    return values


def _agent_token(env: Env, jwt: str) -> str:
    with stack.client_for(env.settings) as client:
        login = client.request(
            "POST", "auth/sessions/login", body={"role": ROLE, "jwt": jwt}, token=""
        )
    token = str(login["auth"]["client_token"])
    env.canaries.add(token)
    return token


def _sid(jwt: str) -> str:
    seg = jwt.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))["sid"])


# -- http.request -------------------------------------------------------------------------
def test_http_mtls_cert_names_the_agent_and_header_is_injected(env: Env) -> None:
    jwt = env.jwt("acme", "bot")
    r = env.call(
        jwt,
        "http.request",
        {
            "url": env.url("/whoami"),
            "client_cert": True,
            "inject": {"secret": "api-key", "header": "X-Api-Key"},
        },
    )
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    assert res["status"] == 200
    assert json.loads(res["body"]) == {
        "uris": ["spiffe://clawql/tenant/acme/agent/bot"],
        "has_key": True,
    }
    last = env.seen.requests[-1]
    assert last["uris"] == ["spiffe://clawql/tenant/acme/agent/bot"]
    assert last["api_key"] == env.kv_values["acme"]
    # Without a client cert the server refuses /whoami.
    r = env.call(jwt, "http.request", {"url": env.url("/whoami")})
    assert r.json()["result"]["status"] == 401


def test_http_echoed_secret_is_redacted_and_body_limited(env: Env) -> None:
    jwt = env.jwt("acme", "bot")
    r = env.call(
        jwt,
        "http.request",
        {"url": env.url("/echo"), "inject": {"secret": "api-key", "header": "X-Api-Key"}},
    )
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    assert env.seen.requests[-1]["api_key"] == env.kv_values["acme"]
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
    bad_header = {"url": env.url("/"), "inject": {"secret": "api-key", "header": "Cookie"}}
    assert code(bad_header) == (403, "inject_header_not_allowed")
    traversal = {
        "url": env.url("/"),
        "inject": {"secret": "../../globex/agents/bot/api-key", "header": "X-Api-Key"},
    }
    assert code(traversal) == (400, "bad_secret_name")
    assert code({"url": env.url("/"), "headers": {"Host": "evil"}}) == (400, "bad_header")
    # Unknown arguments are refused by the argument model.
    r = env.agent.call(env.a.url, jwt, "http.request", {"url": env.url("/"), "nope": 1})
    assert r.status_code == 422


def test_http_cross_tenant_secret_and_cert_refused_by_openbao(env: Env) -> None:
    """The tool builds paths from claims; below it, OpenBao refuses B's things to A."""
    token = _agent_token(env, env.jwt("acme", "bot"))
    with stack.client_for(env.settings) as client:
        with pytest.raises(OpenBaoError) as e1:
            client.read("secret/data/tenants/globex/agents/bot/api-key", token=token)
        assert e1.value.status == 403
        with pytest.raises(OpenBaoError) as e2:
            client.write(
                "pki_int/issue/globex-analyst",
                {"uri_sans": "spiffe://clawql/tenant/globex/agent/bot", "ttl": "5m"},
                token=token,
            )
        assert e2.value.status == 403
        with pytest.raises(OpenBaoError) as e3:  # own role, someone else's name
            client.write(
                "pki_int/issue/acme-analyst",
                {"uri_sans": "spiffe://clawql/tenant/acme/agent/other", "ttl": "5m"},
                token=token,
            )
        assert e3.value.status == 400
    # Another acme agent gets no secret of bot's (its own path holds none).
    r = env.call(
        env.jwt("acme", "spy"),
        "http.request",
        {"url": env.url("/"), "inject": {"secret": "api-key", "header": "X-Api-Key"}},
    )
    assert r.status_code >= 400 and env.kv_values["acme"] not in r.text


# -- redis.command ------------------------------------------------------------------------
def test_redis_dynamic_user_allow_list_and_gone_after_session_end(env: Env) -> None:
    jwt = env.jwt("acme", "cache")
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
    users = sorted(set(env.canaries.db_users) - before)
    admin = redis.Redis(host="127.0.0.1", port=6379)
    try:
        mine = [u for u in users if admin.acl_getuser(u) is not None]
        assert len(mine) == 1, users
        r = env.agent.send("DELETE", f"{env.a.url}/v1/sessions/{_sid(jwt)}", jwt)
        assert r.status_code == 200 and r.json()["leases_revoked"] == 1, r.text
        live.wait_until(lambda: admin.acl_getuser(mine[0]) is None, timeout=1.0)
    finally:
        admin.close()
    r = env.call(jwt, "redis.command", {"command": ["GET", key]})
    assert (r.status_code, r.json()["error"]["code"]) == (401, "session_ended")


# -- sql.query on MariaDB -----------------------------------------------------------------
def test_mariadb_query_limits_cross_tenant_and_user_gone_after_session_end(env: Env) -> None:
    import pymysql

    jwt = env.jwt("acme", "dba")

    def q(text: str, *params: Any, **kw: Any) -> Any:
        body = {"sql": text, "params": list(params), "database": "maria", **kw}
        return env.call(jwt, "sql.query", body)

    r = q("SELECT id, name FROM items WHERE id <= %s ORDER BY id", 2)
    assert r.status_code == 200, r.text
    assert r.json()["result"]["rows"] == [[1, "acme-row-1"], [2, "acme-row-2"]]
    r = q("SELECT id FROM items ORDER BY id")
    assert r.json()["result"]["truncated"] is True and len(r.json()["result"]["rows"]) == 20
    r = q("SELECT id FROM items ORDER BY id", max_rows=3)
    assert r.json()["result"]["row_count"] == 3
    r = q("SELECT COUNT(*) FROM items")  # the connection is still usable after a truncation
    assert r.json()["result"]["rows"] == [[50]]
    r = q(f"SELECT * FROM `{env.maria.db('globex')}`.items")
    assert (r.status_code, r.json()["error"]["code"]) == (403, "sql_permission_denied")
    assert "globex-row" not in r.text
    r = q("SELECT 1; DROP TABLE items")
    assert (r.status_code, r.json()["error"]["code"]) == (422, "sql_error")
    r = q("SELECT COUNT(*) FROM seq_1_to_100000 a, seq_1_to_100000 b WHERE a.seq + b.seq = 7")
    assert (r.status_code, r.json()["error"]["code"]) == (422, "sql_timeout")
    # A BEGIN does not carry its transaction into the next call: that connection is closed.
    conn_id = q("SELECT CONNECTION_ID()").json()["result"]["rows"][0][0]
    assert q("BEGIN").status_code == 200
    assert q("SELECT CONNECTION_ID()").json()["result"]["rows"][0][0] != conn_id
    r = q("SELECT CURRENT_USER()")
    user = str(r.json()["result"]["rows"][0][0]).split("@")[0]
    assert user.startswith(env.maria.user_prefix)
    held = pymysql.connect(
        host="127.0.0.1", user=user, password=env.canaries.db_users[user], autocommit=True
    )
    try:
        r = env.agent.send("DELETE", f"{env.a.url}/v1/sessions/{_sid(jwt)}", jwt)
        assert r.status_code == 200 and r.json()["leases_revoked"] == 1, r.text
        live.wait_until(lambda: not openbao_setup.maria_user_exists(user), timeout=1.0)
        with pytest.raises(pymysql.MySQLError), held.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        with contextlib.suppress(Exception):
            held.close()


# -- cloud.aws ----------------------------------------------------------------------------
def test_aws_web_identity_exchange_and_allowed_operations(env: Env) -> None:
    bucket = env.moto.new_bucket(object_lock=False)
    env.moto.client().put_object(Bucket=bucket, Key="report.txt", Body=b"acme report")
    jwt = env.jwt("acme", "bot")
    r = env.call(jwt, "cloud.aws", {"service": "sts", "operation": "get_caller_identity"})
    assert r.status_code == 200, r.text
    arn = r.json()["result"]["result"]["Arn"]
    assert "assumed-role/clawql-acme-analyst/acme.bot." in arn
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
    keys = httpx.get(
        f"{env.oidc_issuer}/v1/identity/oidc/.well-known/keys",
        verify=ssl.create_default_context(cafile=str(env.settings.node_ca_dir / "ca.pem")),
    ).json()
    kid = pyjwt.get_unverified_header(token)["kid"]
    key = pyjwt.PyJWKSet.from_dict(keys)[kid]
    claims = pyjwt.decode(
        token,
        key,
        algorithms=["ES256"],
        audience=openbao_setup.STS_AUDIENCE,
        issuer=f"{env.oidc_issuer}/v1/identity/oidc",
    )
    assert (claims["tenant"], claims["agent"], claims["agent_role"]) == ("acme", "bot", ROLE)
    assert claims["exp"] - claims["iat"] <= 300
    head, body, sig = token.split(".")
    forged = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    forged["tenant"] = "globex"
    fbody = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    with pytest.raises(pyjwt.InvalidSignatureError):
        pyjwt.decode(
            f"{head}.{fbody}.{sig}", key, algorithms=["ES256"], audience=openbao_setup.STS_AUDIENCE
        )
    # The STS credentials moto handed out join the canaries.
    from moto.sts.models import sts_backends

    for account in list(sts_backends):
        for region in list(sts_backends[account]):
            for role in sts_backends[account][region].assumed_roles:
                env.canaries.add(role.secret_access_key)
                env.canaries.add(role.session_token)


# -- canaries -----------------------------------------------------------------------------
def test_zz_canaries_never_leak(env: Env) -> None:
    env.agent.send("GET", f"{env.a.url}/metrics")
    haystacks = {
        "responses": "\n".join(env.agent.bodies),
        "gateway log": "\n".join(env.logs.lines),
    }
    keys = [v for v in env.canaries.values if "PRIVATE KEY" in v]
    assert len(keys) >= 1  # a private key was issued and recorded
    assert env.canaries.identity_tokens  # an identity token was issued and recorded
    from moto.sts.models import sts_backends

    sts = [
        role.secret_access_key
        for account in list(sts_backends)
        for region in list(sts_backends[account])
        for role in sts_backends[account][region].assumed_roles
    ]
    assert sts and all(v in env.canaries.values for v in sts)
    assert all(v in env.canaries.values for v in env.kv_values.values())
    for where, text in haystacks.items():
        hits = [c[:4] + "…" for c in env.canaries.values if c in text]
        loggers = sorted(
            {ln.split(" ", 1)[0] for ln in env.logs.lines for c in env.canaries.values if c in ln}
        )
        assert not hits, f"{len(hits)} credentials found in {where} (loggers: {loggers})"
