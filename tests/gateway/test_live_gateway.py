"""The gateway against the real thing: 3-node OpenBao, PostgreSQL 15, Redis, two replicas.

Replica A is in this process (so its OpenBao traffic can be recorded for the
canaries), replica B a separate ``clawql-secrets gateway serve`` process; both
share one Redis registry. The OpenBao configuration comes from
``openbao_setup`` until ``provision apply`` replaces it.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from clawql_secrets.cluster import stack
from clawql_secrets.cluster.layout import NODE_IDS, StackSettings
from clawql_secrets.gateway import session_issuer
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
            yield Env(s, fx, sessions, workload, a, b, agent, canaries, logs)
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


def test_cross_tenant_refused(env: Env) -> None:
    jwt = env.jwt("acme", "spy")
    r = env.sql(env.a.url, jwt, "SELECT * FROM t_globex.items")
    assert (r.status_code, r.json()["error"]["code"]) == (403, "sql_permission_denied")
    assert "globex-row" not in r.text
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
        t0 = time.monotonic()
        r = env.agent.send("DELETE", f"{env.a.url}/v1/sessions/{_sid(jwt)}", jwt)
        assert r.status_code == 200, r.text
        assert r.json()["leases_revoked"] == 1
        gone = live.wait_until(lambda: not role_exists(user), timeout=1.0)
        assert time.monotonic() - t0 < 1.0, gone
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
    jwt = env.jwt("acme", "sleepy", ttl=2)
    user = _user_of(env, env.a.url, jwt)
    live.wait_until(lambda: not role_exists(user), timeout=6.0, interval=0.1)
    r = env.sql(env.a.url, jwt, "SELECT 1")
    assert r.status_code == 401


def test_zz_canaries_never_leak(env: Env) -> None:
    """Every credential issued in this module: in no response, log line or metrics page."""
    for base in (env.a.url, env.b.url):
        env.agent.send("GET", f"{base}/metrics")
        env.agent.send("GET", f"{base}/openapi.json")
    haystacks = {
        "responses": "\n".join(env.agent.bodies),
        "gateway A log": "\n".join(env.logs.lines),
        "gateway B log": env.b.log_path.read_text(errors="replace"),
    }
    assert len(env.canaries.db_users) >= 5
    assert len(env.canaries.values) >= 10
    for where, text in haystacks.items():
        hits = [c[:4] + "…" for c in env.canaries.values if c in text]
        assert not hits, f"{len(hits)} credentials found in {where}"
    assert "clawql_gateway_tool_calls_total" in haystacks["responses"]


def _sid(jwt: str) -> str:
    import base64
    import json

    seg = jwt.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))["sid"])
