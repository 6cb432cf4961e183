"""The MCP authorization specification, against a real server (issue 12, item 5).

A real uvicorn on a free loopback port serves ``build_app`` over a ``Gateway``
whose OpenBao is an in-memory fake (it answers the exchange login and records
every request); the gateway's canonical URI (RFC 8707) is that server's URL.
The agent side is the official SDK: ``mcp.Client`` over
``streamable_http_client`` with an ``Authorization`` header, in the
initialize-handshake mode and in the 2026-07-28 per-request mode.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import jwt as pyjwt
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.auth.utils import (
    build_protected_resource_metadata_discovery_urls,
    extract_resource_metadata_from_www_auth,
)
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import ProtectedResourceMetadata
from mcp.shared.auth_utils import check_resource_allowed

from clawql_secrets.gateway import session_issuer
from clawql_secrets.gateway.app import WELL_KNOWN, build_app
from clawql_secrets.gateway.core import Gateway
from clawql_secrets.gateway.registry import MemoryRegistry
from clawql_secrets.issuer import LocalIssuer
from tests.gateway import live
from tests.gateway.fakes import mock_openbao, unit_config
from tests.gateway.mcp_helpers import refused, rpc
from tests.gateway.test_app import EchoTool, fake_exchange, serving

MODES = ["legacy", "2026-07-28"]
ALL = ["http.request", "redis.command", "sql.query"]
ROLES = {"analyst": {"tools": ["sql.query"]}, "operator": {"tools": ALL}}
ACCEPT = "application/json, text/event-stream"


@dataclass
class Env:
    url: str
    gw: Gateway
    issuer: LocalIssuer
    bao_token: str
    openbao_requests: list[httpx.Request]
    issued: list[str] = field(default_factory=list)

    @property
    def metadata_url(self) -> str:
        return f"{self.url}{WELL_KNOWN}"

    def jwt(self, role: str = "analyst", *, tenant: str = "acme", audience: str = "") -> str:
        token = session_issuer.issue(
            self.issuer,
            tenant=tenant,
            agent="mcp-bot",
            role=role,
            ttl=600,
            audience=audience or self.url,
        )
        self.issued.append(token)
        return token

    def expired(self) -> str:
        """A session JWT for this gateway whose ``exp`` has passed (signed by the issuer)."""
        good = pyjwt.decode(self.jwt(), options={"verify_signature": False})
        return self.issuer.mint(
            good["sub"],
            self.url,
            ttl=-600,
            **{k: good[k] for k in ("sid", "tenant", "agent", "agent_role")},
        )

    @contextlib.asynccontextmanager
    async def client(self, jwt: str, mode: str) -> AsyncIterator[Client]:
        """The SDK client with ``jwt`` as its bearer (no response cache: every call
        reaches the server)."""
        async with (
            httpx2.AsyncClient(
                headers={"Authorization": f"Bearer {jwt}"}, timeout=30, trust_env=False
            ) as http,
            Client(
                streamable_http_client(f"{self.url}/mcp", http_client=http),
                mode=mode,
                cache=None,
            ) as client,
        ):
            yield client

    def post(
        self, path: str, authorization: str | None, body: Any, *, version: str | None = None
    ) -> httpx.Response:
        headers = {"Accept": ACCEPT}
        if authorization is not None:
            headers["Authorization"] = authorization
        if version is not None:
            headers["Mcp-Protocol-Version"] = version
        with httpx.Client(timeout=30, trust_env=False) as http:
            return http.post(f"{self.url}{path}", headers=headers, json=body)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp: Path = tmp_path_factory.mktemp("mcp-auth")
    port = live.free_port()
    canonical = f"http://127.0.0.1:{port}"
    issuer = session_issuer.load_issuer(tmp)
    cfg = unit_config(
        tmp,
        sessions={"jwks_file": str(tmp / "sessions-issuer" / "jwks.json"), "audience": canonical},
        roles=ROLES,
        # This module sends many forged bearers on purpose: no per-address budget here
        # (tests/gateway/test_app.py::test_a_forged_token_flood_does_not_lock_out_live_sessions).
        edge={"auth_failures": 0},
    )
    token = "s." + secrets.token_urlsafe(24)
    seen: list[httpx.Request] = []
    bao = mock_openbao(fake_exchange(token, [], seen))
    tools: dict[str, Any] = {name: EchoTool(name) for name in ALL}
    gw = Gateway(cfg, bao=bao, registry=MemoryRegistry(), tools=tools)
    try:
        with serving(build_app(gw, sweeper=False), port) as url:
            assert url == canonical
            yield Env(url, gw, issuer, token, seen)
    finally:
        bao.close()


INIT = rpc(
    "initialize",
    {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "auth-test", "version": "0"},
    },
)
LIST = rpc("tools/list")
CALL = rpc("tools/call", {"name": "sql.query", "arguments": {"text": "x"}})


def _modern(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` in the 2026-07-28 envelope: the request carries what it needs in ``_meta``."""
    params = dict(body.get("params") or {})
    params["_meta"] = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    return {**body, "params": params}


