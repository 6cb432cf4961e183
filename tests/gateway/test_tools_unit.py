"""The tools without backends: config, allow-lists, refusals, result limits."""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from clawql_secrets.errors import ConfigError
from clawql_secrets.gateway.config import GatewayConfig, MariaDBTarget, PostgresTarget, SQLLimits
from clawql_secrets.gateway.errors import AccessDenied, RequestRejected
from clawql_secrets.gateway.jwt_check import SessionClaims
from clawql_secrets.gateway.tools import aws, http, redis_cmd, reflect, sql
from clawql_secrets.gateway.tools.pool import rows_result


@dataclass
class FakeLease:
    lease_id: str = ""
    lease_duration: int = 0
    data: Mapping[str, Any] = field(default_factory=dict)


class FakeContext:
    def __init__(self, role: str = "analyst") -> None:
        self.claims = SessionClaims("sid1", "acme", "bot", role, "acme/bot", 0, 0, "j")
        self.reads: list[str] = []

    def read_secret(self, path: str) -> FakeLease:
        self.reads.append(path)
        return FakeLease(data={"data": {"value": "s3cr3t-value"}})

    def resource(self, key: str, create: Callable[[], Any]) -> Any:
        raise AssertionError("no backend in unit tests")


def _config(tmp_path: Path, tools: dict[str, Any]) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "openbao": {"addrs": ["https://127.0.0.1:1"], "ca_file": str(tmp_path / "ca.pem")},
            "sessions": {"jwks_file": str(tmp_path / "jwks.json")},
            "identity": {"jwt_file": str(tmp_path / "jwt")},
            "exchange": {"key_file": str(tmp_path / "exchange.key")},
            "registry": {"host": "127.0.0.1", "port": 6380, "ca_file": str(tmp_path / "ca.pem")},
            "tools": tools,
        }
    )


def _http(**roles: Any) -> http.HTTPRequestTool:
    return http.HTTPRequestTool(http.HTTPSettings.model_validate({"roles": roles}))


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://api.example.com/x", True),
        ("https://API.example.com./x", True),
        ("https://api.example.com:8443/x", False),
        ("https://a.svc.example.org/x", True),
        ("https://svc.example.org/x", False),
        ("https://evilsvc.example.org/x", False),
        ("https://api.example.com.evil.net/x", False),
    ],
)
def test_destination_allow_list(url: str, ok: bool) -> None:
    host, port = http._destination(url)
    assert http._allowed(host, port, ["https://api.example.com", "*.svc.example.org"]) is ok


@pytest.mark.parametrize(
    "url", ["http://api.example.com/", "https://u:p@api.example.com/", "https:///x", "https://[::"]
)
def test_bad_urls_rejected(url: str) -> None:
    with pytest.raises(RequestRejected) as e:
        http._destination(url)
    assert e.value.code == "bad_url"


def test_redactor_covers_raw_and_base64() -> None:
    """More forms and the echo server: tests/gateway/test_http_hardening.py."""
    r = reflect.Redactor([b"tok-123456"])
    for shown in (b"tok-123456", b"TOK-123456"):
        assert r.redact(b"<" + shown + b">") == b"<[redacted]>"
    # "Bearer " is no secret: its base64 stays, up to the characters that mix in the token.
    assert r.redact(base64.b64encode(b"Bearer tok-123456")) == b"QmVhcmV[redacted]"
    with pytest.raises(ValueError):
        reflect.Redactor([b"ab"])


def test_http_config_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tools\.http\.request"):
        http.factory(_config(tmp_path, {"http.request": {"roles": {"a": {"allow": []}}}}))
    with pytest.raises(ConfigError, match="bad inject header"):
        _http(a={"allow": ["https://x.example"], "inject_headers": ["Host"]})
    with pytest.raises(ConfigError, match="not https"):
        _http(a={"allow": ["http://x.example"]})


