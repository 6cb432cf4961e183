"""The session registry's Redis credentials, live (ADR 0011; issue 15).

On the stack as ``up`` runs it (its registry Redis a supervised child, TLS only, its
admin password handed to OpenBao and rotated at each start) and OpenBao as
``provision apply`` configures it (``tests/shipped.py``):

- a gateway credential, issued by OpenBao to the gateway identity, is confined to the
  registry's keys and commands: nothing outside ``clawql:gw:*``, no KEYS/SCAN,
  CONFIG, ACL, FLUSHALL, EVAL, DEL, no script reaching another key or command;
- only the gateway identity reads it: not the provisioner, the operator or an agent;
- each replica has its own user, a lease of minutes that OpenBao holds;
- when OpenBao revokes every gateway user at once (revoke-prefix with a root token, as
  an operator would; an expiry does the same in Redis), the gateway keeps serving:
  the calls in flight are retried under a new user;
- a restart of the registry's Redis re-keys OpenBao, the gateway recovers, and an
  ended session stays ended (its snapshot on disk);
- no registry password appears in any file under the data directory, in the logs
  or in ``status``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from clawql_secrets.cluster import bootstrap, redis_registry, stack
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.cluster.layout import StackSettings
from clawql_secrets.cluster.supervisor import REGISTRY
from clawql_secrets.errors import OpenBaoError
from clawql_secrets.gateway import registry_creds, session_issuer
from clawql_secrets.gateway.config import GatewayConfig
from clawql_secrets.gateway.exchange import AssertionSpec, ExchangeSigner
from clawql_secrets.gateway.jwt_check import SessionClaims
from clawql_secrets.gateway.registry import RedisRegistry
from clawql_secrets.issuer import LocalIssuer
from tests import shipped
from tests.gateway import live

pytestmark = [pytest.mark.cluster, pytest.mark.gateway]

PG = "pg_main"
CREDS = redis_registry.CREDS_PATH


@dataclass
class Env:
    sh: shipped.Shipped
    cfg: GatewayConfig
    a: live.InProcessReplica
    agent: live.Agent
    canaries: live.Canaries
    logs: live.LogCapture
    bao: OpenBaoClient
    root: str

    @property
    def settings(self) -> StackSettings:
        return self.sh.settings

    def jwt(self, agent: str, ttl: int = 300) -> str:
        return session_issuer.issue(
            session_issuer.load_issuer(self.settings.data_dir),
            tenant="acme",
            agent=agent,
            role="analyst",
            ttl=ttl,
            audience=self.cfg.sessions.audience,
        )

    def sql(self, jwt: str) -> httpx.Response:
        return self.agent.call(self.a.url, jwt, "sql.query", {"database": PG, "sql": "SELECT 1"})

    @property
    def connection(self) -> registry_creds.RegistryConnection:
        reg = self.a.gateway.registry
        assert isinstance(reg, RedisRegistry)
        source = reg.source
        assert isinstance(source, registry_creds.RegistryConnection)
        return source

    def registry_passwords(self) -> list[str]:
        """Every registry password OpenBao issued to replica A (seen on its OpenBao wire)."""
        with self.canaries.lock:
            users = dict(self.canaries.db_users)
        return [p for u, p in users.items() if u.startswith("V_WORKLOAD-CLAWQL-GATEWAY_GATEWAY")]


@pytest.fixture(scope="module")
def env(live_stack: StackSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    s = live_stack
    canaries = live.Canaries()
    with (
        live.captured_logs() as logs,
        shipped.provisioned(s, tmp_path_factory.mktemp("registry")) as sh,
        stack.client_for(s, retry_for=20) as bao,
    ):
        cfg = live.config_for(sh, live.free_port())
        root = live.root_token(s, bao)
        a = live.start_in_process(cfg, canaries)
        agent = live.Agent()
        try:
            yield Env(sh, cfg, a, agent, canaries, logs, bao, root)
        finally:
            agent.close()
            a.stop()
            with contextlib.suppress(OpenBaoError):
                bao.request("POST", "auth/token/revoke-self", token=root, retry_for=10)


@contextlib.contextmanager
def _gateway_credential(env: Env) -> Iterator[registry_creds.Credential]:
    """A credential as a replica gets one (the gateway identity), retired at the end."""
    issuer = registry_creds.OpenBaoIssuer(env.bao, env.cfg.identity, env.cfg.registry.creds_path)
    cred = issuer.issue()
    env.canaries.add(cred.password)
    try:
        yield cred
    finally:
        issuer.retire(cred)


# -- confinement ----------------------------------------------------------------------------
_OTHER = "tenants:acme:cache"  # a key outside the registry's namespace
CONFINED: dict[str, list[Any]] = {
    "read a key outside the prefix": ["HGETALL", _OTHER],
    "write a key outside the prefix": ["HSET", _OTHER, "state", "active"],
    "a sorted set outside the prefix": ["ZADD", _OTHER, "1", "x"],
    "list every key": ["KEYS", "*"],
    "scan every key": ["SCAN", "0"],
    "random key": ["RANDOMKEY"],
    "config get": ["CONFIG", "GET", "*"],
    "config set": ["CONFIG", "SET", "protected-mode", "no"],
    "acl list": ["ACL", "LIST"],
    "acl setuser": ["ACL", "SETUSER", "mallory", "on", ">pw", "~*", "+@all"],
    "acl deluser": ["ACL", "DELUSER", redis_registry.ADMIN_USER],
    "flushall": ["FLUSHALL"],
    "flushdb": ["FLUSHDB"],
    "delete the active set": ["DEL", "clawql:gw:active"],
    "rename a key": ["RENAME", "clawql:gw:active", "clawql:gw:x"],
    "eval": ["EVAL", "return redis.call('HSET', KEYS[1], 'state', 'active')", "1", "k"],
    "script flush": ["SCRIPT", "FLUSH"],
    "function load": ["FUNCTION", "LOAD", "#!lua name=x\nredis.register_function('f', f)"],
    "multi": ["MULTI"],
    "select another db": ["SELECT", "1"],
    "swap dbs": ["SWAPDB", "0", "1"],
    "sort by another key": ["SORT", "clawql:gw:active", "BY", f"{_OTHER}:*"],
    "migrate": ["MIGRATE", "127.0.0.1", "1", "clawql:gw:active", "0", "10"],
    "info": ["INFO"],
    "client list": ["CLIENT", "LIST"],
    "client kill": ["CLIENT", "KILL", "USER", redis_registry.ADMIN_USER],
    "monitor": ["MONITOR"],
    "publish": ["PUBLISH", "clawql", "x"],
    "debug": ["DEBUG", "SLEEP", "0"],
    "module load": ["MODULE", "LOAD", "/tmp/x.so"],
    "bgsave": ["BGSAVE"],
    "shutdown": ["SHUTDOWN", "NOSAVE"],
}
# Scripts the user may load (the registry loads its own) but whose commands Redis checks
# against the same ACL when they run.
SCRIPTS: dict[str, tuple[str, list[str]]] = {
    "a script given a key outside the prefix": (
        "return redis.call('HSET', KEYS[1], 'state', 'active')",
        [_OTHER],
    ),
    "a script naming a key outside the prefix": (
        f"return redis.call('HSET', '{_OTHER}', 'state', 'active')",
        [],
    ),
    "a script calling CONFIG": ("return redis.call('CONFIG', 'SET', 'save', '')", []),
    "a script calling FLUSHALL": ("return redis.call('FLUSHALL')", []),
    "a script listing keys": ("return redis.call('KEYS', '*')", []),
}


def test_a_gateway_credential_is_confined_to_the_registry(env: Env) -> None:
    allowed: list[str] = []
    with _gateway_credential(env) as cred:
        r = live.registry_client(env.settings, cred.username, cred.password)
        try:
            # The control: the same user writes and reads its own namespace.
            probe = live.registry_prefix("confined")
            assert r.hset(f"{probe}:s:x", "state", "ended") == 1
            assert r.hgetall(f"{probe}:s:x") == {"state": "ended"}
            for name, cmd in CONFINED.items():
                try:
                    r.execute_command(*cmd)  # type: ignore[no-untyped-call]
                    allowed.append(name)
                except redis.ResponseError:
                    pass  # NOPERM, or a script's "can't access" / "not allowed"
            for name, (text, keys) in SCRIPTS.items():
                sha = r.script_load(text)
                try:
                    r.evalsha(sha, len(keys), *keys)
                    allowed.append(name)
                except redis.ResponseError:
                    pass
            assert r.ping()  # still connected: every refusal was a refusal, not a kill
        finally:
            r.close()
    assert not allowed, allowed


def test_only_the_gateway_identity_reads_registry_credentials(env: Env) -> None:
    s = env.settings
    issuer = LocalIssuer.load(s.issuer_dir, stack.ISSUER_URL)
    denied: dict[str, int] = {}

    def try_as(who: str, token: str, method: str, path: str, body: Any = None) -> None:
        try:
            env.bao.request(method, path, body=body, token=token, retry_for=2)
        except OpenBaoError as exc:
            denied[f"{who} {method} {path}"] = int(exc.status or 0)

    mount = redis_registry.MOUNT
    for ident in (bootstrap.PROVISIONER, bootstrap.OPERATOR, bootstrap.REGISTRY_KEEPER):
        token = bootstrap.login(env.bao, issuer, ident)
        try:
            try_as(ident.role, token, "GET", CREDS)
            try_as(ident.role, token, "GET", f"{mount}/creds/{redis_registry.INSPECTOR_ROLE}")
            try_as(ident.role, token, "GET", f"{mount}/config/{redis_registry.CONNECTION}")
            try_as(ident.role, token, "POST", f"{mount}/roles/gateway", {"db_name": "x"})
            try_as(ident.role, token, "DELETE", f"sys/mounts/{mount}")
            try_as(ident.role, token, "POST", f"sys/mounts/{mount}/tune", {"max_lease_ttl": "9h"})
        finally:
            env.bao.request("POST", "auth/token/revoke-self", token=token, retry_for=2)
    # An agent's per-call token, from an exchange the gateway signed.
    x = env.cfg.exchange
    signer = ExchangeSigner.from_file(x.key_file, AssertionSpec(x.issuer, x.audience, x.actor))
    now = int(time.time())
    claims = SessionClaims(
        sid="sid-probe",
        tenant="acme",
        agent="probe",
        agent_role="analyst",
        sub="acme/probe",
        exp=now + 60,
        iat=now,
        jti="j",
    )
    login = env.bao.request(
        "POST",
        f"auth/{env.cfg.sessions.mount}/login",
        body={"role": "analyst", "jwt": signer.assertion(claims, time.time())},
        token="",
    )
    try_as("agent", str(login["auth"]["client_token"]), "GET", CREDS)
    expected = 3 * 6 + 1
    assert len(denied) == expected and set(denied.values()) == {403}, denied


def test_each_replica_has_its_own_user_on_a_lease_of_minutes(env: Env) -> None:
    assert env.a.gateway.registry.ping()
    conn = env.connection
    with live.registry_reader(env.cfg) as other:
        assert other.ping()
        other_conn = other.source
        assert isinstance(other_conn, registry_creds.RegistryConnection)
        users = {conn.username, other_conn.username}
        assert None not in users and len(users) == 2
        for lease in (conn.lease_id, other_conn.lease_id):
            assert lease is not None and lease.startswith(f"{CREDS}/")
            info = env.bao.write("sys/leases/lookup", {"lease_id": lease}, token=env.root)
            assert 0 < int(info["data"]["ttl"]) <= 600, info["data"]
        listed = env.bao.request("LIST", f"sys/leases/lookup/{CREDS}/", token=env.root)
        ids = {f"{CREDS}/{k}" for k in listed["data"]["keys"]}
        assert {conn.lease_id, other_conn.lease_id} <= ids
    # Closing a replica's registry revokes its user: its lease is gone at once.
    listed = env.bao.request("LIST", f"sys/leases/lookup/{CREDS}/", token=env.root)
    assert other_conn.lease_id not in {f"{CREDS}/{k}" for k in listed["data"]["keys"]}


def _stack_gateway_ready(s: StackSettings) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{s.gateway_addr}/readyz", timeout=2).status_code == 200
    return False


def test_the_gateway_keeps_serving_across_a_forced_revocation(env: Env) -> None:
    """Revoke every gateway user at once (what an operator does after a leak; an expired
    lease does the same to Redis: the user is deleted and its connections killed) while
    an agent calls: no call fails, the replica is on a new user right away, and the
    stack's own gateway is ready again within seconds."""
    jwt = env.jwt("revoked-under-load")
    assert env.sql(jwt).status_code == 200  # a warm session
    before = env.connection.username
    results: list[tuple[float, int]] = []
    stop = threading.Event()

    def load() -> None:  # well under the anomaly rule's 600 calls a minute
        while not stop.is_set():
            resp = env.sql(jwt)
            results.append((time.monotonic(), resp.status_code))
            time.sleep(0.02)

    t = threading.Thread(target=load)
    t.start()
    try:
        time.sleep(0.5)
        revoked_at = time.monotonic()
        env.bao.write(f"sys/leases/revoke-prefix/{CREDS}", {}, token=env.root)
        time.sleep(1.5)
    finally:
        stop.set()
        t.join(timeout=30)
    after = [code for at, code in results if at > revoked_at]
    assert len(after) >= 5 and set(after) == {200}, sorted(set(after))
    assert {code for _, code in results} == {200}
    assert env.connection.username not in (None, before)
    live.wait_until(lambda: _stack_gateway_ready(env.settings), timeout=10, interval=0.1)
    env.agent.send("DELETE", f"{env.a.url}/v1/sessions/{live.sid(jwt)}", jwt)


