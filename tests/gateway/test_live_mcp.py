"""``/mcp`` against the real thing: 3-node OpenBao, PostgreSQL, Redis, the SDK's client.

One gateway replica in this process (uvicorn on a free loopback port), so its
OpenBao traffic is recorded for the canaries exactly as in
``test_live_gateway``; the agent side is the official ``mcp`` client
(``streamable_http_client`` + ``ClientSession``) with the session JWT as its
bearer. Every HTTP response body the client sees is kept for the canary search.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import httpx
import httpx2
import mcp_types as types
import pytest
import redis
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from clawql_secrets.cluster import stack
from clawql_secrets.cluster.layout import StackSettings
from clawql_secrets.gateway import openapi, session_issuer
from clawql_secrets.issuer import LocalIssuer
from tests.gateway import live, openbao_setup
from tests.gateway.test_live_gateway import _gateway_config, role_exists

pytestmark = [pytest.mark.cluster, pytest.mark.gateway]

ROLE = "analyst"
T = TypeVar("T")


@dataclass
class Env:
    fx: openbao_setup.PGFixture
    sessions: LocalIssuer
    gw: live.InProcessReplica
    canaries: live.Canaries
    logs: live.LogCapture
    bodies: list[str] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{self.gw.url}/mcp"

    def jwt(self, tenant: str = "acme", agent: str = "bot", ttl: int = 600) -> str:
        token = session_issuer.issue(self.sessions, tenant=tenant, agent=agent, role=ROLE, ttl=ttl)
        self.issued.append(token)
        return token

    def with_mcp(self, jwt: str | None, use: Callable[[ClientSession], Awaitable[T]]) -> T:
        """Run ``use`` on an initialized MCP client session whose bearer is ``jwt``."""

        async def go() -> T:
            async with self._session(jwt) as session:
                await session.initialize()
                return await use(session)

        return anyio.run(go)

    @contextlib.asynccontextmanager
    async def _session(self, jwt: str | None) -> AsyncIterator[ClientSession]:
        async def keep(response: httpx2.Response) -> None:
            await response.aread()
            self.bodies.append(response.text)

        headers = {"Authorization": f"Bearer {jwt}"} if jwt else {}
        async with (
            httpx2.AsyncClient(
                headers=headers,
                timeout=30,
                trust_env=False,
                event_hooks={"response": [keep]},
            ) as http,
            streamable_http_client(self.url, http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            yield session

    def call(self, jwt: str, tool: str, args: dict[str, Any]) -> types.CallToolResult:
        async def use(session: ClientSession) -> types.CallToolResult:
            return await session.call_tool(tool, args)

        return self.with_mcp(jwt, use)

    def sql(self, jwt: str, text: str, *params: Any) -> types.CallToolResult:
        return self.call(jwt, "sql.query", {"sql": text, "params": list(params)})

    def raw(
        self, method: str, url: str, authorization: str | None, body: Any = None
    ) -> httpx.Response:
        headers = {"Accept": "application/json, text/event-stream"}
        if authorization is not None:
            headers["Authorization"] = authorization
        with httpx.Client(timeout=30, trust_env=False) as http:
            resp = http.request(method, url, headers=headers, json=body)
        self.bodies.append(resp.text)
        return resp


@pytest.fixture(scope="module")
def env(live_stack: StackSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    s = live_stack
    d = tmp_path_factory.mktemp("mcp")
    sessions = session_issuer.load_issuer(d)
    workload = LocalIssuer.load_or_create(s.issuer_dir, stack.ISSUER_URL)
    fx, admin_pw = openbao_setup.setup_postgres(("acme", "globex"))
    prefix = f"clawql:mcptest:{secrets.token_hex(4)}"
    r = redis.Redis(host="127.0.0.1", port=6379)
    canaries = live.Canaries()
    canaries.add(admin_pw)
    replica: live.InProcessReplica | None = None
    with live.captured_logs() as logs:
        try:
            with stack.client_for(s) as client:
                openbao_setup.configure(
                    client,
                    workload,
                    sessions,
                    fx,
                    admin_pw,
                    agent_role=ROLE,
                    audience=session_issuer.SESSION_AUDIENCE,
                )
            cfg = _gateway_config(d, s, live.free_port(), prefix, fx)
            replica = live.start_in_process(cfg, canaries)
            yield Env(fx, sessions, replica, canaries, logs)
        finally:
            if replica is not None:
                with contextlib.suppress(Exception):
                    replica.stop()
            openbao_setup.teardown_postgres(fx)
            for key in r.scan_iter(f"{prefix}:*"):
                r.delete(key)
            r.close()


def _claims(jwt: str) -> dict[str, Any]:
    seg = jwt.split(".")[1]
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))
    return value


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _error(result: types.CallToolResult) -> str:
    assert result.is_error, result
    body = result.structured_content
    assert isinstance(body, dict) and set(body["error"]) == {"code", "message"}
    assert json.loads(result.content[0].text) == body  # type: ignore[union-attr]
    return str(body["error"]["code"])


def _rows(result: types.CallToolResult) -> list[list[Any]]:
    assert not result.is_error, result.structured_content
    body = result.structured_content
    assert isinstance(body, dict)
    assert json.loads(result.content[0].text) == body  # type: ignore[union-attr]
    return list(body["rows"])


def test_lists_the_gateway_tools(env: Env) -> None:
    async def use(session: ClientSession) -> types.ListToolsResult:
        return await session.list_tools()

    listed = env.with_mcp(env.jwt(), use)
    tools = {t.name: t for t in listed.tools}
    assert set(tools) == set(env.gw.gateway.tools)
    assert "sql.query" in tools
    for name, tool in tools.items():
        assert tool.input_schema == openapi.args_schema(env.gw.gateway.tools[name])
    assert "sql" in tools["sql.query"].input_schema["properties"]


def test_sql_select_on_own_table(env: Env) -> None:
    jwt = env.jwt("acme", "mcp-reader")

    async def use(session: ClientSession) -> list[types.CallToolResult]:
        return [
            await session.call_tool(
                "sql.query",
                {"sql": "SELECT id, name FROM items WHERE id <= %s ORDER BY id", "params": [3]},
            ),
            await session.call_tool("sql.query", {"sql": "SELECT current_user"}),
            await session.call_tool("sql.query", {"sql": "SELECT current_user"}),
        ]

    rows, user1, user2 = env.with_mcp(jwt, use)
    assert rows.structured_content is not None
    assert rows.structured_content["columns"] == ["id", "name"]
    assert _rows(rows) == [[1, "acme-row-1"], [2, "acme-row-2"], [3, "acme-row-3"]]
    # One session user across calls, as over REST.
    assert _rows(user1) == _rows(user2)
    assert str(_rows(user1)[0][0]).startswith(env.fx.user_prefix)


def test_refused_without_a_valid_session_jwt(env: Env) -> None:
    good = env.jwt()
    header, payload, sig = good.split(".")
    tampered = dict(_claims(good), tenant="globex", sub="globex/bot")
    forged = {
        "no bearer": None,
        "not bearer": "Basic YWdlbnQ6cHc=",
        "garbage": "Bearer not-a-jwt",
        "alg none": f"Bearer {_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "wrong signature": f"Bearer {header}.{_b64(tampered)}.{sig}",
    }
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "live", "version": "0"},
        },
    }
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "sql.query", "arguments": {"sql": "SELECT 1"}},
    }
    for case, authorization in forged.items():
        for body in (init, call):
            r = env.raw("POST", env.url, authorization, body)
            assert r.status_code == 401, (case, r.text)
            assert r.headers["www-authenticate"] == "Bearer", case
            assert r.json()["error"]["code"].startswith(("missing_bearer", "token_")), r.text
    # The real client, with no bearer and with the forged one, cannot even initialize.
    for jwt in (None, f"{header}.{_b64(tampered)}.{sig}"):

        async def go(jwt: str | None = jwt) -> None:
            async with env._session(jwt) as session:
                with pytest.raises(MCPError):
                    await session.initialize()

        anyio.run(go)
    # The control: the untampered JWT is served.
    assert env.raw("POST", env.url, f"Bearer {good}", init).status_code == 200


def test_cross_tenant_sql_is_a_tool_error(env: Env) -> None:
    jwt = env.jwt("acme", "mcp-spy")
    # The database refuses: dynamic SQL naming globex's table (the anomaly rule,
    # which scans for schema-qualified names, does not see it).
    r = env.sql(jwt, "SELECT query_to_xml('select * from t_glob' || 'ex.items', true, true, '')")
    assert _error(r) == "sql_permission_denied", r.structured_content
    assert "globex-row" not in r.content[0].text  # type: ignore[union-attr]
    assert _rows(env.sql(jwt, "SELECT has_schema_privilege('t_globex', 'USAGE')")) == [[False]]
    # The anomaly rule: a schema-qualified reference revokes the session.
    user = str(_rows(env.sql(jwt, "SELECT current_user"))[0][0])
    r = env.sql(jwt, 'SELECT * FROM "t_globex" . items')
    assert _error(r) == "anomaly_revoked"
    assert "globex-row" not in r.content[0].text  # type: ignore[union-attr]
    live.wait_until(lambda: not role_exists(user), timeout=1.5)
    assert _error(env.sql(jwt, "SELECT 1")) == "session_ended"


def test_ended_session_is_refused(env: Env) -> None:
    jwt = env.jwt("globex", "mcp-ender")
    user = str(_rows(env.sql(jwt, "SELECT current_user"))[0][0])
    sid = _claims(jwt)["sid"]
    r = env.raw("DELETE", f"{env.gw.url}/v1/sessions/{sid}", f"Bearer {jwt}")
    assert r.status_code == 200 and r.json()["leases_revoked"] == 1, r.text
    live.wait_until(lambda: not role_exists(user), timeout=1.0)
    result = env.sql(jwt, "SELECT current_user")
    assert _error(result) == "session_ended"
    assert result.structured_content is not None
    assert user not in json.dumps(result.structured_content)


def test_zz_canaries_never_leak(env: Env) -> None:
    """Every credential OpenBao issued in this module: in no MCP response, no gateway log line."""
    assert len(env.canaries.db_users) >= 3  # one per session that ran SQL
    assert len(env.canaries.values) >= 6
    haystacks = {
        "MCP responses": "\n".join(env.bodies),
        "gateway log": "\n".join(env.logs.lines),
    }
    assert "sql.query" in haystacks["MCP responses"]
    assert "tool call tool=sql.query" in haystacks["gateway log"]
    for where, text in haystacks.items():
        hits = [c[:4] + "…" for c in env.canaries.values if c in text]
        assert not hits, f"{len(hits)} credentials found in {where}"
    # The session JWTs are bearer credentials too: never logged, never echoed.
    assert len(env.issued) >= 5
    for where, text in haystacks.items():
        assert not [j for j in env.issued if j in text], f"a session JWT found in {where}"
    assert "Traceback" not in haystacks["MCP responses"]