def test_http_refusals_before_any_read() -> None:
    tool = _http(analyst={"allow": ["https://x.example"], "inject_headers": ["X-Key"]})
    ctx = FakeContext()

    def code(args: dict[str, Any], c: FakeContext = ctx) -> str:
        with pytest.raises((AccessDenied, RequestRejected)) as e:
            tool.run(c, http.HTTPArgs.model_validate(args))
        return str(getattr(e.value, "code", ""))

    assert code({"url": "https://x.example/"}, FakeContext("other")) == "http_not_allowed"
    assert code({"url": "https://y.example/"}) == "destination_not_allowed"
    assert code({"url": "https://x.example/", "client_cert": True}) == "client_cert_not_allowed"
    assert code({"url": "https://x.example/", "headers": {"Host": "y"}}) == "bad_header"
    assert code({"url": "https://x.example/", "headers": {"X-A": "a\r\nB: c"}}) == "bad_header"
    inj = {"secret": "k", "header": "Authorization"}
    assert code({"url": "https://x.example/", "inject": inj}) == "inject_header_not_allowed"
    inj = {"secret": "../b/k", "header": "X-Key"}
    assert code({"url": "https://x.example/", "inject": inj}) == "bad_secret_name"
    inj = {"secret": "k", "header": "X-Key", "format": "no value"}
    assert code({"url": "https://x.example/", "inject": inj}) == "bad_inject_format"
    assert ctx.reads == []


def test_redis_allow_list(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="forbidden commands: CONFIG, EVAL"):
        redis_cmd.RedisCommandTool(
            redis_cmd.RedisSettings.model_validate({"commands": {"a": ["get", "config", "eval"]}})
        )
    tool = redis_cmd.factory(
        _config(tmp_path, {"redis.command": {"commands": {"analyst": ["GET"]}, "max_args": 3}})
    )
    ctx = FakeContext()

    def code(cmd: list[Any]) -> str:
        with pytest.raises((AccessDenied, RequestRejected)) as e:
            tool.run(ctx, redis_cmd.RedisArgs.model_validate({"command": cmd}))
        return str(getattr(e.value, "code", ""))

    assert code(["SET", "k", "v"]) == "command_not_allowed"
    assert code(["acl", "whoami"]) == "command_not_allowed"
    assert code(["GET", "a", "b", "c"]) == "too_many_args"
    assert code(["get", "k"]) == "unknown_instance"
    assert redis_cmd._jsonable([b"ok", b"\xff", {b"k": 1}]) == ["ok", {"base64": "/w=="}, {"k": 1}]


def test_aws_config_and_allow_list(tmp_path: Path) -> None:
    arn = "arn:aws:iam::123456789012:role/x-{tenant}"
    for ops, match in (
        (["s3:ListBuckets"], "snake_case"),
        (["sts:get_session_token"], "returns credentials"),
        (["iam:create_access_key"], "returns credentials"),
    ):
        cfg = {"cloud.aws": {"roles": {"a": {"role_arn_template": arn, "operations": ops}}}}
        with pytest.raises(ConfigError, match=match):
            aws.factory(_config(tmp_path, cfg))
    tool = aws.factory(
        _config(
            tmp_path,
            {
                "cloud.aws": {
                    "roles": {
                        "analyst": {"role_arn_template": arn, "operations": ["s3:get_object"]}
                    }
                }
            },
        )
    )

    def code(args: dict[str, Any], role: str = "analyst") -> str:
        with pytest.raises((AccessDenied, RequestRejected)) as e:
            tool.run(FakeContext(role), aws.AWSArgs.model_validate(args))
        return str(getattr(e.value, "code", ""))

    assert code({"service": "s3", "operation": "get_object"}, "other") == "aws_not_allowed"
    assert code({"service": "s3", "operation": "list_buckets"}) == "operation_not_allowed"
    op = {"service": "s3", "operation": "generate_presigned_url"}
    assert code(op) == "operation_not_allowed"


def test_aws_refuses_sdk_helpers_even_if_configured(tmp_path: Path) -> None:
    arn = "arn:aws:iam::123456789012:role/x-{tenant}"
    ops = ["s3:generate_presigned_url"]
    cfg = {"cloud.aws": {"roles": {"analyst": {"role_arn_template": arn, "operations": ops}}}}
    tool = aws.factory(_config(tmp_path, cfg))
    creds = aws._Creds()
    creds.values = {"AccessKeyId": "AKIDX", "SecretAccessKey": "sk", "SessionToken": "st"}
    creds.expires = 4e9

    class CachedCreds(FakeContext):
        def resource(self, key: str, create: Callable[[], Any]) -> Any:
            return creds

    ctx = CachedCreds()
    with pytest.raises(RequestRejected) as e:
        tool.run(ctx, aws.AWSArgs.model_validate({"service": "s3", "operation": ops[0][3:]}))
    assert e.value.code == "unknown_operation"
    assert ctx.reads == []


