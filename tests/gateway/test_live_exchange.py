"""No path around the gateway (issue 12, ADR 0010), on OpenBao as ``up`` configures it.

- An agent's session JWT opens nothing in OpenBao: sent to every JWT auth mount
  and every role on it (and to the CEL login path, and as a token), for each role
  of the example, while its session is live and after it ended — always 4xx.
- OpenBao itself refuses forged exchange assertions: expired, for another
  audience, another actor or none, another issuer, signed with another key, a
  tenant or role the role does not bind, a session JWT's claims re-signed by the
  session issuer.
- What OpenBao cannot check, shown as it is: whether the session is still
  live. A captured assertion for an ended session logs in until its own
  ``exp`` (at most ``exchange.ttl`` = 30 s after it was signed, never past the
  session's ``exp``) plus the role's clock-skew leeway; then it is refused. The
  token such a login yields is bounded by the role, not by the assertion: on the
  anchor role its holder renews it up to the role's ``max_session``. Nor does
  OpenBao bind a token's ``sid`` to anything: the gateway compares the anchor's
  metadata with the session it serves (``Gateway._login``).
- OpenBao's audit entries of a tool call name the agent (display name, metadata
  tenant, agent, sid) and the gateway (metadata actor).
- The provisioner cannot create a CEL role (whose program would set its logins'
  policies, bypassing four-eyes).
- Nor is there a path around the gateway through its session registry: an agent
  that reaches the registry's Redis cannot read or write it (ADR 0011; what a
  gateway credential allows and how it comes and goes: ``test_live_registry.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from clawql_secrets.cluster import bootstrap, redis_registry, stack
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.cluster.layout import NODE_IDS, StackSettings
from clawql_secrets.errors import OpenBaoError
from clawql_secrets.gateway import exchange, session_issuer
from clawql_secrets.gateway.config import GatewayConfig
from clawql_secrets.issuer import LocalIssuer
from tests import shipped
from tests.gateway import live

pytestmark = [pytest.mark.cluster, pytest.mark.gateway]

PG = "pg_main"


@dataclass
class Env:
    sh: shipped.Shipped
    cfg: GatewayConfig
    sessions: LocalIssuer
    workload: LocalIssuer
    a: live.InProcessReplica
    agent: live.Agent
    canaries: live.Canaries

    @property
    def settings(self) -> StackSettings:
        return self.sh.settings

    def jwt(self, tenant: str, agent: str, role: str, ttl: int = 600) -> str:
        return session_issuer.issue(
            self.sessions,
            tenant=tenant,
            agent=agent,
            role=role,
            ttl=ttl,
            audience=self.cfg.sessions.audience,
        )

    def open_session(self, jwt: str) -> None:
        """One tool call: the session is active in the registry and has been exchanged."""
        c = live.claims(jwt)
        tool = self.a.gateway.tools_for(c["agent_role"])[0]
        args: dict[str, Any] = (
            {"database": PG, "sql": "SELECT 1"}
            if tool == "sql.query"
            else {"url": "https://destination.invalid/"}  # refused after the exchange
        )
        self.agent.call(self.a.url, jwt, tool, args)
        info = self.agent.send("GET", f"{self.a.url}/v1/sessions/{c['sid']}", jwt).json()
        assert info["state"] == "active", info
        assert any(live.claims(a)["sid"] == c["sid"] for _, a in self.canaries.assertions)

    def end_session(self, jwt: str) -> None:
        url = f"{self.a.url}/v1/sessions/{live.sid(jwt)}"
        r = self.agent.send("DELETE", url, jwt)
        assert r.status_code == 200, r.text
        live.wait_until(lambda: self.agent.send("GET", url, jwt).json()["state"] == "ended", 5)


@pytest.fixture(scope="module")
def env(live_stack: StackSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    s = live_stack
    canaries = live.Canaries()
    d = tmp_path_factory.mktemp("exchange")
    with live.captured_logs(), shipped.provisioned(s, d) as sh:
        cfg = live.config_for(sh, live.free_port())
        a = live.start_in_process(cfg, canaries)
        agent = live.Agent()
        try:
            yield Env(
                sh,
                cfg,
                session_issuer.load_issuer(s.data_dir),
                LocalIssuer.load(s.issuer_dir, stack.ISSUER_URL),
                a,
                agent,
                canaries,
            )
        finally:
            agent.close()
            a.stop()


@contextlib.contextmanager
def _as(env: Env, identity: bootstrap.WorkloadIdentity) -> Iterator[tuple[OpenBaoClient, str]]:
    with stack.client_for(env.settings) as client:
        token = bootstrap.login(client, env.workload, identity)
        try:
            yield client, token
        finally:
            with contextlib.suppress(OpenBaoError):
                client.request("POST", "auth/token/revoke-self", token=token, retry_for=2)


def _status(client: OpenBaoClient, path: str, body: dict[str, Any], token: str = "") -> int:
    """The HTTP status OpenBao answers (2xx as 200)."""
    try:
        client.request("POST", path, body=body, token=token, retry_for=2)
    except OpenBaoError as exc:
        return int(exc.status or 0)
    return 200


def _login_targets(env: Env) -> list[tuple[str, dict[str, Any]]]:
    """Every login an agent could try: each auth mount's login path with each of its
    roles (and none), and each JWT mount's CEL login path likewise."""
    targets: list[tuple[str, dict[str, Any]]] = []
    with _as(env, bootstrap.PROVISIONER) as (client, token):
        listed = client.request("GET", "sys/auth", token=token)
        mounts = {
            str(path).rstrip("/"): str(info["type"])
            for path, info in (listed.get("data") or listed).items()
            if isinstance(info, dict) and "type" in info
        }
        assert {"agents", "workload", "token"} <= set(mounts), mounts
        for mount, kind in sorted(mounts.items()):
            roles: list[str] = []
            if kind in ("jwt", "oidc"):
                try:
                    keys = client.request("LIST", f"auth/{mount}/role", token=token)
                    roles = list(keys["data"]["keys"])
                except OpenBaoError as exc:
                    # The service identities' mount is nobody's to read after bootstrap:
                    # its roles are bootstrap's, by name.
                    assert (mount, exc.status) == ("workload", 403), (mount, exc)
                    roles = [i.role for i in bootstrap.IDENTITIES]
                try:
                    cel = client.request("LIST", f"auth/{mount}/cel/role", token=token)
                    cel_roles = list(cel["data"]["keys"])
                except OpenBaoError as exc:
                    assert exc.status in (403, 404), (mount, exc)  # none, or not readable
                    cel_roles = []
                for role in sorted({*roles, *cel_roles}):
                    targets.append((f"auth/{mount}/cel/login", {"role": role}))
                targets.append((f"auth/{mount}/cel/login", {}))
            for role in roles:
                targets.append((f"auth/{mount}/login", {"role": role}))
            targets.append((f"auth/{mount}/login", {}))
    agents = {b["role"] for p, b in targets if p == "auth/agents/login" and "role" in b}
    expected = {r.name for r in env.sh.state.roles}
    assert agents == expected | {f"{r}.session" for r in expected}, agents
    return targets


