"""Anomaly counts shared through the real Redis: every replica judges all of a session's calls.

Two ``RedisRegistry`` objects on one prefix play two gateway replicas, each as its
own Redis user with the gateway role's ACL, on the stack's registry Redis
configuration (``tests/gateway/registry_redis.py``: TLS only, no OpenBao); then two
``Gateway`` objects (their OpenBao an in-memory fake that answers the session
login only) share one Redis registry, and an agent alternating between them
is revoked at the bound, not at twice the bound.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from clawql_secrets.gateway import session_issuer
from clawql_secrets.gateway.anomaly import CALL_RATE, DENIED_BURST, Window
from clawql_secrets.gateway.core import Gateway
from clawql_secrets.gateway.errors import AccessDenied, TokenRejected
from clawql_secrets.gateway.jwt_check import SessionClaims
from clawql_secrets.gateway.registry import ACTIVE, ENDED, Opened, RedisRegistry
from clawql_secrets.gateway.tools import ToolContext
from tests.gateway.fakes import LOGIN_PATH, login_response, mock_openbao, unit_config
from tests.gateway.registry_redis import Fixed, PrivateRedis


@pytest.fixture
def prefix() -> Iterator[str]:
    yield f"clawql:gw:anomtest{secrets.token_hex(4)}"


def _registry(redis_: PrivateRedis, prefix: str) -> RedisRegistry:
    """A replica's registry: its own user, the gateway role's ACL."""
    cred = redis_.make_user()
    return RedisRegistry(Fixed(redis_.client(cred.username, cred.password)), prefix)


def _claims(sid: str) -> SessionClaims:
    return SessionClaims(
        sid=sid,
        tenant="acme",
        agent="bot",
        agent_role="analyst",
        sub="acme/bot",
        exp=int(time.time()) + 600,
        iat=int(time.time()),
        jti="j",
    )


def test_two_replicas_count_one_session_together(registry_redis: PrivateRedis, prefix: str) -> None:
    a, b = _registry(registry_redis, prefix), _registry(registry_redis, prefix)
    try:
        w = Window(60, 100)
        counts = [(a if i % 2 else b).open(_claims("s1"), w).calls for i in range(10)]
        assert counts == list(range(1, 11))
        assert a.open(_claims("s2"), w) == Opened(ACTIVE, 1)  # per session
        denied = [(a if i % 2 else b).count_denied("s1", Window(30, 10)) for i in range(4)]
        assert denied == [1, 2, 3, 4]
        # Not counting: window 0 (rules off) leaves no key behind.
        assert a.open(_claims("s3")) == Opened(ACTIVE, 0)
        assert a.count_denied("s3", Window()) == 0
        r = registry_redis.reader()
        try:
            assert not r.exists(f"{prefix}:s:s3:calls", f"{prefix}:s:s3:denied")
            # Every count expires with its window; the set is capped.
            assert 0 < r.pttl(f"{prefix}:s:s1:calls") <= 60_000
            assert 0 < r.pttl(f"{prefix}:s:s1:denied") <= 30_000
        finally:
            r.close()
        capped = [a.open(_claims("s4"), Window(60, 3)).calls for _ in range(6)]
        assert capped == [1, 2, 3, 3, 3, 3]
        # An ended session is refused before any rule and is no longer counted.
        a.end("s1", _claims("s1").exp, "ended")
        assert b.open(_claims("s1"), w) == Opened(ENDED, 0)
    finally:
        a.close()
        b.close()


def test_window_slides_on_the_servers_clock(registry_redis: PrivateRedis, prefix: str) -> None:
    reg = _registry(registry_redis, prefix)
    try:
        w = Window(0.3, 10)
        assert [reg.open(_claims("s1"), w).calls for _ in range(3)] == [1, 2, 3]
        time.sleep(0.5)  # not a timing assertion: the whole window has passed
        assert reg.open(_claims("s1"), w).calls == 1
    finally:
        reg.close()


# -- two gateways, one registry ------------------------------------------------------------
class EchoArgs(BaseModel):
    denied: bool = False


class EchoTool:
    name = "echo"
    args_model = EchoArgs

    def run(self, ctx: ToolContext, args: EchoArgs) -> dict[str, Any]:
        if args.denied:
            raise AccessDenied("sql_permission_denied", "permission denied")
        return {"ok": True}


def _gateway(tmp_path: Path, redis_: PrivateRedis, prefix: str, anomaly: dict[str, Any]) -> Gateway:
    cfg = unit_config(tmp_path, anomaly=anomaly)

    def fake_openbao(request: httpx.Request) -> httpx.Response:
        if request.url.path == LOGIN_PATH:
            return login_response(request, "s." + secrets.token_urlsafe(24))
        return httpx.Response(403, json={"errors": ["permission denied"]})

    bao = mock_openbao(fake_openbao)
    registry = _registry(redis_, prefix)
    return Gateway(cfg, bao=bao, registry=registry, tools={"echo": EchoTool()})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("rule", "anomaly", "args"),
    [
        (CALL_RATE, {"rate_max": 6, "rate_window": 60}, {}),
        (DENIED_BURST, {"denied_max": 4, "denied_window": 60}, {"denied": True}),
    ],
)
def test_an_agent_alternating_between_replicas_is_revoked_at_the_bound(
    tmp_path: Path,
    registry_redis: PrivateRedis,
    prefix: str,
    rule: str,
    anomaly: dict[str, Any],
    args: dict[str, Any],
) -> None:
    issuer = session_issuer.load_issuer(tmp_path)  # and the JWKS both gateways trust
    one, two = (_gateway(tmp_path, registry_redis, prefix, anomaly) for _ in range(2))
    try:
        jwt = session_issuer.issue(issuer, tenant="acme", agent="bot", role="analyst", ttl=600)
        bound = anomaly.get("rate_max", anomaly.get("denied_max"))
        assert isinstance(bound, int)
        codes: list[str] = []
        for i in range(bound + 1):
            gw = one if i % 2 else two
            try:
                gw.call_tool(jwt, "echo", args)
                codes.append("ok")
            except (AccessDenied, TokenRejected) as exc:
                codes.append(exc.code)
        # Each replica saw about half the calls; together they exceed the bound once.
        assert codes[-1] == "anomaly_revoked", codes
        assert "anomaly_revoked" not in codes[:-1]
        assert (one.metrics.anomalies.labels(rule)._value.get() +
                two.metrics.anomalies.labels(rule)._value.get()) == 1  # fmt: skip
        with pytest.raises(TokenRejected) as info:
            one.call_tool(jwt, "echo", {})
        assert info.value.code == "session_ended"
    finally:
        for gw in (one, two):
            gw.close()