def test_a_registry_restart_rekeys_openbao_and_ended_sessions_stay_ended(env: Env) -> None:
    s = env.settings
    ended, later = env.jwt("ended-before-restart"), env.jwt("after-restart")
    assert env.sql(ended).status_code == 200
    r = env.agent.send("DELETE", f"{env.a.url}/v1/sessions/{live.sid(ended)}", ended)
    assert r.status_code == 200, r.text
    old = stack.child_pid(s, REGISTRY)
    stack.hold(s, REGISTRY)
    try:
        live.wait_until(lambda: stack.child_pid(s, REGISTRY) is None, timeout=20, interval=0.1)
    finally:
        stack.release(s, REGISTRY)
    live.wait_until(
        lambda: redis_registry.keyed(s, stack.child_pid(s, REGISTRY)), timeout=20, interval=0.1
    )
    assert stack.child_pid(s, REGISTRY) != old
    # The gateway's user died with the old Redis; it gets a new one once OpenBao's plugin
    # has let go of the old Redis (it can hang on it for seconds: 503s, not errors).
    codes: set[int] = set()

    def serving() -> bool:
        code = env.sql(later).status_code
        codes.add(code)
        return code == 200

    took = live.wait_until(serving, timeout=30, interval=0.2)
    assert codes <= {200, 503}, codes
    print(f"\nregistry restart: the gateway served again {took:.1f} s after OpenBao was re-keyed")
    # The ended session is still ended (the registry survived the restart on disk).
    assert env.sql(ended).status_code == 401
    env.agent.send("DELETE", f"{env.a.url}/v1/sessions/{live.sid(later)}", later)
    live.wait_until(lambda: _stack_gateway_ready(s), timeout=10, interval=0.1)