# -- RFC 9728 metadata and the RFC 6750 challenge ---------------------------------------------
def test_the_challenge_leads_to_the_metadata(env: Env) -> None:
    r = env.post("/mcp", None, INIT)
    assert r.status_code == 401
    found = re.fullmatch(r'Bearer resource_metadata="([^"]+)"', r.headers["www-authenticate"])
    assert found is not None, r.headers["www-authenticate"]
    assert found.group(1) == env.metadata_url
    for url in (found.group(1), f"{env.metadata_url}/mcp"):
        doc = httpx.get(url, trust_env=False)
        assert doc.status_code == 200
        assert doc.json() == {
            "resource": env.url,
            "authorization_servers": [session_issuer.SESSIONS_ISSUER_URL],
            "bearer_methods_supported": ["header"],
            "resource_name": "ClawQL Secrets gateway",
        }


def test_the_sdks_own_discovery_finds_and_accepts_the_metadata(env: Env) -> None:
    """What the SDK's OAuth client does with a 401 (SEP-985 discovery, RFC 9728 model,
    RFC 8707 resource check), run on this gateway's answers."""
    endpoint = f"{env.url}/mcp"
    with httpx2.Client(trust_env=False) as http:
        challenge = http.post(endpoint, json=INIT, headers={"Accept": ACCEPT})
        hinted = extract_resource_metadata_from_www_auth(challenge)
        assert hinted == env.metadata_url
        urls = build_protected_resource_metadata_discovery_urls(hinted, endpoint)
        assert f"{env.metadata_url}/mcp" in urls
        for url in urls:
            doc = ProtectedResourceMetadata.model_validate_json(http.get(url).content)
            assert str(doc.resource).rstrip("/") == env.url
            assert [str(a).rstrip("/") for a in doc.authorization_servers] == [
                session_issuer.SESSIONS_ISSUER_URL
            ]
            assert check_resource_allowed(endpoint, str(doc.resource))


@pytest.mark.parametrize(
    ("case", "codes"),
    [
        ("missing", {"missing_bearer"}),
        ("basic", {"missing_bearer"}),
        ("garbage", {"token_malformed"}),
        ("expired", {"token_expired"}),
        ("other_audience", {"token_wrong_audience"}),
        ("bare_audience", {"token_wrong_audience"}),
        ("tampered", {"token_bad_signature"}),
    ],
)
def test_every_401_carries_the_challenge(env: Env, case: str, codes: set[str]) -> None:
    good = env.jwt()
    head, payload, sig = good.split(".")
    authorization = {
        "missing": None,
        "basic": "Basic YWdlbnQ6cHc=",
        "garbage": "Bearer not-a-jwt",
        "expired": f"Bearer {env.expired()}",
        "other_audience": f"Bearer {env.jwt(audience='http://127.0.0.1:1')}",
        "bare_audience": f"Bearer {env.jwt(audience='clawql-gateway')}",
        "tampered": f"Bearer {head}.{payload}.{sig[:-6]}AAAAAA",
    }[case]
    error = "" if case in ("missing", "basic") else 'error="invalid_token", '
    expected = f'Bearer {error}resource_metadata="{env.metadata_url}"'
    answers = [
        env.post("/v1/tools/sql.query", authorization, {"text": "x"}),
        env.post("/mcp", authorization, INIT),
        env.post("/mcp", authorization, LIST, version="2025-11-25"),
        env.post("/mcp", authorization, _modern(CALL), version="2026-07-28"),
        env.post("/v1/sessions/whatever/revoke", authorization, None),
    ]
    for r in answers:
        assert r.status_code == 401, (case, r.request.url, r.text)
        assert r.headers["www-authenticate"] == expected, (case, r.request.url)
        assert r.json()["error"]["code"] in codes, (case, r.text)


