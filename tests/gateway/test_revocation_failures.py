"""A revocation that fails is counted, stays pending in the registry, and the sweeper
finishes it once OpenBao answers again; nothing is lost and nothing is secret.

OpenBao here is an in-memory fake with switchable failures (the live tests
revoke against a real cluster); the registry is the in-memory one.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from clawql_secrets.errors import BackendError
from clawql_secrets.gateway import session_issuer
from clawql_secrets.gateway.core import Gateway
from clawql_secrets.gateway.jwt_check import SessionClaims
from clawql_secrets.gateway.registry import MemoryRegistry
from tests.gateway.fakes import mock_openbao, unit_config


@dataclass
class FakeBao:
    fail_login: bool = False
    fail_revoke: bool = False
    # Another replica revoked it a moment ago: OpenBao answers 400 to the second one.
    raced: set[str] = field(default_factory=set)
    revoked: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/auth/workload/login":
            if self.fail_login:
                return httpx.Response(500, json={"errors": ["internal error"]})
            token = "s." + secrets.token_urlsafe(24)
            self.tokens.append(token)
            return httpx.Response(200, json={"auth": {"client_token": token}})
        if path in ("/v1/sys/leases/revoke", "/v1/auth/token/revoke-accessor"):
            body = request.content.decode()
            if any(r in body for r in self.raced):
                return httpx.Response(400, json={"errors": ["invalid request"]})
        if path in ("/v1/sys/leases/lookup", "/v1/auth/token/lookup-accessor"):
            body = request.content.decode()
            if any(r in body for r in self.raced):
                return httpx.Response(400, json={"errors": ["invalid lease"]})
            return httpx.Response(200, json={"data": {"ttl": 60}})
        if path == "/v1/auth/token/revoke-accessor":
            self.revoked.append(request.content.decode())
            return httpx.Response(204)
        if path == "/v1/sys/leases/revoke":
            if self.fail_revoke:
                return httpx.Response(503, json={"errors": ["Vault is sealed"]})
            self.revoked.append(httpx.Request("GET", "/", content=request.content).read().decode())
            return httpx.Response(204)
        if path == "/v1/auth/token/revoke-self":
            return httpx.Response(204)
        return httpx.Response(403, json={"errors": ["permission denied"]})


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Gateway, FakeBao, MemoryRegistry]:
    session_issuer.load_issuer(tmp_path)  # its JWKS: the gateway refuses to start without
    workload_jwt = tmp_path / "token"
    workload_jwt.write_text("header.payload.signature")
    cfg = unit_config(tmp_path, identity={"jwt_file": str(workload_jwt)})
    fake = FakeBao()
    bao = mock_openbao(fake)
    registry = MemoryRegistry()
    gw = Gateway(cfg, bao=bao, registry=registry, tools={}, clock=CLOCK)
    return gw, fake, registry


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


CLOCK = _Clock()


def _session(registry: MemoryRegistry, sid: str, leases: int) -> list[str]:
    claims = SessionClaims(sid, "acme", "bot", "analyst", "acme/bot", 2**31, 0, "j")
    registry.open(claims)
    ids = [f"database/creds/acme-analyst-pg_main/{secrets.token_hex(12)}" for _ in range(leases)]
    for lease in ids:
        assert registry.add_lease(sid, lease)
    return ids


def _value(gw: Gateway, name: str, **labels: str) -> float:
    v = gw.metrics.registry.get_sample_value(name, labels or None)
    return float(v or 0.0)


def test_openbao_refusing_revocations_is_counted_and_swept_later(
    setup: tuple[Gateway, FakeBao, MemoryRegistry],
) -> None:
    gw, fake, registry = setup
    leases = _session(registry, "s" * 24, 2)
    fake.fail_revoke = True
    out = gw.end_session("s" * 24, exp=2**31, reason="ended")
    # The answer tells the truth: not "ended" while credentials may still work.
    assert out["leases_revoked"] == 0
    assert out["state"] == "revocation_pending" and out["revocation_pending"] == 2
    assert gw.session_info("s" * 24)["state"] == "revocation_pending"
    assert _value(gw, "clawql_gateway_lease_revoke_failures_total", cause="openbao") == 2
    gw.sweep()  # within the first backoff: not retried yet
    assert _value(gw, "clawql_gateway_lease_revoke_failures_total", cause="openbao") == 2
    CLOCK.now += 1.5
    gw.sweep()  # still failing: retried, counted again, still pending
    assert _value(gw, "clawql_gateway_lease_revoke_failures_total", cause="openbao") == 4
    assert _value(gw, "clawql_gateway_sessions_pending_revocation") == 1
    assert registry.leases("s" * 24) == sorted(leases)
    CLOCK.now += 1.5
    gw.sweep()  # the delay doubled (2 s): not yet
    assert _value(gw, "clawql_gateway_lease_revoke_failures_total", cause="openbao") == 4
    fake.fail_revoke = False
    CLOCK.now += 1.0
    gw.sweep()
    assert gw.session_info("s" * 24)["state"] == "ended"
    assert registry.leases("s" * 24) == []
    assert registry.pending() == []
    assert _value(gw, "clawql_gateway_leases_revoked_total") == 2
    gw.sweep()
    assert _value(gw, "clawql_gateway_sessions_pending_revocation") == 0
    assert all(lease in "".join(fake.revoked) for lease in leases)
    # The metrics page names causes, never a lease id or a token.
    page = gw.metrics.render().decode()
    assert not any(lease.split("/")[-1] in page for lease in leases)
    assert not any(t in page for t in fake.tokens)


def test_gateway_identity_down_fails_the_end_but_loses_nothing(
    setup: tuple[Gateway, FakeBao, MemoryRegistry],
) -> None:
    gw, fake, registry = setup
    sid = "t" * 24
    _session(registry, sid, 3)
    fake.fail_login = True
    with pytest.raises(BackendError):
        gw.end_session(sid, exp=2**31, reason="ended")
    rec = registry.get(sid)
    assert rec is not None and rec.state == "ended"  # no call is served meanwhile
    assert _value(gw, "clawql_gateway_lease_revoke_failures_total", cause="identity") == 3
    assert registry.pending() == [sid]
    fake.fail_login = False
    gw.sweep()
    assert registry.pending() == [] and registry.leases(sid) == []
    assert len(fake.revoked) == 3


def test_a_pending_session_whose_leases_expired_is_cleared(
    setup: tuple[Gateway, FakeBao, MemoryRegistry],
) -> None:
    gw, _, registry = setup
    sid = "u" * 24
    lease = _session(registry, sid, 1)[0]
    registry.end(sid, 2**31, "ended")
    registry.lease_revoked(sid, lease)  # as if the lease set had expired with the record
    registry._revoking.add(sid)
    gw.sweep()
    assert registry.pending() == []
    assert _value(gw, "clawql_gateway_sessions_pending_revocation") == 0


def test_a_revocation_raced_by_another_replica_counts_as_done(
    setup: tuple[Gateway, FakeBao, MemoryRegistry],
) -> None:
    """Regression: a DELETE and the sweeper (or two replicas) revoking the same lease or
    anchor at once; the loser's 400 made the session "revocation_pending" for nothing."""
    gw, fake, registry = setup
    sid = "v" * 24
    lease = _session(registry, sid, 1)[0]
    assert registry.add_lease(sid, "accessor:AbCdEf0123456789xyzAbCdE")
    fake.raced = {lease.rsplit("/", 1)[1], "AbCdEf0123456789xyzAbCdE"}
    out = gw.end_session(sid, exp=2**31, reason="ended")
    assert out["state"] == "ended" and out["leases_revoked"] == 2
    assert registry.leases(sid) == [] and registry.pending() == []
    assert _value(gw, "clawql_gateway_lease_revoke_failures_total", cause="openbao") == 0


def test_a_400_on_something_still_alive_is_a_failure(
    setup: tuple[Gateway, FakeBao, MemoryRegistry],
) -> None:
    gw, fake, registry = setup
    sid = "w" * 24
    _session(registry, sid, 1)
    fake.fail_revoke = False

    def refuse(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/sys/leases/revoke":
            return httpx.Response(400, json={"errors": ["cannot drop role"]})
        return fake(request)

    gw.bao._http = httpx.Client(transport=httpx.MockTransport(refuse))
    out = gw.end_session(sid, exp=2**31, reason="ended")
    assert out["state"] == "revocation_pending" and out["revocation_pending"] == 1
