"""The gateway against the real thing: 3-node OpenBao, PostgreSQL 15, Redis, two replicas.

Replica A is in this process (so its OpenBao traffic can be recorded for the
canaries), replica B a separate ``clawql-secrets gateway serve`` process; both
share one Redis registry. The OpenBao configuration comes from
``openbao_setup`` until ``provision apply`` replaces it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from clawql_secrets.cluster import bootstrap, stack
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.cluster.layout import NODE_IDS, StackSettings
from clawql_secrets.gateway import session_issuer
from clawql_secrets.gateway.config import GatewayConfig
from clawql_secrets.gateway.core import Gateway
from clawql_secrets.gateway.registry import MemoryRegistry
from clawql_secrets.gateway.tools import load_tools
from clawql_secrets.issuer import LocalIssuer
from tests.gateway import live, openbao_setup

pytestmark = [pytest.mark.cluster, pytest.mark.gateway]

ROLE = "analyst"
ADMIN_SUBJECT = "clawql-admin"
ADMIN_AUDIENCE = "clawql-gateway-admin"


@dataclass
class Env:
    settings: StackSettings
    fx: openbao_setup.PGFixture
    sessions: LocalIssuer
    workload: LocalIssuer
    a: live.InProcessReplica
    b: live.ProcessReplica
    agent: live.Agent
    canaries: live.Canaries
    logs: live.LogCapture
    dir: Path
    prefix: str  # the registry's Redis keys

    def jwt(self, tenant: str = "acme", agent: str = "bot", ttl: int = 600) -> str:
        return session_issuer.issue(self.sessions, tenant=tenant, agent=agent, role=ROLE, ttl=ttl)

    def admin_jwt(self) -> str:
        return self.workload.mint(ADMIN_SUBJECT, ADMIN_AUDIENCE, ttl=120)

    def sql(self, base: str, jwt: str, text: str, *params: Any) -> Any:
        return self.agent.call(base, jwt, "sql.query", {"sql": text, "params": list(params)})


def _superuser() -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True)


def role_exists(name: str) -> bool:
    with _superuser() as c:
        return c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone() is not None


def backends_of(name: str) -> int:
    with _superuser() as c:
        row = c.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", [name]
        ).fetchone()
        return int(row[0]) if row else 0


def _gateway_config(
    env_dir: Path, s: StackSettings, port: int, prefix: str, fx: Any
) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": port,
        "openbao": {
            "addrs": [s.api_addr(n) for n in NODE_IDS],
            "ca_file": str(s.node_ca_dir / "ca.pem"),
            "retry_for": 5,
        },
        "sessions": {"jwks_file": str(env_dir / "sessions-issuer" / "jwks.json")},
        "identity": {
            "local_issuer_dir": str(s.issuer_dir),
            "local_issuer_url": stack.ISSUER_URL,
        },
        "admin": {
            "jwks_file": str(s.issuer_dir / "jwks.json"),
            "issuer": stack.ISSUER_URL,
            "audience": ADMIN_AUDIENCE,
            "subjects": [ADMIN_SUBJECT],
        },
        "registry": {"redis_url": "redis://127.0.0.1:6379/0", "prefix": prefix},
        "databases": {"default": {"host": "127.0.0.1", "port": 5432, "dbname": fx.dbname}},
        "sql": {"statement_timeout_ms": 300},
        "sweep_interval": 0.3,
    }


@pytest.fixture(scope="module")
def env(live_stack: StackSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    s = live_stack
    d = tmp_path_factory.mktemp("gw")
    sessions = session_issuer.load_issuer(d)
    workload = LocalIssuer.load_or_create(s.issuer_dir, stack.ISSUER_URL)
    fx, admin_pw = openbao_setup.setup_postgres(("acme", "globex"))
    prefix = f"clawql:gwtest:{secrets.token_hex(4)}"
    r = redis.Redis(host="127.0.0.1", port=6379)
    canaries = live.Canaries()
    canaries.add(admin_pw)
    stop: list[Any] = []
    with live.captured_logs() as logs:
        try:
            with stack.client_for(s) as client:
                openbao_setup.configure(
                    client,
                    workload,
                    sessions,
                    fx,
                    admin_pw,
                    agent_role=ROLE,
                    audience=session_issuer.SESSION_AUDIENCE,
                )
            port_a, port_b = live.free_port(), live.free_port()
            a = live.start_in_process(_gateway_config(d, s, port_a, prefix, fx), canaries)
            stop.append(a)
            cfg_b = live.write_config(d / "b.yaml", _gateway_config(d, s, port_b, prefix, fx))
            b = live.start_process(cfg_b, port_b, d / "b.log")
            stop.append(b)
            agent = live.Agent()
            stop.append(agent)
            yield Env(s, fx, sessions, workload, a, b, agent, canaries, logs, d, prefix)
        finally:
            for thing in reversed(stop):
                with contextlib.suppress(Exception):
                    thing.stop() if hasattr(thing, "stop") else thing.close()
            openbao_setup.teardown_postgres(fx)
            for key in r.scan_iter(f"{prefix}:*"):
                r.delete(key)
            r.close()


def _user_of(env: Env, base: str, jwt: str) -> str:
    resp = env.sql(base, jwt, "SELECT current_user")
    assert resp.status_code == 200, resp.text
    return str(resp.json()["result"]["rows"][0][0])


def test_tool_call_returns_sql_result_and_reuses_session_user(env: Env) -> None:
    jwt = env.jwt()
    r = env.sql(env.a.url, jwt, "SELECT id, name FROM items WHERE id <= %s ORDER BY id", 3)
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    assert res["columns"] == ["id", "name"]
    assert res["rows"] == [[1, "acme-row-1"], [2, "acme-row-2"], [3, "acme-row-3"]]
    user1 = _user_of(env, env.a.url, jwt)
    user2 = _user_of(env, env.a.url, jwt)
    assert user1 == user2 and user1.startswith(env.fx.user_prefix)
    sid = _sid(jwt)
    info = env.agent.send("GET", f"{env.a.url}/v1/sessions/{sid}", jwt).json()
    assert (info["state"], info["lease_count"], info["tenant"]) == ("active", 1, "acme")
    # limits: rows, one statement only
    r = env.agent.call(
        env.a.url, jwt, "sql.query", {"sql": "SELECT g FROM generate_series(1,50) g", "max_rows": 5}
    )
    assert r.json()["result"]["truncated"] is True and len(r.json()["result"]["rows"]) == 5
    r = env.sql(env.a.url, jwt, "SELECT 1; DROP TABLE items")
    assert (r.status_code, r.json()["error"]["code"]) == (422, "sql_error")
    r = env.sql(env.a.url, jwt, "SELECT pg_sleep(5)")
    assert (r.status_code, r.json()["error"]["code"]) == (422, "sql_timeout")


def _row(env: Env, jwt: str, text: str) -> list[Any]:
    r = env.sql(env.a.url, jwt, text)
    assert r.status_code == 200, r.text
    return list(r.json()["result"]["rows"][0])


def test_sql_session_state_does_not_outlive_a_call(env: Env) -> None:
    """A hostile SET is undone by the next call on the same connection, and a BEGIN
    does not carry a transaction (or its locks) into the next call."""
    jwt = env.jwt("acme", "stateful")
    (pid,) = _row(env, jwt, "SELECT pg_backend_pid()")
    assert env.sql(env.a.url, jwt, "SET statement_timeout = 0").status_code == 200
    assert _row(env, jwt, "SELECT pg_backend_pid(), current_setting('statement_timeout')") == [
        pid,
        "300ms",
    ]
    r = env.sql(env.a.url, jwt, "SELECT pg_sleep(5)")
    assert (r.status_code, r.json()["error"]["code"]) == (422, "sql_timeout")
    # BEGIN leaves the connection in a transaction: it is closed (rolled back), not reused.
    (pid,) = _row(env, jwt, "SELECT pg_backend_pid()")
    assert env.sql(env.a.url, jwt, "BEGIN").status_code == 200
    # The next call is on a new connection, and the one left in a transaction is closed.
    (pid2,) = _row(env, jwt, "SELECT pg_backend_pid()")
    assert pid2 != pid
    with _superuser() as su:
        live.wait_until(
            lambda: (
                not su.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
            ),
            timeout=5,
        )


def test_cross_tenant_refused(env: Env) -> None:
    jwt = env.jwt("acme", "spy")
    # The database layer: no privilege on the other tenant's schema (a query that
    # does not name it schema-qualified, so the anomaly rule lets it through).
    r = env.sql(env.a.url, jwt, "SELECT has_schema_privilege('t_globex', 'USAGE')")
    assert r.status_code == 200 and r.json()["result"]["rows"] == [[False]], r.text
    r = env.sql(env.a.url, jwt, "SELECT * FROM items WHERE name LIKE %s", "globex%")
    assert r.status_code == 200 and r.json()["result"]["rows"] == [], r.text
    # The layer below: acme's own OpenBao token cannot get globex's creds either.
    with stack.client_for(env.settings) as client:
        login = client.request(
            "POST", "auth/sessions/login", body={"role": ROLE, "jwt": jwt}, token=""
        )
        token = login["auth"]["client_token"]
        env.canaries.add(token)
        with pytest.raises(Exception, match="403"):
            client.read(f"database/creds/{ROLE}-globex", token=token)


def test_delete_drops_role_terminates_connection_and_refuses_jwt(env: Env) -> None:
    jwt = env.jwt("acme", "ender")
    user = _user_of(env, env.a.url, jwt)
    password = env.canaries.db_users[user]
    held = psycopg.connect(
        host="127.0.0.1", dbname=env.fx.dbname, user=user, password=password, autocommit=True
    )
    try:
        held.execute("SELECT 1")
        r = env.agent.send("DELETE", f"{env.a.url}/v1/sessions/{_sid(jwt)}", jwt)
        assert r.status_code == 200, r.text
        assert r.json()["leases_revoked"] == 1
        # DELETE answers after the revocation: the role is gone (latency: make bench).
        live.wait_until(lambda: not role_exists(user), timeout=10.0)
        with pytest.raises(psycopg.OperationalError):
            for _ in range(50):
                held.execute("SELECT 1")
                time.sleep(0.02)
    finally:
        held.close()
    r = env.sql(env.a.url, jwt, "SELECT 1")
    assert (r.status_code, r.json()["error"]["code"]) == (401, "session_ended")


def test_two_replicas_share_the_registry(env: Env) -> None:
    jwt = env.jwt("globex", "twin")
    user_b = _user_of(env, env.b.url, jwt)  # started on B (separate process)
    user_a = _user_of(env, env.a.url, jwt)  # A lacks B's credential: it gets its own lease
    assert user_a != user_b
    info = env.agent.send("GET", f"{env.a.url}/v1/sessions/{_sid(jwt)}", jwt).json()
    assert info["lease_count"] == 2
    r = env.agent.send("DELETE", f"{env.a.url}/v1/sessions/{_sid(jwt)}", jwt)  # ended on A
    assert r.json()["leases_revoked"] == 2
    live.wait_until(lambda: not role_exists(user_a) and not role_exists(user_b), timeout=1.0)
    assert backends_of(user_b) == 0
    r = env.sql(env.b.url, jwt, "SELECT 1")
    assert (r.status_code, r.json()["error"]["code"]) == (401, "session_ended")


def test_admin_revoke(env: Env) -> None:
    jwt = env.jwt("acme", "rogue")
    user = _user_of(env, env.b.url, jwt)
    sid = _sid(jwt)
    r = env.agent.send("POST", f"{env.b.url}/v1/sessions/{sid}/revoke", jwt)
    assert (r.status_code, r.json()["error"]["code"]) == (403, "not_admin")
    r = env.agent.send("POST", f"{env.a.url}/v1/sessions/{sid}/revoke", env.admin_jwt())
    assert r.status_code == 200, r.text
    live.wait_until(lambda: not role_exists(user), timeout=1.0)
    info = env.agent.send("GET", f"{env.b.url}/v1/sessions/{sid}", env.admin_jwt()).json()
    assert (info["state"], info["ended_reason"]) == ("ended", "revoked")


def test_sweeper_ends_expired_session(env: Env) -> None:
    # Long enough that the first call still lands inside the session on a loaded box.
    jwt = env.jwt("acme", "sleepy", ttl=6)
    user = _user_of(env, env.a.url, jwt)
    live.wait_until(lambda: not role_exists(user), timeout=15.0, interval=0.1)
    # The lease (bounded to exp, rounded down) may drop the user just before the
    # sweeper ends the session at exp.
    url = f"{env.a.url}/v1/sessions/{_sid(jwt)}"
    live.wait_until(
        lambda: env.agent.send("GET", url, env.admin_jwt()).json()["state"] == "ended",
        timeout=10.0,
        interval=0.1,
    )
    r = env.sql(env.a.url, jwt, "SELECT 1")
    assert r.status_code == 401


def test_lease_bounded_to_session_dies_with_no_gateway(env: Env) -> None:
    """A gateway creates the session's user and dies; OpenBao drops the user at ``exp``.

    The gateway here has its own in-memory registry and no sweeper, so neither
    replica A nor B knows the session: only the lease's TTL can end it.
    """
    cfg = GatewayConfig.model_validate(
        _gateway_config(env.dir, env.settings, live.free_port(), "unused", env.fx)
    )
    inner = httpx.HTTPTransport(verify=ssl.create_default_context(cafile=str(cfg.openbao.ca_file)))
    bao = OpenBaoClient(
        cfg.openbao.addrs,
        cfg.openbao.ca_file,
        retry_for=5,
        transport=live.RecordingTransport(inner, env.canaries),
    )
    gw = Gateway(cfg, bao=bao, registry=MemoryRegistry(), tools=load_tools(cfg))
    ttl = 8
    jwt = env.jwt("acme", "orphan", ttl=ttl)
    exp = _claims(jwt)["exp"]
    try:
        out = gw.call_tool(jwt, "sql.query", {"sql": "SELECT current_user"})
        user = str(out["rows"][0][0])
        (lease_id,) = gw.registry.leases(_sid(jwt))
        assert gw.metrics.lease_bounds.labels("ok")._value.get() == 1
    finally:
        gw.close()  # the "gateway dies": its pools close, nothing is revoked
        bao.close()
    with stack.client_for(env.settings) as client:
        tok = bootstrap.login(client, env.workload, bootstrap.GATEWAY)
        try:
            look = client.write("sys/leases/lookup", {"lease_id": lease_id}, token=tok)
        finally:
            client.request("POST", "auth/token/revoke-self", token=tok, retry_for=2)
    lease_ttl = int(look["data"]["ttl"])
    assert 0 < lease_ttl <= exp - time.time() + 1, (lease_ttl, exp - time.time())
    password = env.canaries.db_users[user]
    held = psycopg.connect(
        host="127.0.0.1", dbname=env.fx.dbname, user=user, password=password, autocommit=True
    )
    try:
        assert role_exists(user)
        live.wait_until(lambda: not role_exists(user), timeout=exp - time.time() + 5, interval=0.1)
        gone_at = time.time()
        assert gone_at >= exp - 1.5, f"dropped {exp - gone_at:.1f}s before exp"
        assert gone_at <= exp + 3, f"dropped {gone_at - exp:.1f}s after exp"
        assert backends_of(user) == 0
        with pytest.raises(psycopg.OperationalError):
            held.execute("SELECT 1")
    finally:
        held.close()


def test_anomaly_out_of_scope_revokes_and_is_audited(env: Env) -> None:
    jwt = env.jwt("acme", "wanderer")
    sid = _sid(jwt)
    user = _user_of(env, env.a.url, jwt)
    r = env.sql(env.a.url, jwt, 'SELECT * FROM "t_globex" . items')
    assert (r.status_code, r.json()["error"]["code"]) == (403, "anomaly_revoked"), r.text
    assert "globex-row" not in r.text
    live.wait_until(lambda: not role_exists(user), timeout=10.0)
    info = env.agent.send("GET", f"{env.b.url}/v1/sessions/{sid}", env.admin_jwt()).json()
    assert (info["state"], info["ended_reason"]) == ("ended", "anomaly")
    r = env.sql(env.b.url, jwt, "SELECT 1")
    assert (r.status_code, r.json()["error"]["code"]) == (401, "session_ended")
    path = f"secret/data/clawql-anomalies/{sid}/out_of_scope"
    live.wait_until(lambda: path in _audit_text(env), timeout=3.0, interval=0.1)
    assert any("anomaly sid=" + sid in line and "out_of_scope" in line for line in env.logs.lines)


def test_anomaly_denied_burst_revokes(env: Env) -> None:
    jwt = env.jwt("globex", "prober")
    sid = _sid(jwt)
    codes = []
    for _ in range(8):
        r = env.sql(env.a.url, jwt, "SELECT rolpassword FROM pg_authid")
        codes.append(r.json()["error"]["code"])
        if codes[-1] != "sql_permission_denied":
            break
    # denied_max (5) denials are tolerated; the next one revokes.
    assert codes == ["sql_permission_denied"] * 5 + ["anomaly_revoked"], codes
    info = env.agent.send("GET", f"{env.a.url}/v1/sessions/{sid}", env.admin_jwt()).json()
    assert (info["state"], info["ended_reason"], info["lease_count"]) == ("ended", "anomaly", 0)


def _leader(env: Env, client: OpenBaoClient) -> str | None:
    for node in NODE_IDS:
        h = client.health(env.settings.api_addr(node))
        if h and h.get("initialized") and not h.get("sealed") and not h.get("standby"):
            return node
    return None


def test_leader_kill_during_tool_calls(env: Env) -> None:
    """SIGKILL the leader under a stream of calls: calls resume within seconds, and a
    session started during the failover gets a bounded lease; ending drops every user."""
    steady = env.jwt("globex", "steady", ttl=120)
    users = [_user_of(env, env.a.url, steady)]
    log: list[tuple[float, int]] = []
    stop = threading.Event()

    def stream() -> None:
        with httpx.Client(timeout=15) as http:
            deadline = time.monotonic() + 40
            while not stop.is_set() and time.monotonic() < deadline and len(log) < 400:
                r = http.post(
                    f"{env.a.url}/v1/tools/sql.query",
                    json={"sql": "SELECT 1"},
                    headers={"Authorization": f"Bearer {steady}"},
                )
                env.agent.bodies.append(r.text)
                log.append((time.monotonic(), r.status_code))
                time.sleep(0.05)

    with stack.client_for(env.settings) as client:
        old = _leader(env, client)
        assert old
        t = threading.Thread(target=stream)
        t.start()
        try:
            live.wait_until(lambda: len(log) >= 5, timeout=10)
            pid = stack.child_pid(env.settings, old)
            assert pid
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            # A fresh session's first use (JWT login, creds, lease bound) through the failover.
            fresh = env.jwt("acme", "newcomer", ttl=60)
            r = env.sql(env.b.url, fresh, "SELECT current_user")
            for _ in range(20):
                if r.status_code == 200:
                    break
                time.sleep(0.5)
                r = env.sql(env.b.url, fresh, "SELECT current_user")
            assert r.status_code == 200, r.text
            users.append(str(r.json()["result"]["rows"][0][0]))
            live.wait_until(
                lambda: sum(1 for ts, st in log if ts > killed and st == 200) >= 10, timeout=20
            )
        finally:
            stop.set()
            t.join()
    first_ok = min(ts for ts, st in log if ts > killed and st == 200)
    assert first_ok - killed < 10, f"calls resumed {first_ok - killed:.1f}s after the kill"
    for jwt in (steady, fresh):
        sid = _sid(jwt)
        info = env.agent.send("GET", f"{env.a.url}/v1/sessions/{sid}", jwt).json()
        assert info["state"] == "active" and info["lease_count"] >= 1
        r = env.agent.send("DELETE", f"{env.a.url}/v1/sessions/{sid}", jwt)
        assert r.status_code == 200, r.text
    live.wait_until(lambda: not any(role_exists(u) for u in users), timeout=2.0)
    failures = sum(1 for ts, st in log if ts > killed and st != 200)
    print(f"leader kill: resumed after {first_ok - killed:.2f}s, {failures} failed calls")


def _audit_text(env: Env) -> str:
    parts = []
    for node in NODE_IDS:
        with contextlib.suppress(FileNotFoundError):
            parts.append(env.settings.audit_log(node).read_text(errors="replace"))
    return "\n".join(parts)


def test_zz_canaries_never_leak(env: Env) -> None:
    """Every credential issued in this module: in no response, log line, metrics page
    or OpenBao audit log (which HMACs tokens and passwords)."""
    for base in (env.a.url, env.b.url):
        env.agent.send("GET", f"{base}/metrics")
        env.agent.send("GET", f"{base}/openapi.json")
    haystacks = {
        "responses": "\n".join(env.agent.bodies),
        "gateway A log": "\n".join(env.logs.lines),
        "gateway B log": env.b.log_path.read_text(errors="replace"),
        "OpenBao audit logs": _audit_text(env),
        "the Redis registry": _redis_text(env.prefix),
    }
    assert "database/creds/" in haystacks["OpenBao audit logs"]
    assert "database/creds/" in haystacks["the Redis registry"]  # lease ids are there
    assert len(env.canaries.db_users) >= 5
    assert len(env.canaries.values) >= 10
    for where, text in haystacks.items():
        hits = [c[:4] + "…" for c in env.canaries.values if c in text]
        assert not hits, f"{len(hits)} credentials found in {where}"
    assert "clawql_gateway_tool_calls_total" in haystacks["responses"]


def _redis_text(prefix: str) -> str:
    """Every key and value of the registry, whatever its type."""
    r = redis.Redis(host="127.0.0.1", port=6379, decode_responses=True)
    out: list[str] = []
    try:
        for key in r.scan_iter(f"{prefix}:*"):
            kind = r.type(key)
            if kind == "hash":
                value: object = r.hgetall(key)
            elif kind == "set":
                value = r.smembers(key)
            elif kind == "zset":
                value = r.zrange(key, 0, -1, withscores=True)
            elif kind == "list":
                value = r.lrange(key, 0, -1)
            else:
                value = r.get(key)
            out.append(f"{key} {value}")
    finally:
        r.close()
    return "\n".join(out)


def _claims(jwt: str) -> dict[str, Any]:
    import base64
    import json

    seg = jwt.split(".")[1]
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))
    return value


def _sid(jwt: str) -> str:
    return str(_claims(jwt)["sid"])
