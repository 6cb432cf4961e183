"""The gateway against the real thing: 3-node OpenBao, PostgreSQL, Redis, two replicas.

OpenBao is configured as ``up`` configures it: the example desired state applied
by the provisioner, its policies approved four-eyes (``tests.shipped``); the
gateway's configuration is the one ``up`` derives from it (``live.config_for``).
Replica A is in this process (so its OpenBao traffic can be recorded for the
canaries), replica B a separate ``clawql-secrets gateway serve`` process; both
share one Redis registry.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest

from clawql_secrets.cluster import bootstrap, stack
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.cluster.layout import NODE_IDS, StackSettings
from clawql_secrets.errors import OpenBaoError
from clawql_secrets.gateway import exchange, session_issuer
from clawql_secrets.gateway.anomaly import tenant_schemas_from_state
from clawql_secrets.gateway.config import GatewayConfig
from clawql_secrets.gateway.core import ACCESSOR_PREFIX, Gateway
from clawql_secrets.gateway.registry import MemoryRegistry
from clawql_secrets.gateway.tools import load_tools
from clawql_secrets.issuer import LocalIssuer
from tests import shipped
from tests.agent_login import agent_login
from tests.gateway import live
from tests.gateway.live import backends_of, role_exists

pytestmark = [pytest.mark.cluster, pytest.mark.gateway]

ROLE = "analyst"
PG = "pg_main"


@dataclass
class Env:
    sh: shipped.Shipped
    cfg: GatewayConfig
    sessions: LocalIssuer
    workload: LocalIssuer
    a: live.InProcessReplica
    b: live.ProcessReplica
    agent: live.Agent
    canaries: live.Canaries
    logs: live.LogCapture

    @property
    def settings(self) -> StackSettings:
        return self.sh.settings

    def jwt(
        self, tenant: str = "acme", agent: str = "bot", ttl: int = 600, role: str = ROLE
    ) -> str:
        return session_issuer.issue(
            self.sessions,
            tenant=tenant,
            agent=agent,
            role=role,
            ttl=ttl,
            audience=self.cfg.sessions.audience,
        )

    def admin_jwt(self) -> str:
        return self.workload.mint(live.ADMIN_SUBJECT, live.ADMIN_AUDIENCE, ttl=120)

    def sql(self, base: str, jwt: str, text: str, *params: Any) -> Any:
        args = {"database": PG, "sql": text, "params": list(params)}
        return self.agent.call(base, jwt, "sql.query", args)


@pytest.fixture(scope="module")
def env(live_stack: StackSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    s = live_stack
    d = tmp_path_factory.mktemp("gw")
    canaries = live.Canaries()
    stop: list[Any] = []
    with live.captured_logs() as logs, shipped.provisioned(s, d) as sh:
        live.seed_items(sh)
        cfg = live.config_for(sh, live.free_port())
        try:
            a = live.start_in_process(cfg, canaries)
            stop.append(a)
            port_b = live.free_port()
            cfg_b = live.write_config(d / "b.yaml", live.config_for(sh, port_b))
            b = live.start_process(cfg_b, port_b, d / "b.log")
            stop.append(b)
            agent = live.Agent()
            stop.append(agent)
            yield Env(
                sh,
                cfg,
                session_issuer.load_issuer(s.data_dir),
                LocalIssuer.load(s.issuer_dir, stack.ISSUER_URL),
                a,
                b,
                agent,
                canaries,
                logs,
            )
        finally:
            for thing in reversed(stop):
                with contextlib.suppress(Exception):
                    thing.stop() if hasattr(thing, "stop") else thing.close()


def _user_of(env: Env, base: str, jwt: str) -> str:
    resp = env.sql(base, jwt, "SELECT current_user")
    assert resp.status_code == 200, resp.text
    return str(resp.json()["result"]["rows"][0][0])


def _end(env: Env, base: str, jwt: str, *, entries: int) -> None:
    """DELETE the session at ``base``: every registry entry (its DB leases and the anchor
    accessors they hang off) is revoked before the answer, even when a sweeper races it
    to one of them; the session reads ``ended`` on every replica."""
    url = f"{base}/v1/sessions/{live.sid(jwt)}"
    r = env.agent.send("DELETE", url, jwt)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["leases_revoked"], out["revocation_pending"], out["state"]) == (
        entries,
        0,
        "ended",
    ), out
    for replica in (env.a.url, env.b.url):
        info = env.agent.send("GET", f"{replica}/v1/sessions/{live.sid(jwt)}", jwt).json()
        assert (info["state"], info["lease_count"]) == ("ended", 0), info


def _logins_of(env: Env, jwt: str) -> list[tuple[str, dict[str, Any]]]:
    """(role, claims) of replica A's exchange logins for ``jwt``'s session."""
    sid = live.sid(jwt)
    with env.canaries.lock:
        sent = list(env.canaries.assertions)
    return [(role, c) for role, a in sent if (c := live.claims(a)).get("sid") == sid]


def test_tool_call_returns_sql_result_and_reuses_session_user(env: Env) -> None:
    jwt = env.jwt()
    r = env.sql(env.a.url, jwt, "SELECT id, name FROM acme.items WHERE id <= %s ORDER BY id", 3)
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    assert res["columns"] == ["id", "name"]
    assert res["rows"] == [[1, "acme-row-1"], [2, "acme-row-2"], [3, "acme-row-3"]]
    user1 = _user_of(env, env.a.url, jwt)
    user2 = _user_of(env, env.a.url, jwt)
    assert user1 == user2 and user1 in shipped.session_users(env.sh.pg_database)
    info = env.agent.send("GET", f"{env.a.url}/v1/sessions/{live.sid(jwt)}", jwt).json()
    # The session's registry entries: its anchor token's accessor and the DB lease.
    assert (info["state"], info["lease_count"], info["tenant"]) == ("active", 2, "acme")
    # limits: rows, one statement only
    r = env.agent.call(
        env.a.url,
        jwt,
        "sql.query",
        {"database": PG, "sql": "SELECT g FROM generate_series(1,50) g", "max_rows": 5},
    )
    assert r.json()["result"]["truncated"] is True and len(r.json()["result"]["rows"]) == 5
    r = env.sql(env.a.url, jwt, "SELECT 1; DROP TABLE acme.items")
    assert (r.status_code, r.json()["error"]["code"]) == (400, "sql_multiple_statements")
    r = env.sql(env.a.url, jwt, "SELECT pg_sleep(5)")
    assert (r.status_code, r.json()["error"]["code"]) == (422, "sql_timeout")


def test_each_call_is_an_exchange_naming_agent_and_gateway(env: Env) -> None:
    """What OpenBao saw: per call a seconds-lived assertion signed by the gateway (never
    the session JWT), for the agent role's batch role; once, for the session's DB user,
    one for its anchor role."""
    jwt = env.jwt("globex", "exchanged")
    for _ in range(3):
        assert env.sql(env.a.url, jwt, "SELECT 1").status_code == 200
    logins = _logins_of(env, jwt)
    assert [role for role, _ in logins] == [ROLE, f"{ROLE}.session", ROLE, ROLE]
    x, session = env.cfg.exchange, live.claims(jwt)
    for _, c in logins:
        assert (c["iss"], c["aud"], c["act"]) == (x.issuer, x.audience, {"sub": x.actor})
        assert (c["sub"], c["tenant"], c["agent"], c["agent_role"]) == (
            "globex/exchanged",
            "globex",
            "exchanged",
            ROLE,
        )
        assert c["exp"] - (c["iat"] + exchange.SKEW) <= x.ttl and c["exp"] <= session["exp"]
    with env.canaries.lock:
        sent = [a for _, a in env.canaries.assertions]
    assert jwt not in sent and len(env.canaries.anchors) >= 1


def _row(env: Env, jwt: str, text: str) -> list[Any]:
    r = env.sql(env.a.url, jwt, text)
    assert r.status_code == 200, r.text
    return list(r.json()["result"]["rows"][0])


def test_sql_session_state_cannot_outlive_a_call(env: Env) -> None:
    """A hostile SET (lifting the statement timeout) and a BEGIN (carrying a transaction,
    and its locks, into the next call) are refused before they reach the database: the
    shipped roles may read only. The connection is left as it was."""
    jwt = env.jwt("acme", "stateful")
    (pid,) = _row(env, jwt, "SELECT pg_backend_pid()")
    for text, code in (
        ("SET statement_timeout = 0", "sql_session_refused"),
        ("BEGIN", "sql_transaction_refused"),
    ):
        r = env.sql(env.a.url, jwt, text)
        assert (r.status_code, r.json()["error"]["code"]) == (403, code), r.text
    assert _row(env, jwt, "SELECT pg_backend_pid(), current_setting('statement_timeout')") == [
        pid,
        "300ms",
    ]
    r = env.sql(env.a.url, jwt, "SELECT pg_sleep(5)")
    assert (r.status_code, r.json()["error"]["code"]) == (422, "sql_timeout")


def test_cross_tenant_refused(env: Env) -> None:
    jwt = env.jwt("acme", "spy")
    # The database layer: no privilege on the other tenant's schema (a query that
    # does not name it as a schema, so the anomaly rule lets it through).
    r = env.sql(env.a.url, jwt, "SELECT has_schema_privilege('globex', 'USAGE')")
    assert r.status_code == 200 and r.json()["result"]["rows"] == [[False]], r.text
    r = env.sql(env.a.url, jwt, "SELECT * FROM acme.items WHERE name LIKE %s", "globex%")
    assert r.status_code == 200 and r.json()["result"]["rows"] == [], r.text
    # The table resolved from a string (no schema name for the anomaly rule to see):
    # PostgreSQL itself refuses the schema.
    r = env.sql(env.a.url, jwt, "SELECT 'globex.items'::regclass::text")
    assert (r.status_code, r.json()["error"]["code"]) == (403, "sql_permission_denied"), r.text
    # The exchange: reporter is globex's role only; OpenBao refuses an acme subject.
    r = env.sql(env.a.url, env.jwt("acme", "spy2", role="reporter"), "SELECT 1")
    assert (r.status_code, r.json()["error"]["code"]) == (403, "exchange_refused"), r.text
    with stack.client_for(env.settings) as client:
        # The session JWT itself opens nothing in OpenBao.
        with pytest.raises(OpenBaoError) as err:
            client.request("POST", "auth/agents/login", body={"role": ROLE, "jwt": jwt}, token="")
        assert err.value.status == 400
        # The layer below: acme's own OpenBao token (as the gateway gets it) cannot get
        # globex's credentials either.
        auth = agent_login(client, env.settings.data_dir, tenant="acme", agent="spy", role=ROLE)
        token = str(auth["client_token"])
        env.canaries.add(token)
        with pytest.raises(OpenBaoError) as err:
            client.read(f"database/creds/globex-{ROLE}-{PG}", token=token)
        assert err.value.status == 403


def test_delete_drops_role_terminates_connection_and_refuses_jwt(env: Env) -> None:
    jwt = env.jwt("acme", "ender")
    user = _user_of(env, env.a.url, jwt)
    password = env.canaries.db_users[user]
    held = psycopg.connect(
        host="127.0.0.1", dbname=env.sh.pg_database, user=user, password=password, autocommit=True
    )
    try:
        held.execute("SELECT 1")
        # The DB lease and the anchor token it hangs off.
        _end(env, env.a.url, jwt, entries=2)
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
    info = env.agent.send("GET", f"{env.a.url}/v1/sessions/{live.sid(jwt)}", jwt).json()
    assert info["lease_count"] == 4  # two DB leases, two anchor accessors
    _end(env, env.a.url, jwt, entries=4)  # ended on A
    live.wait_until(lambda: not role_exists(user_a) and not role_exists(user_b), timeout=10)
    assert backends_of(user_b) == 0
    r = env.sql(env.b.url, jwt, "SELECT 1")
    assert (r.status_code, r.json()["error"]["code"]) == (401, "session_ended")


def test_admin_revoke(env: Env) -> None:
    jwt = env.jwt("acme", "rogue")
    user = _user_of(env, env.b.url, jwt)
    sid = live.sid(jwt)
    r = env.agent.send("POST", f"{env.b.url}/v1/sessions/{sid}/revoke", jwt)
    assert (r.status_code, r.json()["error"]["code"]) == (403, "not_admin")
    r = env.agent.send("POST", f"{env.a.url}/v1/sessions/{sid}/revoke", env.admin_jwt())
    assert r.status_code == 200, r.text
    live.wait_until(lambda: not role_exists(user), timeout=10)
    info = env.agent.send("GET", f"{env.b.url}/v1/sessions/{sid}", env.admin_jwt()).json()
    assert (info["state"], info["ended_reason"]) == ("ended", "revoked")


def test_sweeper_ends_expired_session(env: Env) -> None:
    # Long enough that the first call still lands inside the session on a loaded box.
    jwt = env.jwt("acme", "sleepy", ttl=6)
    user = _user_of(env, env.a.url, jwt)
    live.wait_until(lambda: not role_exists(user), timeout=15.0, interval=0.1)
    # The lease (bounded to exp, rounded down) may drop the user just before the
    # sweeper ends the session at exp.
    url = f"{env.a.url}/v1/sessions/{live.sid(jwt)}"
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
    replica A nor B knows the session: only TTLs can end it — the DB lease's and
    the anchor token's it hangs off, both set to the session's remaining life.
    """
    cfg = env.cfg.model_copy(update={"port": live.free_port()})
    bao = live.recording_client(cfg, env.canaries)
    gw = Gateway(cfg, bao=bao, registry=MemoryRegistry(), tools=load_tools(cfg))
    jwt = env.jwt("acme", "orphan", ttl=12)
    exp = live.claims(jwt)["exp"]
    try:
        out = gw.call_tool(jwt, "sql.query", {"database": PG, "sql": "SELECT current_user"})
        user = str(out["rows"][0][0])
        entries = gw.registry.leases(live.sid(jwt))
        (accessor,) = [e[len(ACCESSOR_PREFIX) :] for e in entries if e.startswith(ACCESSOR_PREFIX)]
        (lease_id,) = [e for e in entries if not e.startswith(ACCESSOR_PREFIX)]
        bounds = gw.metrics.lease_bounds
        assert bounds.labels("ok")._value.get() + bounds.labels("already")._value.get() == 1
        assert bounds.labels("failed")._value.get() == 0
    finally:
        gw.close()  # the "gateway dies": its pools close, nothing is revoked
        bao.close()
    left = exp - time.time()  # before the lookups: their TTLs can only be lower
    with stack.client_for(env.settings) as client:
        tok = bootstrap.login(client, env.workload, bootstrap.GATEWAY)
        try:
            look = client.write("sys/leases/lookup", {"lease_id": lease_id}, token=tok)
            anchor = client.write("auth/token/lookup-accessor", {"accessor": accessor}, token=tok)
        finally:
            client.request("POST", "auth/token/revoke-self", token=tok, retry_for=2)
    assert 0 < int(look["data"]["ttl"]) <= left + 1, (look["data"]["ttl"], left)
    assert 0 < int(anchor["data"]["ttl"]) <= left + 1, (anchor["data"]["ttl"], left)
    password = env.canaries.db_users[user]
    held = psycopg.connect(
        host="127.0.0.1", dbname=env.sh.pg_database, user=user, password=password, autocommit=True
    )
    try:
        assert role_exists(user)
        # Not before the session's exp: the TTLs are its remaining life (rounded down).
        live.wait_until(lambda: not role_exists(user), timeout=exp - time.time() + 15, interval=0.1)
        gone_at = time.time()
        assert gone_at >= exp - 1.5, f"dropped {exp - gone_at:.1f}s before exp"
        print(f"no gateway: the session's user was dropped {gone_at - exp:+.2f}s after exp")
        assert backends_of(user) == 0
        with pytest.raises(psycopg.OperationalError):
            held.execute("SELECT 1")
    finally:
        held.close()


