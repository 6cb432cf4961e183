"""Nothing the exchange creates outlives its session, and nothing grows with calls.

Issue 12, items 2 and 3, on OpenBao as ``up`` configures it (``tests/shipped.py``)
and a gateway running the configuration ``up`` writes for it
(``Shipped.gateway_config``; only the port and the registry prefix are this
module's own, so the stack's supervised gateway never shares, and sweeps, these
sessions).

The bound, from the design (ADR 0010): per session and per replica, OpenBao
holds one anchor service token per dynamic credential the session has used
(``<role>.session``: one per ``database/creds/<role>`` read), that token's lease
under ``auth/agents/login/`` and the credential's lease under
``database/creds/<role>/``. A session here uses ``pg_main`` and ``maria_main``,
so D = 2: at most 2 agent tokens, 2 token leases and 2 credential leases per
session, whatever its number of calls. The per-call batch tokens have no
accessor and no lease and are never stored (no raft write): OpenBao cannot
list them, so they are bounded by time instead — each dies ``call_token_ttl``
(15 s) after its call and cannot be revoked earlier.

Counts are read with a break-glass root token (recovery shares decrypted with
the dev holders' identities; revoked at the end): ``auth/token/accessors`` +
``lookup-accessor`` (tokens whose ``path`` is the agents mount's login) and
``sys/leases/lookup`` (``auth/agents/login/`` and ``database/creds/<role>/``).

The load's shape is ``SESSIONS`` x ``CALLS`` (50 sessions, 10,000 calls);
``CLAWQL_COUNTS_SHAPE=sessions,calls`` runs a smaller one (e.g. ``10,1000`` on a
slow CI machine). No timing is asserted: every wait is a bounded ``wait_until``.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from clawql_secrets.cluster import stack
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.cluster.layout import StackSettings
from clawql_secrets.errors import OpenBaoError
from clawql_secrets.gateway import session_issuer
from clawql_secrets.gateway.core import ACCESSOR_PREFIX
from clawql_secrets.issuer import LocalIssuer
from tests.gateway import live
from tests.shipped import Shipped, provisioned

pytestmark = [pytest.mark.cluster, pytest.mark.gateway]

SESSIONS, CALLS = 50, 10_000
if os.environ.get("CLAWQL_COUNTS_SHAPE"):
    SESSIONS, CALLS = (int(x) for x in os.environ["CLAWQL_COUNTS_SHAPE"].split(","))
EARLY = CALLS // 5  # the first sample: after 2,000 of 10,000 calls
ROLE = "analyst"
TENANTS = ("acme", "globex")  # the example's analyst tenants
DATABASES = ("pg_main", "maria_main")
# Per session and replica (module docstring): one anchor token, one token lease
# and one credential lease per dynamic credential used.
PER_SESSION = len(DATABASES)
LOAD_DEADLINE = 420.0  # seconds for the whole load; a stuck run fails, it does not hang


@dataclass(frozen=True)
class Counts:
    """What OpenBao holds for agents right now."""

    tokens: int  # live tokens issued by the agents mount (accessor list)
    tokens_per_sid: dict[str, int]
    token_leases: int  # sys/leases/lookup/auth/<agents mount>/login/
    cred_leases: int  # sys/leases/lookup/database/creds/<role>/ (agents' roles)

    def describe(self) -> str:
        top = max(self.tokens_per_sid.values(), default=0)
        return (
            f"tokens={self.tokens} (sessions {len(self.tokens_per_sid)}, max {top} per session) "
            f"token_leases={self.token_leases} cred_leases={self.cred_leases}"
        )


def _list(client: OpenBaoClient, path: str, root: str) -> list[str]:
    try:
        resp = client.request("LIST", path, token=root)
    except OpenBaoError as exc:
        if exc.status == 404:  # OpenBao answers an empty list with 404
            return []
        raise
    return [str(k) for k in (resp.get("data") or {}).get("keys") or []]


def count(client: OpenBaoClient, root: str, mount: str = "agents") -> Counts:
    """Agent tokens and leases in OpenBao now: ``mount`` is the agents' JWT mount."""
    login = f"auth/{mount}/login"
    per_sid: Counter[str] = Counter()
    tokens = 0
    for accessor in _list(client, "auth/token/accessors", root):
        try:
            info = client.write("auth/token/lookup-accessor", {"accessor": accessor}, token=root)
        except OpenBaoError as exc:
            if exc.status in (400, 403):  # revoked or expired between the list and the lookup
                continue
            raise
        data = info.get("data") or {}
        if str(data.get("path", "")).startswith(login):
            tokens += 1
            per_sid[str((data.get("meta") or {}).get("sid", ""))] += 1
    token_leases = len(_list(client, f"sys/leases/lookup/{login}/", root))
    cred_leases = 0
    for role in _list(client, "sys/leases/lookup/database/creds/", root):
        cred_leases += len(_list(client, f"sys/leases/lookup/database/creds/{role}", root))
    return Counts(tokens, dict(per_sid), token_leases, cred_leases)