@pytest.mark.parametrize("mode", MODES)
def test_a_token_for_another_audience_cannot_use_the_sdk(env: Env, mode: str) -> None:
    other = env.jwt(audience="https://another-gateway.example")

    async def go() -> None:
        with refused():
            async with env.client(other, mode) as client:
                await client.list_tools()

    anyio.run(go)


# -- what a role sees and may call ------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("role", "tools"), [("analyst", ["sql.query"]), ("operator", ALL)])
def test_tools_list_shows_the_roles_tools(env: Env, mode: str, role: str, tools: list[str]) -> None:
    async def go() -> types.ListToolsResult:
        async with env.client(env.jwt(role), mode) as client:
            return await client.list_tools()

    listed = anyio.run(go)
    assert sorted(t.name for t in listed.tools) == tools


@pytest.mark.parametrize("mode", MODES)
def test_tools_call_works_and_refuses_as_rest_does(env: Env, mode: str) -> None:
    jwt = env.jwt("analyst", tenant="globex")

    async def go() -> tuple[types.CallToolResult, types.CallToolResult]:
        async with env.client(jwt, mode) as client:
            return (
                await client.call_tool("sql.query", {"text": mode}),
                await client.call_tool("http.request", {"text": "x"}),
            )

    ok, refused = anyio.run(go)
    assert not ok.is_error
    assert ok.structured_content == {"echo": mode, "tenant": "globex", "tool": "sql.query"}
    assert refused.is_error and refused.structured_content is not None
    assert refused.structured_content["error"]["code"] == "tool_not_allowed"
    # REST: the same refusal, with RFC 6750's insufficient_scope.
    r = env.post("/v1/tools/http.request", f"Bearer {jwt}", {"text": "x"})
    assert (r.status_code, r.json()["error"]["code"]) == (403, "tool_not_allowed")
    assert r.headers["www-authenticate"] == (
        f'Bearer error="insufficient_scope", resource_metadata="{env.metadata_url}"'
    )


# -- an ended session ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_an_ended_session_gets_401_on_every_method(env: Env, mode: str) -> None:
    jwt = env.jwt("operator")
    sid = pyjwt.decode(jwt, options={"verify_signature": False})["sid"]

    async def use_then_end() -> None:
        async with env.client(jwt, mode) as client:
            assert not (await client.call_tool("sql.query", {"text": "x"})).is_error
            with httpx.Client(trust_env=False) as http:
                r = http.delete(
                    f"{env.url}/v1/sessions/{sid}", headers={"Authorization": f"Bearer {jwt}"}
                )
            assert r.status_code == 200 and r.json()["state"] == "ended", r.text
            with refused():
                await client.list_tools()
            with refused():
                await client.call_tool("sql.query", {"text": "x"})

    anyio.run(use_then_end)

    async def reconnect() -> None:
        with refused():
            async with env.client(jwt, mode) as client:  # legacy: initialize is refused
                await client.list_tools()

    anyio.run(reconnect)
    expected = f'Bearer error="invalid_token", resource_metadata="{env.metadata_url}"'
    version = "2026-07-28" if mode != "legacy" else "2025-11-25"
    bodies = [INIT, LIST, CALL, rpc("ping"), rpc("notifications/initialized", rid=None)]
    if mode != "legacy":
        bodies = [_modern(b) for b in bodies[1:]] + [rpc("server/discover")]
    for body in bodies:
        r = env.post("/mcp", f"Bearer {jwt}", body, version=version)
        assert (r.status_code, r.json()["error"]["code"]) == (401, "session_ended"), body
        assert r.headers["www-authenticate"] == expected
    r = env.post("/v1/tools/sql.query", f"Bearer {jwt}", {"text": "x"})
    assert (r.status_code, r.json()["error"]["code"]) == (401, "session_ended")
    assert r.headers["www-authenticate"] == expected


# -- the bearer goes nowhere -----------------------------------------------------------------------
def test_zz_no_session_jwt_reached_openbao(env: Env) -> None:
    """Every OpenBao request of this module (the exchange logins): no session JWT in its
    headers or body, and the token OpenBao issued in no answer the agents got."""
    assert len(env.openbao_requests) >= 4
    assert len(env.issued) >= 10
    for request in env.openbao_requests:
        wire = str(request.headers) + request.content.decode()
        assert not [j for j in env.issued if j in wire or j.split(".")[2] in wire]
