"""``/mcp`` against the real thing: 3-node OpenBao, PostgreSQL, Redis, the SDK's client.

OpenBao is configured as ``up`` configures it (``tests.shipped``), and so is the
gateway (``live.config_for``), except that its canonical URI (RFC 8707: the
session JWTs' audience and the RFC 9728 ``resource``) is the URL this test
serves it on. One replica in this process (uvicorn on a free loopback port), so
its OpenBao traffic is recorded for the canaries exactly as in
``test_live_gateway``; the agent side is the official ``mcp`` client
(``mcp.Client`` over ``streamable_http_client``, the session JWT in an
``Authorization`` header) in both connect modes: the initialize handshake and the
2026-07-28 per-request envelope. Every HTTP response body it sees is kept for the
canary search.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import httpx
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from clawql_secrets.cluster.layout import StackSettings
from clawql_secrets.gateway import openapi, session_issuer
from clawql_secrets.gateway.app import WELL_KNOWN
from clawql_secrets.issuer import LocalIssuer
from tests import shipped
from tests.gateway import live
from tests.gateway.live import role_exists
from tests.gateway.mcp_helpers import refused, rpc

pytestmark = [pytest.mark.cluster, pytest.mark.gateway]

ROLE = "analyst"
PG = "pg_main"
MODES = ["legacy", "2026-07-28"]
T = TypeVar("T")


@dataclass
class Env:
    sh: shipped.Shipped
    sessions: LocalIssuer
    gw: live.InProcessReplica
    canaries: live.Canaries
    logs: live.LogCapture
    bodies: list[str] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{self.gw.url}/mcp"

    @property
    def challenge_url(self) -> str:
        return f"{self.gw.url}{WELL_KNOWN}"

    def jwt(
        self,
        tenant: str = "acme",
        agent: str = "bot",
        ttl: int = 600,
        role: str = ROLE,
        audience: str | None = None,
    ) -> str:
        token = session_issuer.issue(
            self.sessions,
            tenant=tenant,
            agent=agent,
            role=role,
            ttl=ttl,
            audience=audience or self.gw.gateway.config.sessions.audience,
        )
        self.issued.append(token)
        return token

    def with_mcp(
        self, jwt: str | None, use: Callable[[Client], Awaitable[T]], mode: str = "legacy"
    ) -> T:
        """Run ``use`` on a connected SDK client whose bearer is ``jwt``."""

        async def go() -> T:
            async with self.client(jwt, mode) as client:
                return await use(client)

        return anyio.run(go)

    @contextlib.asynccontextmanager
    async def client(self, jwt: str | None, mode: str) -> AsyncIterator[Client]:
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
            Client(streamable_http_client(self.url, http_client=http), mode=mode, cache=None) as c,
        ):
            yield c

    def call(
        self, jwt: str, tool: str, args: dict[str, Any], mode: str = "legacy"
    ) -> types.CallToolResult:
        async def use(client: Client) -> types.CallToolResult:
            return await client.call_tool(tool, args)

        return self.with_mcp(jwt, use, mode)

    def sql(self, jwt: str, text: str, *params: Any) -> types.CallToolResult:
        return self.call(jwt, "sql.query", {"database": PG, "sql": text, "params": list(params)})

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
    canaries = live.Canaries()
    replica: live.InProcessReplica | None = None
    with live.captured_logs() as logs, shipped.provisioned(s, tmp_path_factory.mktemp("mcp")) as sh:
        live.seed_items(sh)
        port = live.free_port()
        sessions_trust = sh.gateway_config().sessions.model_dump(mode="json")
        sessions_trust["audience"] = f"http://127.0.0.1:{port}"  # this replica's URL
        cfg = live.config_for(sh, port, sessions=sessions_trust)
        try:
            replica = live.start_in_process(cfg, canaries)
            yield Env(sh, session_issuer.load_issuer(s.data_dir), replica, canaries, logs)
        finally:
            if replica is not None:
                with contextlib.suppress(Exception):
                    replica.stop()


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


INIT = rpc(
    "initialize",
    {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "live", "version": "0"},
    },
)
LIST = rpc("tools/list")
CALL = rpc("tools/call", {"name": "sql.query", "arguments": {"database": PG, "sql": "SELECT 1"}})


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("role", "tenant", "tools"),
    [
        ("analyst", "globex", ["sql.query"]),
        ("integrator", "acme", ["http.request"]),
        ("reporter", "globex", ["sql.query"]),
    ],
)
def test_lists_the_roles_tools(
    env: Env, mode: str, role: str, tenant: str, tools: list[str]
) -> None:
    """``tools/list`` shows what the desired state lets the role call, nothing else."""

    async def use(client: Client) -> types.ListToolsResult:
        return await client.list_tools()

    listed = env.with_mcp(env.jwt(tenant, "lister", role=role), use, mode)
    assert sorted(t.name for t in listed.tools) == tools
    for tool in listed.tools:
        assert tool.input_schema == openapi.args_schema(env.gw.gateway.tools[tool.name])


@pytest.mark.parametrize("mode", MODES)
def test_sql_select_on_own_table(env: Env, mode: str) -> None:
    jwt = env.jwt("acme", f"mcp-reader-{mode[:4]}")

    async def use(client: Client) -> list[types.CallToolResult]:
        return [
            await client.call_tool(
                "sql.query",
                {
                    "database": PG,
                    "sql": "SELECT id, name FROM acme.items WHERE id <= %s ORDER BY id",
                    "params": [3],
                },
            ),
            await client.call_tool("sql.query", {"database": PG, "sql": "SELECT current_user"}),
            await client.call_tool("sql.query", {"database": PG, "sql": "SELECT current_user"}),
        ]

    rows, user1, user2 = env.with_mcp(jwt, use, mode)
    assert rows.structured_content is not None
    assert rows.structured_content["columns"] == ["id", "name"]
    assert _rows(rows) == [[1, "acme-row-1"], [2, "acme-row-2"], [3, "acme-row-3"]]
    # One session user across calls, as over REST.
    assert _rows(user1) == _rows(user2)
    assert str(_rows(user1)[0][0]) in shipped.session_users(env.sh.pg_database)


def test_refused_without_a_valid_session_jwt(env: Env) -> None:
    good = env.jwt()
    header, payload, sig = good.split(".")
    tampered = dict(live.claims(good), tenant="globex", sub="globex/bot")
    other_audience = env.jwt(audience="https://another-gateway.example")
    forged = {
        "no bearer": None,
        "not bearer": "Basic YWdlbnQ6cHc=",
        "garbage": "Bearer not-a-jwt",
        "alg none": f"Bearer {_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "wrong signature": f"Bearer {header}.{_b64(tampered)}.{sig}",
        "other audience": f"Bearer {other_audience}",
    }
    meta = f'resource_metadata="{env.challenge_url}"'
    for case, authorization in forged.items():
        for body in (INIT, CALL):
            r = env.raw("POST", env.url, authorization, body)
            assert r.status_code == 401, (case, r.text)
            missing = authorization is None or not authorization.startswith("Bearer ")
            expected = f"Bearer {meta}" if missing else f'Bearer error="invalid_token", {meta}'
            assert r.headers["www-authenticate"] == expected, case
            assert r.json()["error"]["code"].startswith(("missing_bearer", "token_")), r.text
    # The challenge leads to the metadata, which names this gateway and the issuer.
    doc = env.raw("GET", env.challenge_url, None).json()
    assert doc["resource"] == env.gw.url
    assert doc["authorization_servers"] == [env.gw.gateway.config.sessions.issuer]
    # The real client, with no bearer and with forged ones, cannot even connect.
    for mode in MODES:
        for jwt in (None, f"{header}.{_b64(tampered)}.{sig}", other_audience):

            async def go(jwt: str | None = jwt, mode: str = mode) -> None:
                with refused():
                    async with env.client(jwt, mode) as client:
                        await client.list_tools()

            anyio.run(go)
    # The control: the untampered JWT is served.
    assert env.raw("POST", env.url, f"Bearer {good}", INIT).status_code == 200


@pytest.mark.parametrize("mode", MODES)
def test_tool_not_allowed_is_refused_as_rest_does(env: Env, mode: str) -> None:
    jwt = env.jwt("acme", f"mcp-scope-{mode[:4]}")
    result = env.call(jwt, "http.request", {"url": "https://127.0.0.1:9/"}, mode)
    assert _error(result) == "tool_not_allowed"
    r = env.raw("POST", f"{env.gw.url}/v1/tools/http.request", f"Bearer {jwt}", {"url": "x"})
    assert (r.status_code, r.json()["error"]["code"]) == (403, "tool_not_allowed")
    assert r.headers["www-authenticate"] == (
        f'Bearer error="insufficient_scope", resource_metadata="{env.challenge_url}"'
    )


def test_cross_tenant_sql_is_a_tool_error(env: Env) -> None:
    jwt = env.jwt("acme", "mcp-spy")
    # The database refuses: a table named in a string, resolved by PostgreSQL (the
    # anomaly rule, which reads schema names as the servers do, does not see one).
    r = env.sql(jwt, "SELECT 'globex.items'::regclass::text")
    assert _error(r) == "sql_permission_denied", r.structured_content
    assert "globex-row" not in r.content[0].text  # type: ignore[union-attr]
    assert _rows(env.sql(jwt, "SELECT has_schema_privilege('globex', 'USAGE')")) == [[False]]
    # The anomaly rule: a schema-qualified reference revokes the session.
    user = str(_rows(env.sql(jwt, "SELECT current_user"))[0][0])
    r = env.sql(jwt, 'SELECT * FROM "globex" . items')
    assert _error(r) == "anomaly_revoked"
    assert "globex-row" not in r.content[0].text  # type: ignore[union-attr]
    live.wait_until(lambda: not role_exists(user), timeout=10)
    r2 = env.raw("POST", env.url, f"Bearer {jwt}", CALL)
    assert (r2.status_code, r2.json()["error"]["code"]) == (401, "session_ended")


@pytest.mark.parametrize("mode", MODES)
def test_ended_session_is_refused_on_every_method(env: Env, mode: str) -> None:
    jwt = env.jwt("globex", f"mcp-ender-{mode[:4]}")
    user = str(
        _rows(env.call(jwt, "sql.query", {"database": PG, "sql": "SELECT current_user"}))[0][0]
    )
    sid = live.sid(jwt)
    r = env.raw("DELETE", f"{env.gw.url}/v1/sessions/{sid}", f"Bearer {jwt}")
    assert r.status_code == 200, r.text
    # The DB lease and the anchor token it hangs off.
    assert (r.json()["leases_revoked"], r.json()["state"]) == (2, "ended"), r.text
    live.wait_until(lambda: not role_exists(user), timeout=10)
    with refused():
        env.call(jwt, "sql.query", {"database": PG, "sql": "SELECT current_user"}, mode)
    expected = f'Bearer error="invalid_token", resource_metadata="{env.challenge_url}"'
    for body in (INIT, LIST, CALL, rpc("ping")):
        r = env.raw("POST", env.url, f"Bearer {jwt}", body)
        assert (r.status_code, r.json()["error"]["code"]) == (401, "session_ended"), body
        assert r.headers["www-authenticate"] == expected
        assert user not in r.text


def test_zz_canaries_never_leak(env: Env) -> None:
    """Every credential of this module (OpenBao tokens, anchors, accessors, exchange
    assertions, DB passwords): in no MCP response, gateway log line or registry key."""
    assert len(env.canaries.db_users) >= 4  # one per session that ran SQL
    assert len(env.canaries.assertions) >= 8 and env.canaries.anchors
    assert len(env.canaries.values) >= 12
    haystacks = {
        "MCP responses": "\n".join(env.bodies),
        "gateway log": "\n".join(env.logs.lines),
    }
    assert "sql.query" in haystacks["MCP responses"]
    assert "tool call tool=sql.query" in haystacks["gateway log"]
    for where, text in haystacks.items():
        hits = env.canaries.found_in(text)
        assert not hits, f"{len(hits)} credentials found in {where}"
    # The session JWTs are bearer credentials too: never logged, never echoed, never
    # sent to OpenBao (which got the gateway's assertions instead).
    assert len(env.issued) >= 10
    sent = {a for _, a in env.canaries.assertions}
    for where, text in haystacks.items():
        assert not [j for j in env.issued if j in text], f"a session JWT found in {where}"
    assert not sent & set(env.issued)
    assert "Traceback" not in haystacks["MCP responses"]
    # The shared registry holds lease ids and anchor accessors, never a credential.
    registry = live.redis_text(env.sh.settings, env.gw.gateway.config.registry.prefix)
    assert "database/creds/" in registry
    hits = env.canaries.found_in(registry, accessors=False)
    assert not hits, f"{len(hits)} credentials found in the Redis registry"
    assert not [j for j in env.issued if j in registry], "a session JWT found in the registry"
