"""``/mcp`` without backends: a real ``Gateway`` whose OpenBao is an in-memory fake.

The fake answers the per-call JWT login only (with a token that must never come
back out); the tools are in-memory too. Everything else is real: the app from
``build_app`` with its lifespan, the SDK's session manager and the SDK client.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, ConfigDict
from starlette.applications import Starlette

from clawql_secrets.gateway import openapi, session_issuer
from clawql_secrets.gateway.app import Challenge, build_app, resource_metadata_url
from clawql_secrets.gateway.core import Gateway
from clawql_secrets.gateway.registry import MemoryRegistry
from clawql_secrets.gateway.tools import ToolContext
from clawql_secrets.issuer import LocalIssuer
from tests.gateway.fakes import mock_openbao, unit_config
from tests.gateway.mcp_helpers import rpc
from tests.gateway.test_app import fake_exchange

LIMIT = 2048


class EchoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str


class EchoTool:
    name = "echo"
    args_model = EchoArgs

    def run(self, ctx: ToolContext, args: EchoArgs) -> dict[str, Any]:
        return {"echo": args.text, "tenant": ctx.claims.tenant}


class CrashTool:
    """Fails the way a bug would: an exception whose text must not reach the agent."""

    name = "crash"
    args_model = EchoArgs

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def run(self, ctx: ToolContext, args: EchoArgs) -> dict[str, Any]:
        raise RuntimeError(f"crashed holding {self.secret}")


@dataclass
class Env:
    app: Starlette
    gw: Gateway
    issuer: LocalIssuer
    bao_token: str
    logins: list[str] = field(default_factory=list)

    @property
    def challenge(self) -> Challenge:
        """The 401/403 challenges, naming the metadata of the configured canonical URI."""
        url = resource_metadata_url(self.gw.config.sessions.audience)
        assert url is not None and url.endswith("/.well-known/oauth-protected-resource")
        return Challenge.for_metadata(url)

    def jwt(self, tenant: str = "acme") -> str:
        return session_issuer.issue(
            self.issuer, tenant=tenant, agent="bot", role="analyst", ttl=300
        )


def _claims(jwt: str) -> dict[str, Any]:
    seg = jwt.split(".")[1]
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))
    return value


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    issuer = session_issuer.load_issuer(tmp_path)
    cfg = unit_config(
        tmp_path,
        databases={"default": {"host": "127.0.0.1", "dbname": "x"}},
        roles={"analyst": {"tools": ["crash", "echo"]}},
        max_body_bytes=LIMIT,
    )
    token = "s." + secrets.token_urlsafe(24)
    logins: list[str] = []
    bao = mock_openbao(fake_exchange(token, logins))
    tools: dict[str, Any] = {"echo": EchoTool(), "crash": CrashTool(token)}
    gw = Gateway(cfg, bao=bao, registry=MemoryRegistry(), tools=tools)
    yield Env(build_app(gw, sweeper=False), gw, issuer, token, logins)
    bao.close()


@dataclass
class Served:
    raw: httpx.AsyncClient
    bodies: list[str]
    app: Starlette

    @asynccontextmanager
    async def mcp(self, jwt: str | None) -> AsyncIterator[ClientSession]:
        """A real MCP client session over the app (legacy handshake era)."""
        headers = {"Authorization": f"Bearer {jwt}"} if jwt else {}

        async def keep(response: httpx2.Response) -> None:
            await response.aread()
            self.bodies.append(response.text)

        async with (
            httpx2.AsyncClient(
                transport=httpx2.ASGITransport(app=self.app),
                headers=headers,
                event_hooks={"response": [keep]},
            ) as http,
            streamable_http_client("http://gw/mcp", http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            yield session

    async def post(self, jwt: str | None, body: Any = None, **kw: Any) -> httpx.Response:
        headers = {"Accept": "application/json, text/event-stream"}
        if jwt is not None:
            headers["Authorization"] = jwt if " " in jwt else f"Bearer {jwt}"
        headers.update(kw.pop("headers", {}))
        if body is not None:
            kw["json"] = body
        resp = await self.raw.post("/mcp", headers=headers, **kw)
        self.bodies.append(resp.text)
        return resp


@asynccontextmanager
async def served(app: Starlette) -> AsyncIterator[Served]:
    """The app with its lifespan running (the MCP session manager needs it)."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as raw,
    ):
        yield Served(raw, [], app)


