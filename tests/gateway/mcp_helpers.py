"""MCP helpers shared by the unit, auth and live MCP tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from mcp.shared.exceptions import MCPError


@contextlib.contextmanager
def refused() -> Iterator[None]:
    """The SDK client fails with an ``MCPError`` (possibly inside its task groups'
    exception groups, when the refusal comes while the client is entered)."""

    def mcp_error(exc: BaseException) -> bool:
        if isinstance(exc, BaseExceptionGroup):
            return all(mcp_error(e) for e in exc.exceptions)
        return isinstance(exc, MCPError)

    try:
        yield
    except BaseException as exc:
        if not mcp_error(exc):
            raise
        return
    raise AssertionError("the SDK client was not refused")


def rpc(method: str, params: dict[str, Any] | None = None, rid: int | None = 1) -> dict[str, Any]:
    """A JSON-RPC request (a notification when ``rid`` is None)."""
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if rid is not None:
        msg["id"] = rid
    if params is not None:
        msg["params"] = params
    return msg