# -- (a) the session JWT opens nothing in OpenBao ----------------------------------------------
def test_session_jwt_is_refused_by_every_mount_and_role_live_and_ended(env: Env) -> None:
    targets = _login_targets(env)
    sessions = [
        env.jwt(tenant, f"direct-{role.name}", role.name)
        for role in env.sh.state.roles
        for tenant in role.tenants
    ]
    assert len(sessions) == 4
    accepted: list[str] = []
    with stack.client_for(env.settings) as client:
        for phase in ("live", "ended"):
            for jwt in sessions:
                c = live.claims(jwt)
                if phase == "live":
                    env.open_session(jwt)
                else:
                    env.end_session(jwt)
                for path, body in targets:
                    status = _status(client, path, {**body, "jwt": jwt})
                    if not 400 <= status < 500:
                        accepted.append(f"{phase} {c['agent_role']}/{c['tenant']} {path} {body}")
                # Nor is it an OpenBao token.
                status = _status(client, "auth/token/lookup-self", {}, token=jwt)
                if not 400 <= status < 500:
                    accepted.append(f"{phase} {c['agent_role']} as X-Vault-Token: {status}")
    assert not accepted, accepted
    # Each session was exchanged by the gateway: OpenBao saw assertions, not the JWTs.
    sent = {a for _, a in env.canaries.assertions}
    assert not sent & set(sessions)