def test_anomaly_out_of_scope_revokes_and_is_audited(env: Env) -> None:
    # The shipped configuration names each tenant's schemas, as the desired state does.
    assert env.cfg.anomaly.tenant_schemas == tenant_schemas_from_state(env.sh.state)
    jwt = env.jwt("acme", "wanderer")
    sid = live.sid(jwt)
    user = _user_of(env, env.a.url, jwt)
    r = env.sql(env.a.url, jwt, 'SELECT * FROM "globex" . items')
    assert (r.status_code, r.json()["error"]["code"]) == (403, "anomaly_revoked"), r.text
    assert "globex-row" not in r.text
    live.wait_until(lambda: not role_exists(user), timeout=10.0)
    info = env.agent.send("GET", f"{env.b.url}/v1/sessions/{sid}", env.admin_jwt()).json()
    assert (info["state"], info["ended_reason"]) == ("ended", "anomaly")
    r = env.sql(env.b.url, jwt, "SELECT 1")
    assert (r.status_code, r.json()["error"]["code"]) == (401, "session_ended")
    path = f"secret/data/clawql-anomalies/{sid}/out_of_scope"
    live.wait_until(lambda: path in live.audit_text(env.settings), timeout=3.0, interval=0.1)
    assert any("anomaly sid=" + sid in line and "out_of_scope" in line for line in env.logs.lines)