INIT = rpc(
    "initialize",
    {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "unit", "version": "0"},
    },
)


def _forged_alg_none(env: Env) -> str:
    claims = _claims(env.jwt())
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


def _forged_signature(env: Env) -> str:
    """acme's header and signature over a payload that says globex."""
    header, payload, sig = env.jwt("acme").split(".")
    claims = _claims(f"{header}.{payload}.{sig}")
    claims["tenant"] = "globex"
    claims["sub"] = "globex/bot"
    return f"{header}.{_b64(claims)}.{sig}"


def _foreign_key(env: Env, tmp: Path) -> str:
    """A well-formed session JWT from the right issuer URL, signed by another key."""
    other = session_issuer.load_issuer(tmp / "attacker")
    return session_issuer.issue(other, tenant="acme", agent="bot", role="analyst", ttl=300)


@pytest.mark.parametrize(
    ("case", "authorization", "codes"),
    [
        ("missing", None, {"missing_bearer"}),
        ("not_bearer_scheme", "Basic YWdlbnQ6cHc=", {"missing_bearer"}),
        ("empty_bearer", "Bearer ", {"missing_bearer"}),
        ("not_a_jwt", "Bearer not-a-jwt", {"token_malformed"}),
        ("alg_none", "alg_none", {"token_alg_refused", "token_malformed"}),
        ("tampered_payload", "tampered", {"token_bad_signature"}),
        ("foreign_key", "foreign", {"token_unknown_kid", "token_bad_signature"}),
        ("oversized_jwt", "Bearer " + "a" * 5000 + ".b.c", {"token_too_large"}),
    ],
)
def test_unauthenticated_is_401(
    env: Env, tmp_path: Path, case: str, authorization: str | None, codes: set[str]
) -> None:
    forged = {
        "alg_none": lambda: _forged_alg_none(env),
        "tampered": lambda: _forged_signature(env),
        "foreign": lambda: _foreign_key(env, tmp_path),
    }
    if authorization in forged:
        authorization = "Bearer " + forged[authorization]()

    async def go() -> None:
        async with served(env.app) as s:
            for body in (INIT, rpc("tools/call", {"name": "echo", "arguments": {"text": "x"}})):
                r = await s.post(authorization, body)
                assert r.status_code == 401, (case, r.text)
                missing = case in ("missing", "not_bearer_scheme", "empty_bearer")
                assert r.headers["www-authenticate"] == (
                    env.challenge.missing if missing else env.challenge.invalid_token
                )
                assert r.json()["error"]["code"] in codes, r.text
            r = await s.raw.get("/mcp", headers={"Authorization": authorization or ""})
            assert r.status_code == 401

    anyio.run(go)
    assert env.logins == []  # nothing reached OpenBao


def test_sdk_client_without_bearer_cannot_initialize(env: Env) -> None:
    async def go() -> None:
        async with served(env.app) as s, s.mcp(None) as session:
            with pytest.raises(MCPError):
                await session.initialize()

    anyio.run(go)


@pytest.mark.parametrize(
    ("case", "kw", "status", "code"),
    [
        ("declared_too_large", {"content": b" " * (LIMIT + 1)}, 413, "body_too_large"),
        ("declared_not_a_number", {"headers": {"Content-Length": "12x"}}, 413, "body_too_large"),
        ("declared_superscript", {"headers": {"Content-Length": b"\xb9"}}, 413, "body_too_large"),
        ("streamed_too_large", {"chunks": [b" " * 1000] * 3}, 413, "body_too_large"),
    ],
)
def test_body_limit(env: Env, case: str, kw: dict[str, Any], status: int, code: str) -> None:
    async def go() -> None:
        async with served(env.app) as s:
            args = dict(kw)
            headers = {"Content-Type": "application/json", **args.pop("headers", {})}
            if "chunks" in args:
                chunks = args.pop("chunks")

                async def stream() -> AsyncIterator[bytes]:
                    for c in chunks:
                        yield c

                args["content"] = stream()
            elif "content" not in args:
                args["content"] = b"{}"
            r = await s.post(env.jwt(), headers=headers, **args)
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
            # An unauthenticated oversized body is refused for the bearer first.
            r = await s.post(None, headers=headers, content=b" " * (LIMIT + 1))
            assert r.status_code == 401

    anyio.run(go)