root_token = live.root_token  # benchmarks/bench_revocation.py imports it from here


@dataclass
class Env:
    settings: StackSettings
    shipped: Shipped
    bao: OpenBaoClient
    root: str
    replica: live.InProcessReplica
    canaries: live.Canaries
    issuer: LocalIssuer
    prefix: str
    dir: Path

    def jwt(self, tenant: str, agent: str, ttl: int = 900) -> str:
        return session_issuer.issue(
            self.issuer,
            tenant=tenant,
            agent=agent,
            role=ROLE,
            ttl=ttl,
            audience=self.settings.gateway_addr,
        )

    def counts(self) -> Counts:
        return count(self.bao, self.root, self.shipped.state.exchange.mount)


@pytest.fixture(scope="module")
def env(live_stack: StackSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    s = live_stack
    d = tmp_path_factory.mktemp("counts")
    prefix = live.registry_prefix("counts")
    with provisioned(s, d) as sh, stack.client_for(s, retry_for=20) as bao:
        root = root_token(s, bao)
        replica: live.InProcessReplica | None = None
        try:
            cfg = sh.gateway_config(port=live.free_port(), registry_prefix=prefix)
            canaries = live.Canaries()
            replica = live.start_in_process(cfg.model_dump(mode="json"), canaries)
            yield Env(
                s, sh, bao, root, replica, canaries, session_issuer.load_issuer(s.data_dir),
                prefix, d,
            )  # fmt: skip
        finally:
            if replica is not None:
                replica.stop()
            with contextlib.suppress(OpenBaoError):
                bao.request("POST", "auth/token/revoke-self", token=root, retry_for=10)


def session_id(jwt: str) -> str:
    seg = jwt.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))["sid"])