def test_anomaly_denied_burst_revokes(env: Env) -> None:
    jwt = env.jwt("globex", "prober")
    sid = live.sid(jwt)
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
                    json={"database": PG, "sql": "SELECT 1"},
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
            # A fresh session's first use (exchange, anchor, creds, lease bound) through
            # the failover.
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
    for jwt in (steady, fresh):
        sid = live.sid(jwt)
        info = env.agent.send("GET", f"{env.a.url}/v1/sessions/{sid}", jwt).json()
        assert info["state"] == "active" and info["lease_count"] >= 1
        r = env.agent.send("DELETE", f"{env.a.url}/v1/sessions/{sid}", jwt)
        assert r.status_code == 200, r.text
    live.wait_until(lambda: not any(role_exists(u) for u in users), timeout=10)
    failures = sum(1 for ts, st in log if ts > killed and st != 200)
    print(f"leader kill: resumed after {first_ok - killed:.2f}s, {failures} failed calls")


def test_zz_canaries_never_leak(env: Env) -> None:
    """Every credential issued or sent in this module — OpenBao tokens (batch and anchor),
    accessors, exchange assertions, DB passwords: in no response, log line, metrics
    page, OpenBao audit log (which HMACs tokens, JWTs and passwords) or registry."""
    for base in (env.a.url, env.b.url):
        env.agent.send("GET", f"{base}/metrics")
        env.agent.send("GET", f"{base}/openapi.json")
    haystacks = {
        "responses": "\n".join(env.agent.bodies),
        "gateway A log": "\n".join(env.logs.lines),
        "gateway B log": env.b.log_path.read_text(errors="replace"),
        "OpenBao audit logs": live.audit_text(env.settings),
    }
    registry = live.redis_text(env.settings, env.cfg.registry.prefix)
    assert "database/creds/" in haystacks["OpenBao audit logs"]
    assert "database/creds/" in registry  # lease ids are there
    assert ACCESSOR_PREFIX in registry  # and anchor accessors (no token): ADR 0010
    assert len(env.canaries.db_users) >= 5
    assert len(env.canaries.assertions) >= 10 and len(env.canaries.anchors) >= 5
    assert len(env.canaries.values) >= 20
    for where, text in haystacks.items():
        hits = env.canaries.found_in(text)
        assert not hits, f"{len(hits)} credentials found in {where}"
    hits = env.canaries.found_in(registry, accessors=False)
    assert not hits, f"{len(hits)} credentials found in the Redis registry"
    assert "clawql_gateway_tool_calls_total" in haystacks["responses"]
