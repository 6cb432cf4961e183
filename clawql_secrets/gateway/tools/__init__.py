"""Tool plugins: what an agent can call, discovered through entry points.

A plugin is an entry point in the group ``clawql_secrets.tools`` whose name is
the tool name (``sql.query``) and whose object is a factory taking the
``GatewayConfig`` and returning a ``Tool``. A tool receives parsed arguments
and a ``ToolContext``; it never sees an OpenBao token: it asks the context to
read an OpenBao path with the agent's per-call token, and to keep per-session
resources (a database pool) that are closed when the session ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from clawql_secrets.errors import ConfigError
from clawql_secrets.gateway.config import GatewayConfig
from clawql_secrets.gateway.errors import BackendUnavailable
from clawql_secrets.gateway.jwt_check import SessionClaims

GROUP = "clawql_secrets.tools"
R = TypeVar("R", bound="Resource")
M = TypeVar("M", bound=BaseModel)


class Resource(Protocol):
    """Something a session keeps between calls on one replica (e.g. a pool)."""

    def close(self) -> None: ...


class Lease(Protocol):
    @property
    def lease_id(self) -> str: ...
    @property
    def lease_duration(self) -> int: ...
    @property
    def data(self) -> Mapping[str, Any]: ...


class ToolContext(Protocol):
    claims: SessionClaims

    def read_secret(self, path: str) -> Lease:
        """Read ``path`` with the agent's token; a lease is recorded in the registry."""
        ...

    def resource(self, key: str, create: Callable[[], R]) -> R:
        """The session's resource ``key`` on this replica, created once by ``create``."""
        ...


class WritableToolContext(ToolContext, Protocol):
    """A context that can also write (``pki_int/issue/...``) with the agent's token.

    The response is handled like ``read_secret``'s: a lease, if any, is recorded.
    """

    def write_secret(self, path: str, body: Mapping[str, Any]) -> Lease: ...


def tool_settings(config: GatewayConfig, name: str, model: type[M]) -> M:
    """The ``tools.<name>`` section of the gateway config, validated by ``model``."""
    try:
        return model.model_validate(config.tools.get(name, {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigError(
            f"gateway config tools.{name} is invalid at {where}: {first['msg']}",
            fix="see docs: gateway configuration",
        ) from None


def read_credential(ctx: ToolContext, mount: str, role_template: str, what: str) -> tuple[str, str]:
    """``(username, password)`` from ``<mount>/creds/<role>``, read with the agent's token.

    ``role_template`` may use ``{agent_role}`` and ``{tenant}`` (from the verified claims).
    """
    c = ctx.claims
    role = role_template.format(agent_role=c.agent_role, tenant=c.tenant)
    lease = ctx.read_secret(f"{mount}/creds/{role}")
    user = str(lease.data.get("username", ""))
    password = str(lease.data.get("password", ""))
    if not user or not password:
        raise BackendUnavailable("openbao_error", f"OpenBao returned no {what} credential")
    return user, password


def quiet_loggers(*names: str) -> None:
    """Raise ``names`` (and so their children) to INFO if they would log DEBUG."""
    for name in names:
        lg = logging.getLogger(name)
        if lg.getEffectiveLevel() < logging.INFO:
            lg.setLevel(logging.INFO)


class Tool(Protocol):
    name: str
    args_model: type[BaseModel]

    def run(self, ctx: ToolContext, args: Any) -> dict[str, Any]: ...


ToolFactory = Callable[[GatewayConfig], Tool]


def load_tools(config: GatewayConfig) -> dict[str, Tool]:
    """Every installed tool plugin, by name."""
    tools: dict[str, Tool] = {}
    for ep in entry_points(group=GROUP):
        try:
            factory: ToolFactory = ep.load()
            tool = factory(config)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"tool plugin {ep.name!r} ({ep.value}) failed to load ({type(exc).__name__})",
                fix="reinstall the package that provides it, or uninstall it",
            ) from exc
        if tool.name != ep.name:
            raise ConfigError(f"tool plugin {ep.name!r} calls itself {tool.name!r}")
        tools[ep.name] = tool
    return tools
