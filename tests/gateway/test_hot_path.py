"""The per-call fast paths keep the checks: verified-JWT cache, direct tool route, login pool."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from clawql_secrets.errors import NotLeaderError, OpenBaoError
from clawql_secrets.gateway import jwt_check, session_issuer
from clawql_secrets.gateway.app import build_app
from clawql_secrets.gateway.bao_login import LoginClient
from clawql_secrets.gateway.core import Gateway
from clawql_secrets.gateway.errors import TokenRejected
from clawql_secrets.gateway.registry import MemoryRegistry
from clawql_secrets.gateway.tools import load_tools
from clawql_secrets.issuer import LocalIssuer
from tests.gateway.fakes import mock_openbao, unit_config
from tests.gateway.test_app import ASGIClient, _no_openbao
from tests.gateway.test_live_tools import _server_tls


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def gw_env(tmp_path: Path) -> Iterator[tuple[Gateway, LocalIssuer, Clock]]:
    issuer = session_issuer.load_issuer(tmp_path)
    cfg = unit_config(tmp_path, databases={"default": {"host": "127.0.0.1", "dbname": "x"}})
    bao = mock_openbao(_no_openbao)
    clock = Clock(time.time())
    gw = Gateway(cfg, bao=bao, registry=MemoryRegistry(), tools=load_tools(cfg), clock=clock)
    yield gw, issuer, clock
    bao.close()


def _count_full_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = jwt_check.verify_session

    def counting(token: str, *a: Any, **kw: Any) -> jwt_check.SessionClaims:
        calls.append(token)
        return real(token, *a, **kw)

    monkeypatch.setattr(jwt_check, "verify_session", counting)
    return calls


def test_verified_jwt_is_cached_until_exp(
    gw_env: tuple[Gateway, LocalIssuer, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, issuer, clock = gw_env
    calls = _count_full_checks(monkeypatch)
    token = session_issuer.issue(issuer, tenant="acme", agent="bot", role="analyst", ttl=300)
    first = gw.verify_session(token)
    assert gw.verify_session(token) == first
    assert len(calls) == 1
    # Past exp (inside the skew grace): the full check runs again, not the cache.
    clock.now = first.exp + 1
    gw.verify_session(token)
    assert len(calls) == 2
    clock.now = first.exp + 3600
    with pytest.raises(TokenRejected) as err:
        gw.verify_session(token)
    assert err.value.code == "token_expired"


def test_cache_is_per_token_and_per_key_set(
    gw_env: tuple[Gateway, LocalIssuer, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, issuer, clock = gw_env
    calls = _count_full_checks(monkeypatch)
    token = session_issuer.issue(issuer, tenant="acme", agent="bot", role="analyst", ttl=300)
    gw.verify_session(token)
    # A token with a changed signature is another cache key: the full check refuses it.
    head, payload, sig = token.split(".")
    forged = f"{head}.{payload}.{sig[:-4]}{'AAAA' if sig[-4:] != 'AAAA' else 'BBBB'}"
    with pytest.raises(TokenRejected):
        gw.verify_session(forged)
    # A clock earlier than the first verification: full check.
    clock.now -= 10
    gw.verify_session(token)
    # A reloaded key set invalidates what the old one verified.
    n = len(calls)
    gw.jwks.keys = jwt_check.KeySet(json.loads(gw.config.sessions.jwks_file.read_text()))
    gw.verify_session(token)
    assert len(calls) == n + 1


def test_direct_tool_route_answers_like_the_router(
    gw_env: tuple[Gateway, LocalIssuer, Clock],
) -> None:
    gw, issuer, _ = gw_env
    client = ASGIClient(build_app(gw, sweeper=False))
    token = session_issuer.issue(issuer, tenant="acme", agent="bot", role="analyst", ttl=300)
    h = {"Authorization": f"Bearer {token}"}
    r = client.post("/v1/tools/no.such", json={}, headers=h)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "unknown_tool")
    r = client.post("/v1/tools/sql.query", json={"sql": ""}, headers=h)
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_arguments")
    r = client.post("/v1/tools/a/b", json={}, headers=h)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    r = client.get("/v1/tools/sql.query", headers=h)
    assert (r.status_code, r.json()["error"]["code"]) == (405, "method_not_allowed")
    r = client.post("/v1/tools/sql.query", json={}, headers={"Authorization": "Basic x"})
    assert (r.status_code, r.json()["error"]["code"]) == (401, "missing_bearer")


# -- the login pool against a local HTTPS server ---------------------------------------
@pytest.fixture
def bao_stub(tmp_path: Path) -> Iterator[tuple[str, Path, list[dict[str, Any]], list[int]]]:
    ca, cert, key = _server_tls(tmp_path)
    seen: list[dict[str, Any]] = []
    statuses: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "body": body, "conn": id(self.connection)})
            status = statuses.pop(0) if statuses else 200
            out = (
                {"auth": {"client_token": "hvb.x", "metadata": {"tenant": "acme"}}}
                if status == 200
                else {"errors": ["permission denied"]}
            )
            data = json.dumps(out).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"https://localhost:{srv.server_address[1]}", ca, seen, statuses
    finally:
        srv.shutdown()
        srv.server_close()


def test_login_pool_keeps_alive_and_fails_over(
    bao_stub: tuple[str, Path, list[dict[str, Any]], list[int]],
) -> None:
    url, ca, seen, statuses = bao_stub
    c = LoginClient([url], ca, timeout=2, retry_for=2)
    try:
        body = {"role": "analyst", "jwt": "a.b.c"}
        assert c.login("sessions", body)["auth"]["client_token"] == "hvb.x"
        c.login("sessions", body)
        assert [s["path"] for s in seen] == ["/v1/auth/sessions/login"] * 2
        assert seen[0]["body"] == body
        assert seen[0]["conn"] == seen[1]["conn"]  # one kept-alive TLS connection
        statuses[:] = [503]  # retryable: tried again
        assert c.login("sessions", body)["auth"]["client_token"] == "hvb.x"
        statuses[:] = [403]
        with pytest.raises(OpenBaoError) as err:
            c.login("sessions", body)
        assert err.value.status == 403
        assert "a.b.c" not in str(err.value)
    finally:
        c.close()


def test_login_pool_unreachable_is_not_leader(tmp_path: Path) -> None:
    ca, _, _ = _server_tls(tmp_path)
    c = LoginClient(["https://127.0.0.1:1"], ca, timeout=0.5, retry_for=0.2)
    with pytest.raises(NotLeaderError):
        c.login("sessions", {"role": "r", "jwt": "x"})


def test_login_pool_refuses_an_unknown_ca(
    bao_stub: tuple[str, Path, list[dict[str, Any]], list[int]], tmp_path: Path
) -> None:
    url, _, _, _ = bao_stub
    other = tmp_path / "other"
    other.mkdir()
    wrong_ca, _, _ = _server_tls(other)
    c = LoginClient([url], wrong_ca, timeout=1, retry_for=0.2)
    with pytest.raises(NotLeaderError) as err:
        c.login("sessions", {"role": "r", "jwt": "x"})
    assert "SSL" in str(err.value) or "Certificate" in str(err.value)