def test_body_at_the_limit_is_served(env: Env) -> None:
    async def go() -> None:
        async with served(env.app) as s:
            body = json.dumps(INIT).encode()
            padded = body[:-1] + b" " * (LIMIT - len(body)) + b"}"
            assert len(padded) == LIMIT
            r = await s.post(
                env.jwt(), content=padded, headers={"Content-Type": "application/json"}
            )
            assert r.status_code == 200, r.text
            assert r.json()["result"]["serverInfo"]["name"] == "clawql-secrets-gateway"

    anyio.run(go)


def test_list_and_call_with_the_sdk_client(env: Env) -> None:
    jwt = env.jwt("globex")

    async def go() -> Served:
        async with served(env.app) as s:
            async with s.mcp(jwt) as session:
                await session.initialize()
                listed = await session.list_tools()
                assert [t.name for t in listed.tools] == ["crash", "echo"]
                for t in listed.tools:
                    assert t.input_schema == openapi.args_schema(env.gw.tools[t.name])
                out = await session.call_tool("echo", {"text": "hi"})
                assert not out.is_error
                assert out.structured_content == {"echo": "hi", "tenant": "globex"}
                assert json.loads(out.content[0].text) == out.structured_content  # type: ignore[union-attr]
            return s

    s = anyio.run(go)
    assert env.logins == [_claims(jwt)["sid"]]  # one call, one OpenBao login
    assert not any(env.bao_token in b for b in s.bodies)


def test_modern_era_client(env: Env) -> None:
    """The 2026-07-28 per-request envelope (``server/discover``) is served too."""

    async def go() -> None:
        async with served(env.app) as s, s.mcp(env.jwt()) as session:
            await session.discover()
            listed = await session.list_tools()
            assert {t.name for t in listed.tools} == {"crash", "echo"}
            out = await session.call_tool("echo", {"text": "modern"})
            assert out.structured_content == {"echo": "modern", "tenant": "acme"}

    anyio.run(go)


def test_stateless_call_needs_no_session(env: Env) -> None:
    """``tools/call`` with no ``initialize``, no ``Mcp-Session-Id``: any replica can serve it."""

    async def go() -> None:
        async with served(env.app) as s:
            r = await s.post(env.jwt(), INIT)
            assert r.status_code == 200 and "mcp-session-id" not in r.headers
            call = rpc("tools/call", {"name": "echo", "arguments": {"text": "again"}}, rid=7)
            r = await s.post(env.jwt(), call, headers={"Mcp-Protocol-Version": "2025-11-25"})
            assert r.status_code == 200, r.text
            result = r.json()["result"]
            assert result["structuredContent"]["echo"] == "again"
            assert result.get("isError") in (None, False)

    anyio.run(go)


@pytest.mark.parametrize(
    ("case", "name", "arguments", "code"),
    [
        ("unknown_tool", "shell.exec", {}, "unknown_tool"),
        ("extra_argument", "echo", {"text": "x", "extra": 1}, "invalid_arguments"),
        ("missing_argument", "echo", {}, "invalid_arguments"),
        ("crash", "crash", {"text": "x"}, "internal_error"),
    ],
)
def test_gateway_errors_are_tool_errors(
    env: Env, caplog: pytest.LogCaptureFixture, case: str, name: str, arguments: Any, code: str
) -> None:
    async def go() -> Any:
        async with served(env.app) as s, s.mcp(env.jwt()) as session:
            await session.initialize()
            return await session.call_tool(name, arguments), s.bodies

    with caplog.at_level(logging.DEBUG):
        out, bodies = anyio.run(go)
    assert out.is_error, case
    assert out.structured_content["error"]["code"] == code
    assert json.loads(out.content[0].text) == out.structured_content
    everything = "\n".join(bodies) + "\n" + caplog.text
    assert env.bao_token not in everything
    assert "Traceback" not in "\n".join(bodies)
    if case == "crash":
        assert out.structured_content["error"]["message"] == "internal error"
        assert "unexpected error RuntimeError" in caplog.text
        assert "crashed holding" not in everything