# -- (b) forged and replayed assertions ---------------------------------------------------------
def _key(env: Env) -> ed25519.Ed25519PrivateKey:
    return exchange.load_key(env.cfg.exchange.key_file)


def _assertion(env: Env, **over: Any) -> str:
    """An assertion as ``ExchangeSigner`` makes one (acme/forger, analyst), with
    ``over`` replacing claims (``None`` drops one); ``key=``/``kid=``/``alg=`` sign it."""
    x = env.cfg.exchange
    key = over.pop("key", None) or _key(env)
    alg = over.pop("alg", exchange.ALGORITHM)
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": x.issuer,
        "aud": x.audience,
        "sub": "acme/forger",
        "tenant": "acme",
        "agent": "forger",
        "agent_role": "analyst",
        "sid": secrets.token_urlsafe(18),
        "act": {"sub": x.actor},
        "use": "call",
        "iat": now,
        "nbf": now - 5,
        "exp": now + x.ttl,
        "jti": secrets.token_urlsafe(12),
    }
    payload.update(over)
    payload = {k: v for k, v in payload.items() if v is not None}
    kid = exchange.key_id(_key(env).public_key())
    return pyjwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


def _login(env: Env, role: str, assertion: str) -> int:
    with stack.client_for(env.settings) as client:
        return _status(
            client, f"auth/{env.cfg.sessions.mount}/login", {"role": role, "jwt": assertion}
        )


def test_the_gateways_own_assertion_logs_in(env: Env) -> None:
    """The control for every forgery below: the unaltered assertion is accepted."""
    assert _login(env, "analyst", _assertion(env)) == 200
    assert _login(env, "analyst.session", _assertion(env, use="session")) == 200


def _alg_none(env: Env) -> str:
    head = pyjwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    body = _assertion(env).split(".")[1]
    return f"{head}.{body}."


