"""The ASGI app: HTTP in front of ``core.Gateway``.

Every response is JSON; errors are ``{"error": {"code", "message"}}`` with a
stable code. Nothing raised below reaches the client as a traceback: coded
errors map to their status, the project's errors to a generic code by fault,
anything else to ``internal_error`` (logged by type only).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from clawql_secrets.errors import (
    AuthenticationError,
    BackendError,
    ClawQLError,
    ConfigError,
    InputError,
    SecurityError,
)
from clawql_secrets.gateway import openapi
from clawql_secrets.gateway.core import Gateway
from clawql_secrets.gateway.errors import AccessDenied, RequestRejected, TokenMalformed

log = logging.getLogger("clawql_secrets.gateway")
Endpoint = Callable[[Request], Awaitable[Response]]


def error_response(exc: BaseException) -> JSONResponse:
    code, status, message = "internal_error", 500, "internal error"
    if isinstance(exc, ClawQLError):
        code_attr = getattr(exc, "code", None)
        status_attr = getattr(exc, "status", None)
        if isinstance(code_attr, str) and isinstance(status_attr, int):
            code, status, message = code_attr, status_attr, exc.message
        elif isinstance(exc, InputError):
            code, status, message = "bad_request", 400, exc.message
        elif isinstance(exc, AuthenticationError):
            code, status, message = "unauthenticated", 401, "authentication failed"
        elif isinstance(exc, SecurityError):
            code, status, message = "forbidden", 403, "forbidden"
        elif isinstance(exc, ConfigError):
            code, status, message = "misconfigured", 500, "the gateway is misconfigured"
        elif isinstance(exc, BackendError):
            code, status, message = "backend_unavailable", 503, "a backend is unavailable"
    else:
        log.error("unexpected error %s", type(exc).__name__)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


def _guard(fn: Endpoint) -> Endpoint:
    async def wrapped(request: Request) -> Response:
        try:
            return await fn(request)
        except Exception as exc:
            return error_response(exc)

    return wrapped


def _bearer(request: Request) -> str:
    return _parse_bearer(request.headers.get("authorization", ""))


def _parse_bearer(value: str) -> str:
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenMalformed("missing_bearer", "send 'Authorization: Bearer <session JWT>'")
    return token.strip()


def _too_large(limit: int) -> RequestRejected:
    return RequestRejected("body_too_large", f"the body exceeds {limit} bytes", status=413)


def _check_declared(declared: str | None, limit: int) -> None:
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise _too_large(limit)


async def _json_body(request: Request, limit: int) -> Any:
    _check_declared(request.headers.get("content-length"), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return _parse_json(b"".join(chunks))


def _parse_json(raw: bytes) -> Any:
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise RequestRejected("invalid_json", "the body is not JSON") from None


async def read_body(receive: Receive, declared: str | None, limit: int) -> list[Message]:
    """The request's ``http.request`` messages up to the end of its body, refused past
    ``limit`` bytes (declared or received); a disconnect raises ``ClientDisconnect``."""
    _check_declared(declared, limit)
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        if message["type"] != "http.request":
            continue
        size += len(message.get("body", b""))
        if size > limit:
            raise _too_large(limit)
        messages.append(message)
        if not message.get("more_body", False):
            return messages


_TOOLS_PREFIX = "/v1/tools/"


class GatewayApp(Starlette):
    """Starlette, plus a direct path for ``POST /v1/tools/{tool}``, the hot endpoint.

    The direct path does what the routed ``call_tool`` endpoint does (same
    bearer and body checks, same JSON and error responses) without the
    middleware stack, the router and ``Request`` objects. Anything that is not
    exactly ``POST /v1/tools/<one segment>`` goes through Starlette.
    """

    def __init__(self, gw: Gateway, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._gw = gw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            path: str = scope["path"]
            if path.startswith(_TOOLS_PREFIX):
                tool = path[len(_TOOLS_PREFIX) :]
                if tool and "/" not in tool:
                    try:
                        response = await self._call_tool(scope, receive, tool)
                    except Exception as exc:
                        response = error_response(exc)
                    await response(scope, receive, send)
                    return
        await super().__call__(scope, receive, send)

    async def _call_tool(self, scope: Scope, receive: Receive, tool: str) -> Response:
        authorization, declared = "", None
        seen_auth = seen_len = False
        for name, value in scope["headers"]:
            if name == b"authorization" and not seen_auth:
                authorization, seen_auth = value.decode("latin-1"), True
            elif name == b"content-length" and not seen_len:
                declared, seen_len = value.decode("latin-1"), True
        bearer = _parse_bearer(authorization)
        messages = await read_body(receive, declared, self._gw.config.max_body_bytes)
        body = _parse_json(b"".join(m.get("body", b"") for m in messages))
        result = await anyio.to_thread.run_sync(self._gw.call_tool, bearer, tool, body)
        return JSONResponse({"result": result})


def build_app(gw: Gateway, *, sweeper: bool = True) -> Starlette:
    from clawql_secrets.gateway.mcp import MCPEndpoint  # it imports this module's error mapping

    cfg = gw.config
    mcp = MCPEndpoint(gw)

    async def call_tool(request: Request) -> Response:
        bearer = _bearer(request)
        body = await _json_body(request, cfg.max_body_bytes)
        tool = request.path_params["tool"]
        result = await anyio.to_thread.run_sync(gw.call_tool, bearer, tool, body)
        return JSONResponse({"result": result})

    async def _owner_or_admin(request: Request, *, admin_only: bool) -> int:
        """The session's exp if its own JWT (or 0 for admin) may act on ``sid``."""
        bearer = _bearer(request)
        sid = request.path_params["sid"]
        if gw.is_admin_token(bearer):
            await anyio.to_thread.run_sync(gw.verify_admin, bearer)
            rec = await anyio.to_thread.run_sync(gw.registry.get, sid)
            if rec is None:
                raise RequestRejected("unknown_session", "no such session", status=404)
            return rec.exp
        if admin_only:
            raise AccessDenied("not_admin", "this operation needs the admin identity")
        claims = gw.verify_session(bearer)
        if claims.sid != sid:
            raise AccessDenied("other_session", "a session JWT may act on its own session only")
        return claims.exp

    async def get_session(request: Request) -> Response:
        await _owner_or_admin(request, admin_only=False)
        info = await anyio.to_thread.run_sync(gw.session_info, request.path_params["sid"])
        return JSONResponse(info)

    async def delete_session(request: Request) -> Response:
        exp = await _owner_or_admin(request, admin_only=False)
        sid = request.path_params["sid"]
        out = await anyio.to_thread.run_sync(lambda: gw.end_session(sid, exp=exp, reason="ended"))
        return JSONResponse(out)

    async def revoke_session(request: Request) -> Response:
        exp = await _owner_or_admin(request, admin_only=True)
        sid = request.path_params["sid"]
        out = await anyio.to_thread.run_sync(lambda: gw.end_session(sid, exp=exp, reason="revoked"))
        return JSONResponse(out)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        redis_ok = await anyio.to_thread.run_sync(gw.registry.ping)
        bao_ok = await anyio.to_thread.run_sync(
            lambda: any(gw.bao.health(a) is not None for a in gw.bao.addrs)
        )
        ok = redis_ok and bao_ok
        return JSONResponse(
            {"ready": ok, "registry": redis_ok, "openbao": bao_ok}, 200 if ok else 503
        )

    async def metrics(_: Request) -> Response:
        body = await anyio.to_thread.run_sync(gw.metrics.render)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def schema(_: Request) -> Response:
        return JSONResponse(openapi.schema(gw.tools))

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(RequestRejected("not_found", "no such endpoint", status=404))

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return error_response(
            RequestRejected("method_not_allowed", "method not allowed", status=405)
        )

    async def internal(request: Request, exc: Exception) -> Response:
        return error_response(exc)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with mcp.running(), anyio.create_task_group() as tg:
            if sweeper:
                tg.start_soon(_sweep_loop, gw)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
        await anyio.to_thread.run_sync(gw.close)

    routes = [
        Route("/v1/tools/{tool}", _guard(call_tool), methods=["POST"]),
        Route("/v1/sessions/{sid}", _guard(get_session), methods=["GET"]),
        Route("/v1/sessions/{sid}", _guard(delete_session), methods=["DELETE"]),
        Route("/v1/sessions/{sid}/revoke", _guard(revoke_session), methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", _guard(readyz), methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", schema, methods=["GET"]),
        Route("/mcp", mcp),
    ]
    return GatewayApp(
        gw,
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: method_not_allowed, Exception: internal},
    )


async def _sweep_loop(gw: Gateway) -> None:
    while True:
        await anyio.sleep(gw.config.sweep_interval)
        try:
            await anyio.to_thread.run_sync(gw.sweep)
        except ClawQLError as exc:
            log.warning("sweep failed: %s", type(exc).__name__)
        except Exception as exc:
            log.error("sweep crashed: %s", type(exc).__name__)