class _Client:
    """One session's kept-alive connection to the gateway (standard library: cheap)."""

    def __init__(self, url: str, jwt: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.headers = {"Authorization": f"Bearer {jwt}", "Content-Type": "application/json"}
        self.sid = session_id(jwt)
        self.busy = 0  # 429/503 answers (the edge's fair shares), retried

    def send(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        raw = json.dumps(body).encode() if body is not None else None
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, raw, self.headers)
                resp = self.conn.getresponse()
                return resp.status, json.loads(resp.read() or b"null")
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # uvicorn closes a connection idle for 5 s (the warm-up barrier):
                # the request never reached the gateway; send it once more.
                self.conn.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def sql(self, database: str, text: str = "SELECT 1") -> Any:
        deadline = time.monotonic() + 30
        while True:
            status, doc = self.send(
                "POST", "/v1/tools/sql.query", {"sql": text, "database": database}
            )
            if status in (429, 503) and time.monotonic() < deadline:
                self.busy += 1
                time.sleep(0.02)
                continue
            if status != 200:
                raise AssertionError(f"sql.query on {database}: HTTP {status} {doc}")
            return doc["result"]

    def end(self) -> dict[str, Any]:
        status, doc = self.send("DELETE", f"/v1/sessions/{self.sid}")
        if status != 200:
            raise AssertionError(f"DELETE session: HTTP {status} {doc}")
        return dict(doc)

    def close(self) -> None:
        self.conn.close()


def test_counts_stay_per_session_and_drop_to_zero(env: Env) -> None:
    before = env.counts()
    assert (before.tokens, before.token_leases, before.cred_leases) == (0, 0, 0), before

    per_session = CALLS // SESSIONS
    clients = [
        _Client(env.replica.url, env.jwt(TENANTS[i % len(TENANTS)], f"load{i}"))
        for i in range(SESSIONS)
    ]
    done = 0
    done_lock = threading.Lock()
    errors: list[BaseException] = []
    warm = threading.Barrier(SESSIONS + 1, timeout=LOAD_DEADLINE)
    deadline = time.monotonic() + LOAD_DEADLINE

    def work(c: _Client) -> None:
        nonlocal done
        try:
            for db in DATABASES:  # first use: each credential's anchor and lease
                c.sql(db)
            warm.wait()
            for n in range(len(DATABASES), per_session):
                if time.monotonic() > deadline:
                    raise AssertionError("the load did not finish within its deadline")
                c.sql(DATABASES[n % len(DATABASES)])
                with done_lock:
                    done += 1
        except BaseException as exc:
            errors.append(exc)
            warm.abort()

    threads = [threading.Thread(target=work, args=(c,), daemon=True) for c in clients]
    samples: list[tuple[int, Counts]] = []
    try:
        for t in threads:
            t.start()
        warm.wait()
        started = time.monotonic()
        with done_lock:
            done += SESSIONS * len(DATABASES)
        # Sample while the calls run: once past EARLY calls, then as often as a count
        # takes, until every worker is done.
        early: Counts | None = None
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            n = done
            if n >= EARLY:
                sample = env.counts()
                samples.append((n, sample))
                early = early or sample
            else:
                time.sleep(0.05)
        for t in threads:
            t.join(timeout=max(1.0, deadline - time.monotonic()))
        assert not errors, errors[:3]
        assert done == per_session * SESSIONS, done
        elapsed = time.monotonic() - started
        final = env.counts()  # every call made, every session still active
    finally:
        ended = []
        for c in clients:
            with contextlib.suppress(Exception):
                ended.append(c.end())
            c.close()

    assert early is not None, "no sample was taken during the run"
    bound = PER_SESSION * SESSIONS
    for n, sample in samples:
        # During the run: within the per-session constant, at every sample.
        assert max(sample.tokens, sample.token_leases, sample.cred_leases) <= bound, (n, sample)
        assert max(sample.tokens_per_sid.values(), default=0) <= PER_SESSION, (n, sample)
    # Steady from the first sample on: nothing grows with the number of calls.
    steady = (bound, bound, bound)
    assert (early.tokens, early.token_leases, early.cred_leases) == steady, early.describe()
    assert (final.tokens, final.token_leases, final.cred_leases) == steady, final.describe()
    assert len(final.tokens_per_sid) == SESSIONS

    # Every session ended: nothing left. DELETE revokes before it answers, but it may
    # answer "revocation_pending" when the sweeper revoked the same anchor at the same
    # moment (a known race: the loser's revoke-accessor gets 400), so the zero is
    # waited for, within invariant 3's second.
    assert len(ended) == SESSIONS, len(ended)
    assert all(e["state"] in ("ended", "revocation_pending") for e in ended), ended
    zero: list[Counts] = []

    def nothing_left() -> bool:
        zero.append(env.counts())
        return (zero[-1].tokens, zero[-1].token_leases, zero[-1].cred_leases) == (0, 0, 0)

    with contextlib.suppress(AssertionError):
        live.wait_until(nothing_left, timeout=10)
    after = zero[-1]
    assert (after.tokens, after.token_leases, after.cred_leases) == (0, 0, 0), after.describe()
    pending = sum(e["state"] != "ended" for e in ended)
    print(
        f"\n{done} calls from {SESSIONS} sessions ({elapsed:.0f} s after the warm-up); "
        "samples (calls: counts): "
        + "; ".join(f"{n}: {x.describe()}" for n, x in samples[:: max(1, len(samples) // 6)])
        + f"; final {final.describe()}; after end {after.describe()}; "
        f"busy retries {sum(c.busy for c in clients)}; DELETEs answering pending {pending}"
    )


# -- item 3: a session's DB user lives exactly as long as the session -----------------------
def _pg_su() -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True)


def pg_alive(user: str) -> bool:
    """The role exists or one of its backends is still connected."""
    with _pg_su() as c:
        role = c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [user]).fetchone()
        conns = c.execute("SELECT 1 FROM pg_stat_activity WHERE usename = %s", [user]).fetchone()
    return role is not None or conns is not None


def maria_alive(user: str) -> bool:
    """The user exists or one of its connections is still open."""
    conn = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM mysql.user WHERE user = %s", [user])
        exists = cur.fetchone() is not None
        cur.execute("SELECT 1 FROM information_schema.PROCESSLIST WHERE USER = %s", [user])
        return exists or cur.fetchone() is not None


def token_alive(bao: OpenBaoClient, root: str, accessor: str) -> bool:
    try:
        bao.write("auth/token/lookup-accessor", {"accessor": accessor}, token=root)
    except OpenBaoError as exc:
        if exc.status is not None and 400 <= exc.status < 500:
            return False
        raise
    return True


def lease_ttl(bao: OpenBaoClient, root: str, lease_id: str) -> int | None:
    try:
        data = bao.write("sys/leases/lookup", {"lease_id": lease_id}, token=root)["data"]
    except OpenBaoError as exc:
        if exc.status is not None and 400 <= exc.status < 500:
            return None
        raise
    return int(data["ttl"])


def _db_users(c: _Client) -> tuple[str, str]:
    pg = c.sql("pg_main", "SELECT current_user")["rows"][0][0]
    maria = c.sql("maria_main", "SELECT CURRENT_USER()")["rows"][0][0]
    return str(pg), str(maria).split("@", 1)[0]


def test_session_credentials_live_exactly_as_long_as_the_session(env: Env) -> None:
    jwt = env.jwt("acme", "exact", ttl=300)
    exp = json.loads(base64.urlsafe_b64decode(jwt.split(".")[1] + "=="))["exp"]
    c = _Client(env.replica.url, jwt)
    try:
        pg_user, maria_user = _db_users(c)
        entries = env.replica.gateway.registry.leases(c.sid)
        accessors = [e[len(ACCESSOR_PREFIX) :] for e in entries if e.startswith(ACCESSOR_PREFIX)]
        leases = [e for e in entries if not e.startswith(ACCESSOR_PREFIX)]
        assert len(accessors) == len(leases) == len(DATABASES), entries
        # Each credential's lease and each anchor token ends at the session's exp:
        # not later (bounded inside OpenBao), not much earlier (it lives as long).
        for lease in leases:
            left = exp - time.time()
            got = lease_ttl(env.bao, env.root, lease)
            assert got is not None and left - 5 <= got <= left + 1, (lease, got, left)
        for acc in accessors:
            left = exp - time.time()
            info = env.bao.write("auth/token/lookup-accessor", {"accessor": acc}, token=env.root)
            got = int(info["data"]["ttl"])
            assert left - 5 <= got <= left + 1, (got, left)
        passwords = {u: env.canaries.db_users[u] for u in (pg_user, maria_user)}

        out = c.end()
        assert out["state"] in ("ended", "revocation_pending"), out  # see the counts test
        live.wait_until(lambda: not pg_alive(pg_user) and not maria_alive(maria_user), 10)
        assert not any(token_alive(env.bao, env.root, a) for a in accessors)
        assert all(lease_ttl(env.bao, env.root, lease) is None for lease in leases)
    finally:
        c.close()
    # The credentials themselves are useless: the gateway's own passwords are refused.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(
            host="127.0.0.1",
            dbname=env.shipped.pg_database,
            user=pg_user,
            password=passwords[pg_user],
            connect_timeout=5,
        ).close()
    with pytest.raises(pymysql.MySQLError):
        pymysql.connect(
            host="127.0.0.1", user=maria_user, password=passwords[maria_user], connect_timeout=5
        ).close()


def test_gateway_killed_anchor_and_db_users_die_at_exp(env: Env) -> None:
    """With no gateway left to end it, OpenBao ends the session's credentials at exp."""
    port = live.free_port()
    prefix = f"{env.prefix}:killed"
    cfg = env.shipped.gateway_config(port=port, registry_prefix=prefix)
    path = env.dir / "killed.json"
    path.write_text(cfg.model_dump_json())
    replica = live.start_process(path, port, env.dir / "killed.log")
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(replica.stop)
        registry = cleanup.enter_context(live.registry_reader(cfg))  # its own Redis user
        ttl = 20  # room for the first calls on a loaded machine, short enough to wait out
        jwt = env.jwt("globex", "killed", ttl=ttl)
        exp = json.loads(base64.urlsafe_b64decode(jwt.split(".")[1] + "=="))["exp"]
        c = cleanup.enter_context(contextlib.closing(_Client(replica.url, jwt)))
        pg_user, maria_user = _db_users(c)
        entries = registry.leases(c.sid)
        accessors = [e[len(ACCESSOR_PREFIX) :] for e in entries if e.startswith(ACCESSOR_PREFIX)]
        assert len(accessors) == len(DATABASES), entries

        replica.proc.send_signal(signal.SIGKILL)  # no sweeper, no revocation, no goodbye
        replica.proc.wait(timeout=10)
        if time.time() < exp - 1:  # still the session's: alive until exp
            assert all(token_alive(env.bao, env.root, a) for a in accessors)
            assert pg_alive(pg_user) and maria_alive(maria_user)

        def dead() -> bool:
            return (
                not any(token_alive(env.bao, env.root, a) for a in accessors)
                and not pg_alive(pg_user)
                and not maria_alive(maria_user)
            )

        live.wait_until(dead, timeout=max(0.0, exp - time.time()) + 30, interval=0.2)
        print(f"\nkilled gateway: credentials gone {time.time() - exp:+.1f} s after exp")