def test_rows_result_limits_rows_and_bytes() -> None:
    read: list[int] = []

    def raws(n: int) -> Any:
        for i in range(n):
            read.append(i)
            yield (i, "x" * 10)

    r = rows_result(["a", "b"], raws(10), 3, 10_000, lambda v: v)
    assert (r["rows"], r["row_count"], r["truncated"]) == (
        [[0, "x" * 10], [1, "x" * 10], [2, "x" * 10]],
        3,
        True,
    )
    assert read == [0, 1, 2, 3]  # stops at the limit
    r = rows_result(["a", "b"], raws(2), 3, 10_000, lambda v: v)
    assert (r["row_count"], r["truncated"]) == (2, False)
    r = rows_result(["a", "b"], raws(5), 5, 40, lambda v: v)
    assert (r["row_count"], r["truncated"]) == (2, True)  # each row is 17 bytes of JSON


def _sql_tool(**classes: tuple[str, ...]) -> sql.SQLQueryTool:
    return sql.SQLQueryTool(
        {
            "default": PostgresTarget(host="127.0.0.1", dbname="d", statement_classes=classes),
            "maria": MariaDBTarget(kind="mariadb", host="127.0.0.1", dbname="m_{tenant}"),
        },
        SQLLimits(max_sql_bytes=1024),
    )


def test_sql_refusals_before_any_read() -> None:
    """Issue 13: the statement guard runs before a credential is read or a pool made
    (``FakeContext.resource`` fails the test if reached)."""
    tool = _sql_tool()
    ctx = FakeContext()

    def code(args: dict[str, Any]) -> str:
        with pytest.raises((AccessDenied, RequestRejected)) as e:
            tool.run(ctx, sql.SQLArgs.model_validate(args))
        return str(getattr(e.value, "code", ""))

    assert code({"sql": "ALTER ROLE CURRENT_USER PASSWORD 'x'"}) == "sql_role_refused"
    assert code({"sql": "SELECT lo_create(0)"}) == "sql_function_refused"
    assert code({"sql": "SET statement_timeout = 0"}) == "sql_session_refused"
    assert code({"sql": "DELETE FROM items"}) == "sql_write_refused"
    assert code({"sql": "SELECT 1; SELECT 2"}) == "sql_multiple_statements"
    assert code({"sql": "SELEC 1"}) == "sql_unparsable"
    assert code({"sql": "SELECT $1"}) == "sql_params_mismatch"
    assert code({"sql": "SELECT 1" + " " * 1024}) == "sql_too_large"
    assert code({"sql": "SELECT 1", "database": "nope"}) == "unknown_database"
    maria = {"database": "maria"}
    assert code({"sql": "SET PASSWORD = PASSWORD('x')", **maria}) == "sql_role_refused"
    assert code({"sql": "SET STATEMENT max_statement_time=0 FOR SELECT 1", **maria}) == (
        "sql_session_refused"
    )
    assert code({"sql": "SELECT ?", "params": [float("nan")], **maria}) == "sql_bad_param"
    assert ctx.reads == []


def test_sql_text_no_database_can_take_refused() -> None:
    with pytest.raises(ValidationError):
        sql.SQLArgs.model_validate({"sql": "SELECT '\ud800'"})
    ctx = FakeContext()
    with pytest.raises(RequestRejected) as e:
        _sql_tool().run(ctx, sql.SQLArgs(sql="SELECT $1", params=["\udfff"]))
    assert e.value.code == "sql_bad_param" and ctx.reads == []


def test_sql_statement_classes_per_role() -> None:
    tool = _sql_tool(analyst=("read", "write"))
    with pytest.raises(AssertionError, match="no backend"):  # passed the guard
        tool.run(FakeContext(), sql.SQLArgs(sql="DELETE FROM items WHERE id = $1", params=[1]))
    with pytest.raises(AccessDenied) as e:
        tool.run(FakeContext("other"), sql.SQLArgs(sql="DELETE FROM items"))
    assert e.value.code == "sql_write_refused"


@pytest.mark.parametrize("classes", [("read", "role"), ("read", "other"), ("reed",)])
def test_sql_statement_classes_validated_at_start(classes: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError, match=r"databases\.default\.statement_classes\.analyst"):
        _sql_tool(analyst=classes)
