"""The ASGI app: HTTP in front of ``core.Gateway``.

Every response is JSON; errors are ``{"error": {"code", "message"}}`` with a
stable code. Nothing raised below reaches the client as a traceback: coded
errors map to their status, the project's errors to a generic code by fault,
anything else to ``internal_error`` (logged by type only).

What a tool call passes at the edge (``Edge``), REST and MCP alike, in order:

1. The bearer. ``Authorization: Bearer <session JWT>`` verifies locally
   (``Gateway.verify_session``: audience = the gateway's canonical URI, RFC
   8707). Missing, malformed or invalid is 401 with an RFC 6750 challenge
   naming the RFC 9728 metadata (``WWW-Authenticate: Bearer
   [error="invalid_token", ]resource_metadata="…"``), never 400. The bearer
   goes no further than ``core`` (OpenBao sees an exchange assertion).
2. The body. At most ``max_body_bytes`` (413), all of it within
   ``edge.body_timeout`` seconds (408, connection closed: a stalled or
   trickled body holds nothing for long), JSON nested at most
   ``edge.max_json_depth`` deep (400 ``invalid_json``).
3. A fair share (``fairness``): a session, a tenant and a gateway slot, waited
   for briefly with no thread held; 429 / 503 with ``Retry-After`` otherwise.
4. The call, on the tool-call thread limiter (``FairShare.threads``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

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
from clawql_secrets.gateway.fairness import AuthFailures, Busy, FairShare
from clawql_secrets.gateway.jwt_check import SessionClaims

log = logging.getLogger("clawql_secrets.gateway")
Endpoint = Callable[[Request], Awaitable[Response]]

# RFC 9728: where the protected-resource metadata lives (plus the resource's path).
WELL_KNOWN = "/.well-known/oauth-protected-resource"
# What a quoted-string of a challenge may carry as is (RFC 6750 §3: no '"', no '\').
_QUOTABLE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def resource_metadata_url(resource: str) -> str | None:
    """The RFC 9728 metadata URL of ``resource`` (the well-known path goes between the
    host and the resource's path); None if ``resource`` is not an absolute http(s) URL."""
    try:
        parts = urlsplit(resource)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        return None
    url = f"{parts.scheme}://{parts.netloc}{WELL_KNOWN}{parts.path.rstrip('/')}"
    return url if _QUOTABLE.fullmatch(url) else None


@dataclass(frozen=True)
class Challenge:
    """``WWW-Authenticate`` values (RFC 6750 §3, MCP authorization): no ``error`` for a
    request without a bearer, ``invalid_token`` for a bad one, ``insufficient_scope``
    for a tool the session's role may not call; each names the metadata document."""

    missing: str
    invalid_token: str
    insufficient_scope: str

    @classmethod
    def for_metadata(cls, url: str | None) -> Challenge:
        meta = f'resource_metadata="{url}"' if url else ""

        def value(error: str | None) -> str:
            params = [p for p in (f'error="{error}"' if error else "", meta) if p]
            return "Bearer " + ", ".join(params) if params else "Bearer"

        return cls(value(None), value("invalid_token"), value("insufficient_scope"))


PLAIN_CHALLENGE = Challenge.for_metadata(None)


def _classify(exc: BaseException) -> tuple[str, int, str]:
    code, status, message = "internal_error", 500, "internal error"
    if isinstance(exc, ClawQLError):
        code_attr = getattr(exc, "code", None)
        status_attr = getattr(exc, "status", None)
        if isinstance(code_attr, str) and isinstance(status_attr, int):
            code, status, message = code_attr, status_attr, exc.message
            if isinstance(exc, TokenMalformed):
                status = 401  # a bearer that is not a JWT is no credential: RFC 6750 says 401
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
    return code, status, message


def error_response(exc: BaseException, challenge: Challenge = PLAIN_CHALLENGE) -> JSONResponse:
    code, status, message = _classify(exc)
    headers: dict[str, str] = {}
    if status == 401:
        missing = code == "missing_bearer"
        headers["WWW-Authenticate"] = challenge.missing if missing else challenge.invalid_token
    elif code == "tool_not_allowed":
        headers["WWW-Authenticate"] = challenge.insufficient_scope
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, int):
        headers["Retry-After"] = str(retry_after)
    if status == 408:
        headers["Connection"] = "close"  # what is left of the body is not worth waiting for
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


def _parse_bearer(value: str) -> str:
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenMalformed("missing_bearer", "send 'Authorization: Bearer <session JWT>'")
    return token.strip()


def _too_large(limit: int) -> RequestRejected:
    return RequestRejected("body_too_large", f"the body exceeds {limit} bytes", status=413)


