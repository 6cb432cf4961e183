"""The gateway's tools over MCP (Model Context Protocol), streamable HTTP at ``/mcp``.

The same exchange as ``POST /v1/tools/{tool}``, spoken as MCP: ``tools/list``
answers the installed tools with the JSON Schemas of their arguments (the ones
in ``/openapi.json``); ``tools/call`` runs ``Gateway.call_tool`` with the
request's session JWT in a worker thread (per-call OpenBao login, anomaly
rules, the token dropped when the call returns).

Stateless: the SDK's session manager serves every HTTP request on its own,
with no ``Mcp-Session-Id`` and no server-side MCP state, so any replica can
serve any request, as with the REST API. Responses are JSON, not SSE.

Before the SDK sees a request this module checks, in order:

1. ``Authorization: Bearer <session JWT>`` verifies locally
   (``Gateway.verify_session``); missing, malformed or invalid is a 401 with
   the gateway's JSON error and ``WWW-Authenticate: Bearer``, as MCP
   authorization expects. Whether the session is still active is the
   registry's answer inside ``call_tool``, as for the REST API.
2. The method is POST: a stateless server has no SSE stream to offer on GET
   and no MCP session to DELETE (405, as the transport spec allows).
3. The body is at most ``max_body_bytes`` (413 ``body_too_large``).

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
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from clawql_secrets import __version__
from clawql_secrets.errors import AuthenticationError
from clawql_secrets.gateway import openapi
from clawql_secrets.gateway.app import _parse_bearer, error_response, read_body
from clawql_secrets.gateway.core import Gateway
from clawql_secrets.gateway.errors import RequestRejected, TokenMalformed

Context = ServerRequestContext[dict[str, Any], Any]


class MCPEndpoint:
    """The ASGI app for ``/mcp``; ``running()`` must be entered by the app's lifespan."""

    def __init__(self, gw: Gateway) -> None:
        self._gw = gw
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
        try:
            headers = Headers(scope=scope)
            self._gw.verify_session(_parse_bearer(headers.get("authorization", "")))  # step 1
            if scope["method"] != "POST":  # step 2
                # GET would open an SSE stream that a stateless server never uses: it
                # would only hold a connection. DELETE ends MCP sessions: there are none.
                raise RequestRejected("method_not_allowed", "use POST for MCP", status=405)
            body = await read_body(receive, headers.get("content-length"), self._limit)  # step 3
        except ClientDisconnect:
            return
        except Exception as exc:
            await _refusal(exc)(scope, receive, send)
            return
        await self._manager.handle_request(scope, _replay(body, receive), send)

    @property
    def _limit(self) -> int:
        return self._gw.config.max_body_bytes

    async def _list_tools(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=list(self._tools))

    async def _call_tool(
        self, ctx: Context, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        try:
            bearer = _bearer_of(ctx.request)
            result = await anyio.to_thread.run_sync(
                self._gw.call_tool, bearer, params.name, params.arguments or {}
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


def _refusal(exc: BaseException) -> Response:
    """The gateway's error response; any authentication failure is a 401 here."""
    response = error_response(exc)
    if isinstance(exc, TokenMalformed | AuthenticationError):
        response.status_code = 401
        response.headers["WWW-Authenticate"] = "Bearer"
    elif response.status_code == 405:
        response.headers["Allow"] = "POST"
    return response


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