def _hs256_with_public_key(env: Env) -> str:
    """Algorithm confusion: HMAC keyed with the (public) verification key."""
    pem = (
        _key(env)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    kid = exchange.key_id(_key(env).public_key())
    head = pyjwt.utils.base64url_encode(
        json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode()
    )
    body = _assertion(env).split(".")[1].encode()
    sig = hmac.new(pem, head + b"." + body, hashlib.sha256).digest()
    return (head + b"." + body + b"." + pyjwt.utils.base64url_encode(sig)).decode()


FORGERIES: dict[str, tuple[str, Callable[[Env], str]]] = {
    # (login role, how the assertion is made)
    "expired_beyond_the_clock_skew_leeway": (
        "analyst",
        lambda e: _assertion(
            e, iat=int(time.time()) - 40, nbf=int(time.time()) - 45, exp=int(time.time()) - 6
        ),
    ),
    "audience_is_the_gateway": ("analyst", lambda e: _assertion(e, aud=e.cfg.sessions.audience)),
    "other_actor": ("analyst", lambda e: _assertion(e, act={"sub": "mallory"})),
    "no_actor": ("analyst", lambda e: _assertion(e, act=None)),
    "actor_as_a_plain_claim": ("analyst", lambda e: _assertion(e, act="clawql-gateway")),
    "other_issuer": ("analyst", lambda e: _assertion(e, iss=session_issuer.SESSIONS_ISSUER_URL)),
    "signed_with_another_key": (
        "analyst",
        lambda e: _assertion(e, key=ed25519.Ed25519PrivateKey.generate()),
    ),
    "alg_none": ("analyst", _alg_none),
    "hs256_keyed_with_the_public_key": ("analyst", _hs256_with_public_key),
    "tenant_not_bound_to_the_role": (
        "reporter",
        lambda e: _assertion(e, agent_role="reporter"),  # reporter is globex's only
    ),
    "role_mismatch": ("integrator", lambda e: _assertion(e)),  # agent_role analyst
    "anchor_role_of_another_role": ("integrator.session", lambda e: _assertion(e)),
    "session_jwt_claims_resigned_by_the_session_issuer": (
        "analyst",
        lambda e: e.sessions.mint(
            "acme/forger",
            e.cfg.exchange.audience,
            ttl=30,
            tenant="acme",
            agent="forger",
            agent_role="analyst",
            sid=secrets.token_urlsafe(18),
            act={"sub": e.cfg.exchange.actor},
        ),
    ),
    "session_issuer_key_claiming_the_exchange_issuer": (
        "analyst",
        lambda e: e.sessions.mint(
            "acme/forger",
            e.cfg.exchange.audience,
            ttl=30,
            iss=e.cfg.exchange.issuer,
            tenant="acme",
            agent="forger",
            agent_role="analyst",
            sid=secrets.token_urlsafe(18),
            act={"sub": e.cfg.exchange.actor},
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(FORGERIES))
def test_forged_assertion_is_refused_by_openbao(env: Env, case: str) -> None:
    role, make = FORGERIES[case]
    status = _login(env, role, make(env))
    assert 400 <= status < 500, (case, status)


def test_assertion_one_second_past_exp_is_refused(env: Env) -> None:
    """Regression: clock_skew_leeway=5 also widened exp (exp-1..exp-4 were accepted)."""
    now = int(time.time())
    assertion = _assertion(env, iat=now - 31, nbf=now - 36, exp=now - 1)
    assert 400 <= _login(env, "analyst", assertion) < 500


def _captured(env: Env, jwt: str) -> str:
    """The gateway's last per-call assertion for ``jwt``'s session, as sent on the wire
    (its recording transport)."""
    sid = live.sid(jwt)
    with env.canaries.lock:
        sent = list(env.canaries.assertions)
    return next(a for r, a in reversed(sent) if r == "analyst" and live.claims(a)["sid"] == sid)


def _replay(env: Env, role: str, assertion: str) -> dict[str, Any]:
    with stack.client_for(env.settings) as client:
        auth: dict[str, Any] = client.request(
            "POST", "auth/agents/login", body={"role": role, "jwt": assertion}, token=""
        )["auth"]
    env.canaries.add(auth["client_token"])
    return auth


def test_captured_assertion_for_an_ended_session_lives_to_its_own_exp(env: Env) -> None:
    """What OpenBao cannot check: whether the session is live. An assertion taken off
    the gateway's wire still logs in after the session ended — a per-call batch token
    of ``call_token_ttl`` — until its own ``exp`` (plus the role's clock-skew leeway,
    see the xfail above) has passed; then never."""
    # A short session: the gateway never signs past the session's exp.
    jwt = env.jwt("globex", "captured", "analyst", ttl=12)
    env.open_session(jwt)
    captured = _captured(env, jwt)
    c = live.claims(captured)
    assert c["exp"] - (c["iat"] + exchange.SKEW) <= env.cfg.exchange.ttl
    assert c["exp"] <= live.claims(jwt)["exp"]
    env.end_session(jwt)
    if time.time() < c["exp"] - 2:  # a loaded box may have spent the assertion's life
        auth = _replay(env, "analyst", captured)
        assert (auth["token_type"], auth["metadata"]["agent"]) == ("batch", "captured")
        assert auth["lease_duration"] <= env.sh.state.exchange.call_token_ttl
    with _as(env, bootstrap.PROVISIONER) as (client, token):
        role = client.read("auth/agents/role/analyst", token=token)["data"]
    leeway = max(int(role["clock_skew_leeway"]), 0)
    live.wait_until(lambda: time.time() > c["exp"] + leeway + 1, timeout=45, interval=0.2)
    assert 400 <= _login(env, "analyst", captured) < 500


def test_a_captured_call_assertion_cannot_open_a_session_anchor(env: Env) -> None:
    """Regression: a per-call assertion replayed to ``<role>.session`` gave a service
    token its holder renewed to the role's max_session (1 h), past the session's exp and
    unknown to the registry. The roles now bind ``use``: a call's assertion opens the
    per-call role only."""
    jwt = env.jwt("acme", "captured-anchor", "analyst", ttl=120)
    env.open_session(jwt)
    captured = _captured(env, jwt)
    assert live.claims(captured)["use"] == "call"
    assert 400 <= _login(env, "analyst.session", captured) < 500
    # and a session anchor's assertion does not open the per-call role either
    anchor = _assertion(env, use="session")
    assert 400 <= _login(env, "analyst", anchor) < 500
    env.end_session(jwt)


def test_an_anchor_assertion_lives_seconds_and_dies_at_its_exp(env: Env) -> None:
    """What remains (ADR 0010): an anchor's own assertion, taken off the gateway's wire
    within its life, would open an anchor the registry does not know, renewable up to
    the role's max_session. It lives 5 s and is refused once its exp has passed."""
    jwt = env.jwt("acme", "anchor-life", "analyst", ttl=120)
    env.open_session(jwt)
    sid = live.sid(jwt)
    with env.canaries.lock:
        sent = list(env.canaries.assertions)
    anchor = next(
        a for r, a in reversed(sent) if r == "analyst.session" and live.claims(a)["sid"] == sid
    )
    c = live.claims(anchor)
    assert c["use"] == "session"
    assert c["exp"] - (c["iat"] + exchange.SKEW) <= exchange.ANCHOR_TTL
    live.wait_until(lambda: time.time() > c["exp"] + 1, timeout=30, interval=0.2)
    assert 400 <= _login(env, "analyst.session", anchor) < 500
    env.end_session(jwt)


# -- (c) the audit log names the agent and the gateway -----------------------------------------
def _audit_entries(env: Env) -> list[dict[str, Any]]:
    out = []
    for node in NODE_IDS:
        with contextlib.suppress(FileNotFoundError):
            for line in env.settings.audit_log(node).read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
    return out


def test_audit_entries_of_a_tool_call_name_agent_and_gateway(env: Env) -> None:
    """Every entry of the call names the agent (display name ``<mount>-<tenant>/<agent>``,
    metadata tenant, agent, agent_role) and the gateway (metadata actor); the session's
    anchor and what it read carry the session id too (the per-call role does not map
    ``sid``: alias metadata is stored on the entity, see provision/render.py)."""
    agent = f"audited-{secrets.token_hex(3)}"
    jwt = env.jwt("acme", agent, "analyst")
    sid = live.sid(jwt)
    r = env.agent.call(env.a.url, jwt, "sql.query", {"database": PG, "sql": "SELECT 1"})
    assert r.status_code == 200, r.text
    creds = f"database/creds/acme-analyst-{PG}"
    display = f"{env.cfg.sessions.mount}-acme/{agent}"

    def mine() -> list[dict[str, Any]]:
        return [
            e for e in _audit_entries(env) if (e.get("auth") or {}).get("display_name") == display
        ]

    def seen() -> bool:
        got = {(e["type"], e["request"]["path"], e["auth"]["metadata"].get("role")) for e in mine()}
        return {
            ("response", "auth/agents/login", "analyst"),
            ("response", "auth/agents/login", "analyst.session"),
            ("request", creds, "analyst.session"),
        } <= got

    live.wait_until(seen, timeout=10, interval=0.2)
    entries = mine()
    for e in entries:
        meta = e["auth"]["metadata"]
        where = (e["type"], e["request"]["path"], meta.get("role"))
        assert (meta["tenant"], meta["agent"], meta["agent_role"]) == ("acme", agent, "analyst"), (
            where
        )
        assert meta["actor"] == env.cfg.exchange.actor, where  # the gateway, acting
        assert e["auth"]["entity_id"], where
        if meta.get("role") == "analyst.session":
            assert meta["sid"] == sid, where
    assert any(
        e["request"]["path"] == creds and e["auth"]["metadata"].get("sid") == sid for e in entries
    )
    # One entity for acme/<agent>, whichever role it logged in through.
    assert len({e["auth"]["entity_id"] for e in entries}) == 1
    # The assertions themselves are HMAC'd in the audit log, never in clear.
    sent = [a for _, a in env.canaries.assertions if live.claims(a)["sid"] == sid]
    text = "\n".join(json.dumps(e) for e in entries)
    assert len(sent) == 2 and not [a for a in sent if a in text]


# -- (d) no CEL role from the provisioner -------------------------------------------------------
def test_provisioner_cannot_create_a_cel_role(env: Env) -> None:
    program = {
        "cel_program": {"expression": "true"},
        "policies": ["agent-analyst"],
    }
    with _as(env, bootstrap.PROVISIONER) as (client, token):
        for mount in ("agents", "workload"):
            status = _status(client, f"auth/{mount}/cel/role/probe", program, token=token)
            assert status == 403, (mount, status)
        # The control: on the same mount it may write a plain role (and delete it).
        role = {"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["nobody"]}
        assert _status(client, "auth/agents/role/zz-probe", role, token=token) == 200
        client.request("DELETE", "auth/agents/role/zz-probe", token=token)
        with pytest.raises(OpenBaoError) as err:
            client.request("LIST", "auth/agents/cel/role", token=token)
        assert err.value.status in (403, 404)


# -- red team: the registry's Redis ----------------------------------------------------------
# Regression (red team, issue 15): the registry's Redis took unauthenticated writes, so
# an agent that reached it marked its ended session active again and got new
# credentials until its JWT's exp. It now speaks TLS only, its ``default`` user is off,
# and its only users are OpenBao's (ADR 0011): with network reach alone an agent can
# neither read nor write it.
def _resp(*args: str) -> bytes:
    return f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args
    )


def _answers(
    env: Env, commands: list[tuple[str, ...]], *, tls: bool, verify: bool = True
) -> list[str]:
    """What the registry's Redis answers a client with network reach and no credential:
    each command's first reply line, or how the connection ended. Raw RESP, so the
    answers are the server's, not a client library's interpretation."""
    reg = env.cfg.registry
    out: list[str] = []
    with socket.create_connection((reg.host, reg.port), timeout=5) as raw:
        sock: socket.socket = raw
        if tls:
            ctx = ssl.create_default_context(cafile=str(reg.ca_file))
            if not verify:
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            sock = ctx.wrap_socket(raw, server_hostname=reg.host)
        try:
            for cmd in commands:
                try:
                    sock.sendall(_resp(*cmd))
                    line = sock.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace")
                except OSError as exc:
                    line = f"connection {type(exc).__name__}"
                out.append(line or "connection closed")
        finally:
            sock.close()
    return out


def test_an_agent_that_reaches_redis_cannot_revive_its_ended_session(env: Env) -> None:
    jwt = env.jwt("acme", "reviver", "analyst", ttl=120)
    env.open_session(jwt)
    env.end_session(jwt)
    key = f"{env.cfg.registry.prefix}:s:{live.sid(jwt)}"
    write, read = ("HSET", key, "state", "active"), ("HGETALL", key)
    # Plaintext: the TLS listener never answers a Redis command.
    plain = _answers(env, [write, read], tls=False)
    assert not any(a.startswith(("+", ":", "*", "$", "-")) for a in plain), plain
    # TLS, no credential (the server's certificate checked or not): nothing runs.
    for verify in (True, False):
        assert (
            _answers(env, [write, read, ("KEYS", "*")], tls=True, verify=verify)
            == ["-NOAUTH Authentication required."] * 3
        )
    # The ``default`` user is off, whatever the password; the admin's is OpenBao's alone.
    tries = [
        ("AUTH", "default", ""),
        ("AUTH", "default", "redis"),
        ("AUTH", "redis"),
        ("AUTH", redis_registry.ADMIN_USER, "clawql"),
        ("HELLO", "3", "AUTH", "default", "default"),
    ]
    for attempt in tries:
        answers = _answers(env, [attempt, write], tls=True)
        assert answers[0].startswith("-WRONGPASS"), (attempt[:2], answers)
        assert answers[1] == "-NOAUTH Authentication required.", (attempt[:2], answers)
    with live.registry_reader(env.cfg) as reg:
        rec = reg.get(live.sid(jwt))
    assert rec is not None and rec.state == "ended"
    resp = env.agent.call(env.a.url, jwt, "sql.query", {"database": PG, "sql": "SELECT 1"})
    assert resp.status_code == 401, resp.text