def test_ended_session_is_401_on_every_method(env: Env) -> None:
    """An ended session is refused at the edge, before the SDK: ``initialize`` and
    ``tools/list`` too, not only ``tools/call``, and the SDK client cannot go on."""
    jwt = env.jwt()
    claims = _claims(jwt)
    call = rpc("tools/call", {"name": "echo", "arguments": {"text": "x"}})

    async def go() -> None:
        async with served(env.app) as s:
            async with s.mcp(jwt) as session:
                await session.initialize()
                first = await session.call_tool("echo", {"text": "x"})
                assert not first.is_error
                await anyio.to_thread.run_sync(
                    lambda: env.gw.end_session(claims["sid"], exp=claims["exp"], reason="ended")
                )
                with pytest.raises(MCPError):
                    await session.list_tools()
                with pytest.raises(MCPError):
                    await session.call_tool("echo", {"text": "x"})
            for body in (INIT, rpc("tools/list"), call, rpc("ping")):
                r = await s.post(jwt, body)
                assert (r.status_code, r.json()["error"]["code"]) == (401, "session_ended")
                assert r.headers["www-authenticate"] == env.challenge.invalid_token

    anyio.run(go)
    assert len(env.logins) == 1  # refused before any OpenBao login


def test_tools_list_shows_the_roles_tools(env: Env) -> None:
    """``tools/list`` answers what ``Gateway.tools_for`` allows the session's role."""
    other = session_issuer.issue(env.issuer, tenant="acme", agent="bot", role="writer", ttl=300)

    async def go() -> None:
        async with served(env.app) as s, s.mcp(other) as session:
            await session.initialize()
            assert (await session.list_tools()).tools == []
            out = await session.call_tool("echo", {"text": "x"})
            assert out.is_error
            assert out.structured_content["error"]["code"] == "tool_not_allowed"

    anyio.run(go)
    assert env.logins == []


@pytest.mark.parametrize(
    ("case", "body"),
    [
        ("nested_arrays", b"[" * 1000 + b"]" * 1000),
        ("unclosed_arrays", b"[" * LIMIT),
        (
            "nested_params",
            b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":'
            + b'{"a":' * 100
            + b"1"
            + b"}" * 100
            + b"}",
        ),
    ],
)
@pytest.mark.parametrize("version", [None, "2025-11-25", "2026-07-28"])
def test_deep_json_is_400(env: Env, case: str, body: bytes, version: str | None) -> None:
    """Deeper than ``edge.max_json_depth`` is ``invalid_json`` before the SDK parses it."""

    async def go() -> httpx.Response:
        async with served(env.app) as s:
            headers = {"Content-Type": "application/json"}
            if version is not None:
                headers["Mcp-Protocol-Version"] = version
            return await s.post(env.jwt(), content=body, headers=headers)

    r = anyio.run(go)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_json"), r.text


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT"])
def test_only_post(env: Env, method: str) -> None:
    """Stateless: no SSE stream to hold open on GET, no MCP session to DELETE."""

    async def go() -> httpx.Response:
        async with served(env.app) as s:
            with anyio.fail_after(10):
                return await s.raw.request(
                    method,
                    "/mcp",
                    headers={
                        "Authorization": f"Bearer {env.jwt()}",
                        "Accept": "application/json, text/event-stream",
                    },
                )

    r = anyio.run(go)
    assert (r.status_code, r.json()["error"]["code"]) == (405, "method_not_allowed")
    assert r.headers["allow"] == "POST"
