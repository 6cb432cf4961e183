"""``redis.command``: one Redis command as the session's own dynamic ACL user.

The user comes from ``<mount>/creds/<template>`` (OpenBao's
redis-database-plugin) read with the agent's per-call token; its ACL rules
(key patterns, command categories) are OpenBao's role, confined to the
tenant's keys. The gateway adds a command allow-list per agent role on top, so
an agent cannot reach ``AUTH``, ``ACL``, ``CONFIG``, ``MULTI``, scripting or
pub/sub even if the role is too broad. The first call of a session on a
replica creates the user and a connection pool, kept as a session resource;
ending the session revokes the lease, which deletes the user and kills its
connections.

Validate first, touch secrets after: the argument count, the command name (an
ASCII word on the allow-list; the upper-cased name that was checked is the one
sent), each argument (a string UTF-8 can encode, an integer or a finite
number), the total size and the instance are all checked before the session's
credential is read. The session user's password is redacted from replies and
error messages in every form ``reflect`` knows, in case Redis ever echoes it.
"""

from __future__ import annotations

import base64
import json
import math
import re
from typing import Any

import redis
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)

from clawql_secrets.errors import ConfigError
from clawql_secrets.gateway.config import GatewayConfig
from clawql_secrets.gateway.errors import AccessDenied, BackendUnavailable, RequestRejected
from clawql_secrets.gateway.tools import ToolContext, read_credential, tool_settings
from clawql_secrets.gateway.tools.reflect import MIN_SECRET_BYTES, Redactor

NAME = "redis.command"
DEFAULT_COMMANDS = [
    "GET",
    "MGET",
    "SET",
    "SETEX",
    "PSETEX",
    "SETNX",
    "GETSET",
    "GETDEL",
    "APPEND",
    "STRLEN",
    "INCR",
    "INCRBY",
    "DECR",
    "DECRBY",
    "DEL",
    "UNLINK",
    "EXISTS",
    "EXPIRE",
    "PEXPIRE",
    "TTL",
    "PTTL",
    "PERSIST",
    "TYPE",
    "HGET",
    "HSET",
    "HDEL",
    "HGETALL",
    "HMGET",
    "HKEYS",
    "HVALS",
    "HLEN",
    "HEXISTS",
    "HINCRBY",
    "LPUSH",
    "RPUSH",
    "LPOP",
    "RPOP",
    "LRANGE",
    "LLEN",
    "LINDEX",
    "LTRIM",
    "SADD",
    "SREM",
    "SMEMBERS",
    "SISMEMBER",
    "SCARD",
    "ZADD",
    "ZREM",
    "ZRANGE",
    "ZRANGEBYSCORE",
    "ZSCORE",
    "ZCARD",
    "ZINCRBY",
    "PING",
]
# Never allowed, whatever the config says: they change the connection's identity
# or state, or run arbitrary code.
_FORBIDDEN = frozenset(
    [
        "AUTH",
        "HELLO",
        "ACL",
        "CONFIG",
        "CLIENT",
        "SELECT",
        "MULTI",
        "EXEC",
        "WATCH",
        "SUBSCRIBE",
        "PSUBSCRIBE",
        "SSUBSCRIBE",
        "MONITOR",
        "EVAL",
        "EVALSHA",
        "EVAL_RO",
        "EVALSHA_RO",
        "FCALL",
        "FCALL_RO",
        "FUNCTION",
        "SCRIPT",
        "MODULE",
        "DEBUG",
        "SHUTDOWN",
        "REPLICAOF",
        "SLAVEOF",
        "SYNC",
        "PSYNC",
        "MIGRATE",
        "RESET",
        "QUIT",
        "FLUSHALL",
        "FLUSHDB",
        "KEYS",
    ]
)


_VERB_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_INSTANCE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RedisTarget(_Strict):
    host: str
    port: int = 6379
    db: int = Field(default=0, ge=0, le=15)
    mount: str = "database"
    creds_role_template: str = "redis-{agent_role}-{tenant}"
    pool_size: int = Field(default=2, ge=1, le=16)
    timeout: float = Field(default=5.0, gt=0, le=60)
    tls: bool = False


class RedisSettings(_Strict):
    instances: dict[str, RedisTarget] = {}
    commands: dict[str, list[str]] = {}  # per agent role; DEFAULT_COMMANDS otherwise
    max_args: int = Field(default=64, ge=1, le=10_000)
    max_arg_bytes: int = Field(default=65_536, ge=16, le=16_000_000)
    max_reply_bytes: int = Field(default=1_000_000, ge=1024, le=64_000_000)


Arg = StrictStr | StrictInt | StrictFloat


class RedisArgs(_Strict):
    command: list[Arg] = Field(min_length=1, max_length=10_000)
    instance: str = Field(default="default", min_length=1, max_length=64)

    @field_validator("command")
    @classmethod
    def _encodable(cls, command: list[Arg]) -> list[Arg]:
        for a in command:
            if isinstance(a, float) and not math.isfinite(a):
                raise ValueError("numbers must be finite")
            if isinstance(a, int) and not -(2**63) <= a < 2**64:
                raise ValueError("integers must fit in 64 bits")
            if isinstance(a, str) and not a.isascii():
                try:
                    a.encode()
                except UnicodeEncodeError:
                    raise ValueError("arguments must be text that UTF-8 can encode") from None
        return command


