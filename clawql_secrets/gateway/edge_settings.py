"""Limits the gateway's HTTP edge enforces before a request reaches ``core.Gateway``.

Kept apart from ``config`` so the edge (``app``, ``mcp``, ``fairness``) owns them;
``GatewayConfig.edge`` carries one instance. Nothing here imports the app.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class EdgeLimits(BaseModel):
    """Fair shares of the tool-call capacity, and bounds on what a request may send.

    ``per_session`` ≤ ``per_tenant`` ≤ ``total`` concurrent tool calls (REST and
    MCP requests alike). A call over a share waits at most ``slot_wait`` seconds
    for a slot, holding no thread, then gets 429 (``session_busy``,
    ``tenant_busy``) or 503 (``gateway_busy``) with ``Retry-After``. Tool calls
    run on a thread pool of ``total`` threads of their own, so a slot always
    finds a thread and nothing else the gateway does waits behind tool calls.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    per_session: int = Field(default=4, ge=1, le=1024)
    per_tenant: int = Field(default=16, ge=1, le=4096)
    total: int = Field(default=64, ge=1, le=4096)
    # Well below the call's own timeouts (SQL statement timeout: 5 s by default).
    slot_wait: float = Field(default=0.25, ge=0, le=5)
    # The whole request body must arrive within this (a stalled or trickled body: 408).
    body_timeout: float = Field(default=10.0, gt=0, le=300)
    # Nesting of JSON bodies (REST arguments, MCP messages); deeper is 400 invalid_json.
    max_json_depth: int = Field(default=64, ge=4, le=512)
    # Failed authentications per client address in auth_failure_window seconds before
    # that address gets 429 without verifying (0: off).
    auth_failures: int = Field(default=20, ge=0, le=100_000)
    auth_failure_window: float = Field(default=10.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _ordered(self) -> EdgeLimits:
        if not self.per_session <= self.per_tenant <= self.total:
            raise ValueError("need per_session <= per_tenant <= total")
        return self