def _files(root: Path) -> Iterator[Path]:
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                yield p


def test_no_registry_password_in_files_logs_or_status(env: Env) -> None:
    """The passwords OpenBao issued to replica A (several by now: revocation, restart),
    searched for in every file under the data directory (configurations, logs of every
    child, OpenBao's audit logs and raft data, the registry's snapshot), in the
    logs of this process and in ``status``. The admin's is never seen by anyone but the
    registry child and OpenBao: its configuration carries no user but ``default`` off,
    and the child's command line and environment carry nothing."""
    passwords = env.registry_passwords()
    assert len(passwords) >= 3, len(passwords)
    needles = [p.encode() for p in passwords]
    hits = [
        str(path.relative_to(env.settings.data_dir))
        for path in _files(env.settings.data_dir)
        if any(n in path.read_bytes() for n in needles)
    ]
    assert not hits, hits
    logs = "\n".join(env.logs.lines)
    status = json.dumps(stack.status(env.settings))
    assert not [p[:4] for p in passwords if p in logs or p in status]
    reg = json.loads(status)["registry"]
    assert reg["keyed"] and reg["address"].startswith("rediss://")
    # The admin's: no user line in the configuration but default's; nothing on the
    # command line or in the environment of the child or of redis-server.
    conf = redis_registry.config_path(env.settings).read_text()
    assert [ln for ln in conf.splitlines() if ln.startswith("user ")] == [
        "user default off resetkeys resetchannels -@all"
    ]
    marker = json.loads(redis_registry.marker_path(env.settings).read_text())
    for pid in (marker["pid"], marker["redis_pid"]):
        for part in ("cmdline", "environ"):
            blob = Path(f"/proc/{pid}/{part}").read_bytes()
            assert redis_registry.ADMIN_USER.encode() not in blob, (pid, part)
