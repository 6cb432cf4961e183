"""The gateway's tools over MCP (Model Context Protocol), streamable HTTP at ``/mcp``.

The same exchange as ``POST /v1/tools/{tool}``, spoken as MCP: ``tools/list``
answers the tools the session's role may call (``Gateway.tools_for``) with the
JSON Schemas of their arguments (the ones in ``/openapi.json``); ``tools/call``
runs ``Gateway.call_tool`` with the request's session JWT on the tool-call
thread limiter (per-call exchange, anomaly rules, the token dropped when the
call returns) and refuses what REST refuses, with the same codes.

Stateless: the SDK's session manager serves every HTTP request on its own,
with no ``Mcp-Session-Id`` and no server-side MCP state, so any replica can
serve any request, as with the REST API. Responses are JSON, not SSE. Both
the initialize-handshake protocol versions and the 2026-07-28 per-request
envelope are served by the SDK behind the same checks.

Before the SDK sees a request this module checks, in order (the MCP
authorization specification: an OAuth 2.1 protected resource, RFC 9728 / 6750):

1. ``Authorization: Bearer <session JWT>`` verifies locally; missing,
   malformed or invalid is a 401 with the gateway's JSON error and the
   edge's ``WWW-Authenticate: Bearer …resource_metadata="…"`` challenge.
2. The method is POST: a stateless server has no SSE stream to offer on GET
   and no MCP session to DELETE (405, as the transport spec allows).
3. The body: at most ``max_body_bytes`` (413), within ``edge.body_timeout``
   (408), nested at most ``edge.max_json_depth`` (400 ``invalid_json``).
4. A fair share of the session and tenant (``fairness``; 429/503 with
   ``Retry-After``), held until the response is sent.
5. The session is still active in the registry: an ended session gets 401
   ``session_ended`` on every method, ``initialize`` and ``tools/list``
   included, not only on ``tools/call``.

A gateway error in ``tools/call`` is a tool result with ``isError`` and the
gateway's ``{"error": {"code", "message"}}`` (the message is written by us,
never a backend's text); anything unexpected becomes ``internal_error``,
logged by type only (``app.error_response``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message, Receive, Scope, Send

from clawql_secrets import __version__
from clawql_secrets.gateway import openapi
from clawql_secrets.gateway.app import Edge, _parse_bearer, check_json, error_response
from clawql_secrets.gateway.errors import RequestRejected, TokenRejected
from clawql_secrets.gateway.jwt_check import SessionClaims
from clawql_secrets.gateway.registry import ACTIVE

Context = ServerRequestContext[dict[str, Any], Any]
# Where the edge leaves the verified claims for the handlers (the SDK hands them a
# ``Request`` over the same scope).
_CLAIMS = "clawql.claims"


class MCPEndpoint:
    """The ASGI app for ``/mcp``; ``running()`` must be entered by the app's lifespan."""

    def __init__(self, edge: Edge) -> None:
        self._edge = edge
        self._gw = gw = edge.gw
        self._schemas = {name: openapi.args_schema(tool) for name, tool in gw.tools.items()}
        self._tools = [
            types.Tool(
                name=name,
                description=f"call {name} with the session's credentials",
                input_schema=schema,
            )
            for name, schema in sorted(self._schemas.items())
        ]
        server: Server[dict[str, Any]] = Server(
            "clawql-secrets-gateway",
            version=__version__,
            get_tool_input_schema=self._schemas.get,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
        )
        self._manager = StreamableHTTPSessionManager(
            server,
            json_response=True,
            stateless=True,
            max_request_body_size=gw.config.max_body_bytes,
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self._manager.run():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        edge = self._edge
        try:
            headers = Headers(scope=scope)
            _, claims = edge.verify(headers.get("authorization", ""), scope)  # step 1
            if scope["method"] != "POST":  # step 2
                # GET would open an SSE stream that a stateless server never uses: it
                # would only hold a connection. DELETE ends MCP sessions: there are none.
                raise RequestRejected("method_not_allowed", "use POST for MCP", status=405)
            body = await edge.body(receive, headers.get("content-length"))  # step 3
            check_json(b"".join(m.get("body", b"") for m in body), edge.limits.max_json_depth)
            started = await edge.share.acquire(claims.sid, claims.tenant)  # step 4
        except ClientDisconnect:
            return
        except Exception as exc:
            await self._refusal(exc)(scope, receive, send)
            return
        try:
            try:
                await self._check_active(claims)  # step 5
            except Exception as exc:
                await self._refusal(exc)(scope, receive, send)
                return
            scope[_CLAIMS] = claims
            await self._manager.handle_request(scope, _replay(body, receive), send)
        finally:
            edge.share.release(claims.sid, claims.tenant, started)

    async def _check_active(self, claims: SessionClaims) -> None:
        rec = await anyio.to_thread.run_sync(
            self._gw.registry.get, claims.sid, limiter=self._edge.share.threads
        )
        # No record yet: a session whose first call this is (``open`` creates it).
        if rec is not None and rec.state != ACTIVE:
            raise TokenRejected("session_ended", "this session has ended")

    def _refusal(self, exc: BaseException) -> Any:
        response = self._edge.refuse(exc)
        if response.status_code == 405:
            response.headers["Allow"] = "POST"
        return response

    def _claims(self, ctx: Context) -> SessionClaims:
        """The claims the edge verified for this request (verified again if absent)."""
        request = ctx.request
        if isinstance(request, Request):
            claims = request.scope.get(_CLAIMS)
            if isinstance(claims, SessionClaims):
                return claims
        return self._gw.verify_session(_bearer_of(request))

    async def _list_tools(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        allowed = set(self._gw.tools_for(self._claims(ctx).agent_role))
        return types.ListToolsResult(tools=[t for t in self._tools if t.name in allowed])

    async def _call_tool(
        self, ctx: Context, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        try:
            bearer = _bearer_of(ctx.request)
            result = await anyio.to_thread.run_sync(
                self._gw.call_tool,
                bearer,
                params.name,
                params.arguments or {},
                limiter=self._edge.share.threads,
            )
            text = json.dumps(result, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except Exception as exc:
            return _error_result(exc)
        return types.CallToolResult(
            content=[types.TextContent(text=text)], structured_content=result
        )


def _bearer_of(request: object) -> str:
    """The request's bearer, read again from the HTTP request the SDK hands the handler."""
    value = request.headers.get("authorization", "") if isinstance(request, Request) else ""
    return _parse_bearer(value)


def _error_result(exc: BaseException) -> types.CallToolResult:
    response = error_response(exc)
    text = bytes(response.body).decode()
    return types.CallToolResult(
        content=[types.TextContent(text=text)], structured_content=json.loads(text), is_error=True
    )


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
