"""HTTP surface without backends: bad input is refused before anything reaches OpenBao."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from clawql_secrets.gateway import session_issuer
from clawql_secrets.gateway.app import build_app
from clawql_secrets.gateway.core import Gateway
from clawql_secrets.gateway.registry import MemoryRegistry
from clawql_secrets.gateway.tools import load_tools
from clawql_secrets.issuer import LocalIssuer
from tests.gateway.fakes import mock_openbao, unit_config


class ASGIClient:
    """Sync calls into the ASGI app through httpx's ASGI transport (no server, no lifespan)."""

    def __init__(self, app: Any) -> None:
        self._transport = httpx.ASGITransport(app=app)

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=self._transport, base_url="http://gw") as c:
                return await c.request(method, url, **kw)

        return anyio.run(go)

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("POST", url, **kw)

    def delete(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("DELETE", url, **kw)


def _no_openbao(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"unexpected OpenBao call {request.url.path}")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[ASGIClient, LocalIssuer]]:
    issuer = session_issuer.load_issuer(tmp_path)
    cfg = unit_config(
        tmp_path, databases={"default": {"host": "127.0.0.1", "dbname": "x"}}, max_body_bytes=2048
    )
    bao = mock_openbao(_no_openbao)
    gw = Gateway(cfg, bao=bao, registry=MemoryRegistry(), tools=load_tools(cfg))
    yield ASGIClient(build_app(gw, sweeper=False)), issuer
    bao.close()


def _token(issuer: LocalIssuer) -> str:
    return session_issuer.issue(issuer, tenant="acme", agent="bot", role="analyst", ttl=300)


def _code(resp: httpx.Response) -> str:
    return str(resp.json()["error"]["code"])


def test_missing_bearer(env: tuple[ASGIClient, LocalIssuer]) -> None:
    client, _ = env
    r = client.post("/v1/tools/sql.query", json={"sql": "select 1"})
    assert (r.status_code, _code(r)) == (400, "missing_bearer")


def test_forged_bearer_is_401_json(env: tuple[ASGIClient, LocalIssuer]) -> None:
    client, _ = env
    r = client.post("/v1/tools/sql.query", json={}, headers={"Authorization": "Bearer a.b.c"})
    assert r.status_code in (400, 401)
    assert "Traceback" not in r.text


def test_oversized_body(env: tuple[ASGIClient, LocalIssuer]) -> None:
    client, issuer = env
    r = client.post(
        "/v1/tools/sql.query",
        content=b"{" + b" " * 4096 + b"}",
        headers={"Authorization": f"Bearer {_token(issuer)}"},
    )
    assert (r.status_code, _code(r)) == (413, "body_too_large")


def test_invalid_json(env: tuple[ASGIClient, LocalIssuer]) -> None:
    client, issuer = env
    r = client.post(
        "/v1/tools/sql.query",
        content=b"{nope",
        headers={"Authorization": f"Bearer {_token(issuer)}"},
    )
    assert (r.status_code, _code(r)) == (400, "invalid_json")


def test_unknown_tool(env: tuple[ASGIClient, LocalIssuer]) -> None:
    client, issuer = env
    r = client.post(
        "/v1/tools/shell.exec", json={}, headers={"Authorization": f"Bearer {_token(issuer)}"}
    )
    assert (r.status_code, _code(r)) == (404, "unknown_tool")


def test_invalid_arguments(env: tuple[ASGIClient, LocalIssuer]) -> None:
    client, issuer = env
    r = client.post(
        "/v1/tools/sql.query",
        json={"sql": "select 1", "extra": True},
        headers={"Authorization": f"Bearer {_token(issuer)}"},
    )
    assert (r.status_code, _code(r)) == (422, "invalid_arguments")


def test_other_sessions_delete_refused(env: tuple[ASGIClient, LocalIssuer]) -> None:
    client, issuer = env
    r = client.delete(
        "/v1/sessions/someone-elses-session-id",
        headers={"Authorization": f"Bearer {_token(issuer)}"},
    )
    assert (r.status_code, _code(r)) == (403, "other_session")


def test_revoke_needs_admin(env: tuple[ASGIClient, LocalIssuer]) -> None:
    client, issuer = env
    r = client.post("/v1/sessions/x/revoke", headers={"Authorization": f"Bearer {_token(issuer)}"})
    assert (r.status_code, _code(r)) == (403, "not_admin")


def test_unknown_endpoint_is_json(env: tuple[ASGIClient, LocalIssuer]) -> None:
    client, _ = env
    r = client.get("/v1/nothing")
    assert (r.status_code, _code(r)) == (404, "not_found")


def test_openapi_and_metrics_served(env: tuple[ASGIClient, LocalIssuer]) -> None:
    client, _ = env
    doc = client.get("/openapi.json").json()
    assert "/v1/tools/sql.query" in doc["paths"]
    assert "sql" in doc["components"]["schemas"]["Args_sql_query"]["properties"]
    m = client.get("/metrics")
    assert m.status_code == 200
    assert "clawql_gateway_tool_calls_total" in m.text