class RedisSession:
    """One session's client (a small pool of its dynamic user's connections)."""

    def __init__(
        self, pool: redis.BlockingConnectionPool, user: str, redactor: Redactor | None = None
    ) -> None:
        self.pool = pool
        self.user = user
        self.redactor = redactor or Redactor([])

    def execute(self, parts: list[str]) -> Any:
        """The raw reply (no client-side reply callbacks: ``SET`` answers ``OK``)."""
        conn = self.pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            conn.send_command(*parts)
            return conn.read_response()
        except redis.exceptions.ResponseError:
            raise  # an error reply: the connection is in step
        except redis.exceptions.RedisError:
            conn.disconnect()
            raise
        finally:
            self.pool.release(conn)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self.pool.disconnect()


def _jsonable(value: Any, redactor: Redactor | None = None) -> Any:
    r = redactor or _NO_REDACTION
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return r.redact_text(value)
    if isinstance(value, bytes):
        value = r.redact(value)
        try:
            return value.decode()
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v, r) for v in value]
    if isinstance(value, dict):
        return {str(_jsonable(k, r)): _jsonable(v, r) for k, v in value.items()}
    return r.redact_text(str(value))


_NO_REDACTION = Redactor([])


class RedisCommandTool:
    name = NAME
    args_model = RedisArgs

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        for role, cmds in settings.commands.items():
            bad = sorted({c.upper() for c in cmds} & _FORBIDDEN)
            if bad:
                raise ConfigError(
                    f"tools.{NAME}.commands.{role} allows forbidden commands: {', '.join(bad)}"
                )

    def _allowed(self, agent_role: str) -> frozenset[str]:
        cmds = self.settings.commands.get(agent_role, DEFAULT_COMMANDS)
        return frozenset(c.upper() for c in cmds) - _FORBIDDEN

    def run(self, ctx: ToolContext, args: RedisArgs) -> dict[str, Any]:
        s = self.settings
        # 1. Every argument, before the session's credential is read.
        if len(args.command) > s.max_args:
            raise RequestRejected("too_many_args", f"more than {s.max_args} arguments")
        first = args.command[0]
        verb = first.upper() if isinstance(first, str) and _VERB_RE.fullmatch(first) else None
        if verb is None or verb not in self._allowed(ctx.claims.agent_role):
            shown = str(first)[:32] if verb is None else verb
            raise AccessDenied("command_not_allowed", f"{shown!r} is not an allowed command")
        parts = [verb, *(str(a) for a in args.command[1:])]
        if sum(len(p.encode()) for p in parts) > s.max_arg_bytes:
            raise RequestRejected(
                "command_too_large", f"the command exceeds {s.max_arg_bytes} bytes", status=413
            )
        target = s.instances.get(args.instance) if _INSTANCE_RE.fullmatch(args.instance) else None
        if target is None:
            raise RequestRejected(
                "unknown_instance", f"no Redis instance named {args.instance[:64]!r}", status=404
            )
        # 2. The session's user, then the command.
        sess = ctx.resource(f"redis:{args.instance}", lambda: self._open(ctx, target))
        try:
            reply = sess.execute(parts)
        except redis.exceptions.NoPermissionError:
            raise AccessDenied(
                "redis_permission_denied", "Redis refused this command or key for the session"
            ) from None
        except redis.exceptions.ResponseError as exc:
            msg = sess.redactor.redact_text(str(exc).replace(sess.user, "<session user>"))
            raise RequestRejected(
                "redis_error", f"Redis rejected the command: {msg[:300]}", status=422
            ) from None
        except redis.exceptions.RedisError:
            raise BackendUnavailable(
                "redis_unavailable", "the Redis connection failed or was closed"
            ) from None
        result = _jsonable(reply, sess.redactor)
        size = len(json.dumps(result))
        if size > s.max_reply_bytes:
            raise RequestRejected(
                "reply_too_large", f"the reply exceeds {s.max_reply_bytes} bytes", status=422
            )
        return {"reply": result}

    def _open(self, ctx: ToolContext, target: RedisTarget) -> RedisSession:
        user, password = read_credential(ctx, target.mount, target.creds_role_template, "Redis")
        pool = redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]
            connection_class=redis.SSLConnection if target.tls else redis.Connection,
            max_connections=target.pool_size,
            timeout=target.timeout,
            host=target.host,
            port=target.port,
            db=target.db,
            username=user,
            password=password,
            socket_timeout=target.timeout,
            socket_connect_timeout=target.timeout,
        )
        try:
            # Connect and AUTH now (fail here, not on the agent's next call); no PING:
            # the session user may lack @connection commands.
            conn = pool.get_connection()  # type: ignore[no-untyped-call]
            pool.release(conn)  # type: ignore[no-untyped-call]
        except redis.exceptions.RedisError:
            pool.disconnect()
            raise BackendUnavailable(
                "redis_unavailable", "cannot connect to Redis as the session user"
            ) from None
        secret = password.encode()
        return RedisSession(
            pool, user, Redactor([secret] if len(secret) >= MIN_SECRET_BYTES else [])
        )


def factory(config: GatewayConfig) -> RedisCommandTool:
    return RedisCommandTool(tool_settings(config, NAME, RedisSettings))