def _check_declared(declared: str | None, limit: int) -> None:
    # ASCII digits only: str.isdigit() also says yes to '¹' or '٣', which int() refuses.
    if declared is not None and (
        not (declared.isascii() and declared.isdigit()) or int(declared) > limit
    ):
        raise _too_large(limit)


async def read_body(
    receive: Receive, declared: str | None, limit: int, timeout: float
) -> list[Message]:
    """The request's ``http.request`` messages up to the end of its body, refused past
    ``limit`` bytes (declared or received) or when it has not all arrived within
    ``timeout`` seconds (408); a disconnect raises ``ClientDisconnect``."""
    _check_declared(declared, limit)
    messages: list[Message] = []
    size = 0
    with anyio.move_on_after(timeout):
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
    raise RequestRejected(
        "body_timeout", f"the body did not arrive within {timeout:g} s", status=408
    )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder for every body (``json.loads`` with options builds one per call): strict
# RFC 8259, so no NaN/Infinity, which the tools' JSON answers could not carry back.
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def _deeper_than(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def parse_json(raw: bytes, max_depth: int) -> Any:
    """``raw`` as JSON (empty: ``{}``), nested at most ``max_depth`` deep; otherwise 400
    ``invalid_json``. Deep nesting fails as such, never as a ``RecursionError`` 500."""
    if not raw:
        return {}
    try:
        value = _DECODER.decode(raw.decode())  # UTF-8 only (RFC 8259 §8.1)
    except (ValueError, RecursionError):
        raise RequestRejected("invalid_json", "the body is not JSON") from None
    # Nesting needs brackets: a body with fewer than the limit needs no walk.
    nested = isinstance(value, dict | list) and raw.count(b"[") + raw.count(b"{") > max_depth
    if nested and _deeper_than(value, max_depth):
        raise RequestRejected("invalid_json", f"the body nests deeper than {max_depth}")
    return value


def check_json(raw: bytes, max_depth: int) -> None:
    """``parse_json``'s refusals for a body someone else parses (the MCP SDK): free
    unless the body has more brackets than ``max_depth``."""
    if raw.count(b"[") + raw.count(b"{") > max_depth:
        parse_json(raw, max_depth)


class Edge:
    """The edge's state for one app: the fair shares, the challenge, the limits."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.limits = gw.config.edge
        self.share = FairShare(self.limits)
        self.auth_failures = AuthFailures(
            self.limits.auth_failures, self.limits.auth_failure_window
        )
        s = gw.config.sessions
        self.metadata_url = resource_metadata_url(s.audience)
        self.challenge = Challenge.for_metadata(self.metadata_url)
        if self.metadata_url is None:
            log.warning(
                "sessions.audience %r is not an http(s) URL: 401 challenges name no "
                "resource metadata (set it to the gateway's canonical URI)",
                s.audience,
            )
        # RFC 9728 §2; no scopes: what a session may call is its role's (desired state).
        self.metadata: dict[str, Any] = {
            "resource": s.audience,
            "authorization_servers": [s.issuer],
            "bearer_methods_supported": ["header"],
            "resource_name": "ClawQL Secrets gateway",
        }

    def refuse(self, exc: BaseException) -> JSONResponse:
        return error_response(exc, self.challenge)

    def verify(self, authorization: str, scope: Scope | None = None) -> tuple[str, SessionClaims]:
        """Step 1: the bearer and its verified claims (a cache hit after the first call).

        An address with too many recent failures is refused before any signature
        check (``fairness.AuthFailures``); each failure here counts against it.
        """
        client = scope.get("client") if scope is not None else None
        address = str(client[0]) if client else ""
        bearer = ""
        try:
            bearer = _parse_bearer(authorization)
            try:
                self.auth_failures.check(address)
            except Busy:
                # Over its budget: only a bearer that already verified gets through
                # (no signature check), so a flood of forgeries from an address that
                # agents share does not lock out their live sessions.
                cached = self.gw.cached_session(bearer)
                if cached is None:
                    raise
                return bearer, cached
            return bearer, self.gw.verify_session(bearer)
        except (TokenMalformed, AuthenticationError):
            self.auth_failures.failed(address)
            raise

    async def body(self, receive: Receive, declared: str | None) -> list[Message]:
        """Step 2 (size and time)."""
        return await read_body(
            receive, declared, self.gw.config.max_body_bytes, self.limits.body_timeout
        )

    async def call_tool(self, scope: Scope, receive: Receive, tool: str) -> Response:
        authorization, declared = "", None
        seen_auth = seen_len = False
        for name, value in scope["headers"]:
            if name == b"authorization" and not seen_auth:
                authorization, seen_auth = value.decode("latin-1"), True
            elif name == b"content-length" and not seen_len:
                declared, seen_len = value.decode("latin-1"), True
        bearer, claims = self.verify(authorization, scope)
        messages = await self.body(receive, declared)
        raw = b"".join(m.get("body", b"") for m in messages)
        args = parse_json(raw, self.limits.max_json_depth)
        share = self.share
        started = await share.acquire(claims.sid, claims.tenant)  # step 3
        try:
            result = await anyio.to_thread.run_sync(
                functools.partial(self.gw.call_tool, bearer, tool, args, verified=claims),
                limiter=share.threads,
            )
        finally:
            share.release(claims.sid, claims.tenant, started)
        return JSONResponse({"result": result})


_TOOLS_PREFIX = "/v1/tools/"


class GatewayApp(Starlette):
    """Starlette, plus a direct path for ``POST /v1/tools/{tool}``, the hot endpoint.

    The direct path does what the routed ``call_tool`` endpoint does (the same
    ``Edge.call_tool``) without the middleware stack, the router and
    ``Request`` objects. Anything that is not exactly ``POST /v1/tools/<one
    segment>`` goes through Starlette.
    """

    def __init__(self, edge: Edge, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._edge = edge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            path: str = scope["path"]
            if path.startswith(_TOOLS_PREFIX):
                tool = path[len(_TOOLS_PREFIX) :]
                if tool and "/" not in tool:
                    try:
                        response = await self._edge.call_tool(scope, receive, tool)
                    except ClientDisconnect:
                        return
                    except Exception as exc:
                        response = self._edge.refuse(exc)
                    await response(scope, receive, send)
                    return
        await super().__call__(scope, receive, send)


def build_app(gw: Gateway, *, sweeper: bool = True) -> Starlette:
    from clawql_secrets.gateway.mcp import MCPEndpoint  # it imports this module's edge

    edge = Edge(gw)
    mcp = MCPEndpoint(edge)

    def guard(fn: Endpoint) -> Endpoint:
        async def wrapped(request: Request) -> Response:
            try:
                return await fn(request)
            except ClientDisconnect:
                return Response(status_code=400)  # nobody is left to read it
            except Exception as exc:
                return edge.refuse(exc)

        return wrapped

    def bearer_of(request: Request) -> str:
        return _parse_bearer(request.headers.get("authorization", ""))

    async def call_tool(request: Request) -> Response:
        return await edge.call_tool(request.scope, request.receive, request.path_params["tool"])

    async def _owner_or_admin(request: Request, *, admin_only: bool) -> int:
        """The session's exp if its own JWT (or 0 for admin) may act on ``sid``."""
        bearer = bearer_of(request)
        sid = request.path_params["sid"]
        if gw.is_admin_token(bearer):
            await anyio.to_thread.run_sync(gw.verify_admin, bearer)
            rec = await anyio.to_thread.run_sync(gw.registry.get, sid)
            if rec is None:
                raise RequestRejected("unknown_session", "no such session", status=404)
            return rec.exp
        claims = gw.verify_session(bearer)  # a bad bearer is 401 before any 403
        if admin_only:
            raise AccessDenied("not_admin", "this operation needs the admin identity")
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

    async def protected_resource(_: Request) -> Response:
        return JSONResponse(edge.metadata, headers={"Cache-Control": "max-age=300"})

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
        return edge.refuse(RequestRejected("not_found", "no such endpoint", status=404))

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return edge.refuse(RequestRejected("method_not_allowed", "method not allowed", status=405))

    async def internal(request: Request, exc: Exception) -> Response:
        return edge.refuse(exc)

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

    # The metadata at the root (what the 401 challenge names when the canonical URI has
    # no path), under /mcp (the MCP client's first probe) and under the canonical path.
    metadata_paths = {WELL_KNOWN, WELL_KNOWN + "/mcp"}
    if edge.metadata_url is not None:
        metadata_paths.add(urlsplit(edge.metadata_url).path)
    routes = [
        Route("/v1/tools/{tool}", guard(call_tool), methods=["POST"]),
        Route("/v1/sessions/{sid}", guard(get_session), methods=["GET"]),
        Route("/v1/sessions/{sid}", guard(delete_session), methods=["DELETE"]),
        Route("/v1/sessions/{sid}/revoke", guard(revoke_session), methods=["POST"]),
        *(Route(p, protected_resource, methods=["GET"]) for p in sorted(metadata_paths)),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", guard(readyz), methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", schema, methods=["GET"]),
        Route("/mcp", mcp),
    ]
    return GatewayApp(
        edge,
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
