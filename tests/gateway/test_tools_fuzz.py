"""Fuzzing each tool's arguments (issue 13: "validate first, touch secrets after").

For ``http.request``, ``redis.command`` and ``cloud.aws``: whatever the agent
sends, the tool returns a result or raises one of the coded errors with a status
below 500 (``invalid_arguments`` when the argument model refuses it), never an
uncaught exception; a refusal of the agent's input comes before any secret is
read, certificate issued or session resource opened; and a result never holds
the injected secret in any form. Backends are real where it is cheap: a local
HTTPS echo server (``test_http_hardening``) and a moto server for AWS; Redis is
a recording fake session (the dynamic-user dance needs OpenBao, see the live
tests). Example counts are small and derandomized: each test takes seconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from clawql_secrets.gateway.errors import AccessDenied, BackendUnavailable, RequestRejected
from clawql_secrets.gateway.tools import aws, http, redis_cmd, reflect
from tests.gateway.test_http_hardening import (
    INJECT,
    SECRET,
    Echo,
    Lease,
    RecordingContext,
    echo,  # noqa: F401  (the fixture)
    leaks,
)

Coded = RequestRejected | AccessDenied | BackendUnavailable
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Refusals that judge what a backend holds or says, so they follow the read.
AFTER_READ = {
    "secret_field_missing",
    "secret_not_a_header",
    "secret_too_short",
    "redis_error",
    "redis_permission_denied",
    "aws_error",
    "aws_denied",
    "result_too_large",
}


def outcome(
    model: type[Any], run: Callable[[Any], dict[str, Any]], args: Any, touched: Callable[[], bool]
) -> dict[str, Any] | None:
    """Run one call as the gateway core does; assert the fuzz invariants."""
    try:
        parsed = model.model_validate(args)
    except ValidationError as exc:
        event(f"422 invalid_arguments at {exc.errors()[0]['loc'][:1]}")
        assert not touched()
        return None
    try:
        result = run(parsed)
    except (RequestRejected, AccessDenied, BackendUnavailable) as exc:
        event(f"{exc.status} {exc.code}")
        assert exc.status < 500, (exc.code, exc.message)
        if exc.code not in AFTER_READ:
            assert not touched(), exc.code
        return None
    event("ok")
    return result


def _mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``common`` nine times in ten (``one_of`` would split evenly)."""
    return st.integers(0, 9).flatmap(lambda i: rare if i == 9 else common)


# -- http.request --------------------------------------------------------------------------
_JUNK = st.text(max_size=12) | st.sampled_from(
    ["\t", "\r\n", " ", "\0", "é", "\\", "%", "%zz", "#", "?", "@", "[", "]", "\ud800", ".."]
)
_HEADER_NAMES = _mostly(
    st.sampled_from(["Accept", "User-Agent", "Content-Type", "X-Custom", "If-None-Match"]),
    st.sampled_from(
        [
            "X-Api-Key",
            "Range",
            "If-Range",
            "Accept-Encoding",
            "TE",
            "Host",
            "Content-Length",
            "Accept-Charset",
            "bad name",
            "bad:name",
            "é",
            "",
        ]
    )
    | st.text(max_size=8),
)
_HEADER_VALUES = _mostly(
    st.text("abcXYZ019 -_/=;,*", max_size=12).map(str.strip),
    st.sampled_from(["bytes=0-3", "gzip, br", "a\r\nB: c", "café", " lead", "a\tb", "\0"])
    | st.text(max_size=12),
)


def _url(base: str) -> st.SearchStrategy[str]:
    path = st.lists(
        _mostly(st.sampled_from(list("abc/._~-%20?=&+!$'()*,;:@")), _JUNK), max_size=6
    ).map("".join)
    return _mostly(
        path.map(lambda p: f"{base}/{p}")
        | st.sampled_from(
            [
                f"{base}/?form=b64_1&where=both",
                f"{base}/?form=url&ce=gzip",
                f"{base}/?form=hex&chunk=3",
                f"{base}/?form=json_u&where=both&reason=1",
            ]
        ),
        st.sampled_from(
            [
                "https://evil.example/",
                f"http{base[5:]}/",
                f"https://u:p@{base[8:]}/",
                "https://127.1/",
                f"{base}/?ce=br",
            ]
        )
        | st.text(max_size=30),
    )


def _inject() -> st.SearchStrategy[Any]:
    valid = st.fixed_dictionaries(
        {"secret": st.just("api-key"), "header": st.sampled_from(["X-Api-Key", "x-api-key"])},
        optional={
            "field": _mostly(st.just("value"), st.sampled_from(["missing", "short", "crlf", "n"])),
            "format": _mostly(
                st.sampled_from(["{value}", "Bearer {value}", "k={value};"]),
                st.sampled_from(["{value}{value}", "none", "é {value}", "{value}\r\n"]) | _JUNK,
            ),
        },
    )
    junk = st.fixed_dictionaries(
        {
            "secret": st.sampled_from(["api-key", "../x/api-key", "a/b", ""]) | _JUNK,
            "header": st.sampled_from(["X-Api-Key", "Authorization", "X Api"]) | _JUNK,
        },
        optional={"field": _JUNK, "format": _JUNK},
    )
    return st.none() | _mostly(valid, junk)


@FUZZ
@given(data=st.data())
def test_http_request_fuzz(echo: Echo, data: st.DataObject) -> None:  # noqa: F811
    args: dict[str, Any] = {
        "url": data.draw(_url(echo.server.base), "url"),
        "method": data.draw(
            _mostly(st.sampled_from(["GET", "POST", "HEAD", "PUT"]), st.sampled_from(["get", "X"]))
        ),
        "headers": data.draw(st.dictionaries(_HEADER_NAMES, _HEADER_VALUES, max_size=4)),
        "client_cert": data.draw(st.booleans()),
        "inject": data.draw(_inject()),
        "body": data.draw(
            st.none() | _mostly(st.text(max_size=40), st.just("a\udfffb") | st.integers())
        ),
    }
    if data.draw(_mostly(st.just(False), st.just(True))):
        args["extra"] = 1  # the argument model forbids unknown keys
    args = {k: v for k, v in args.items() if v is not None}
    ctx = echo.ctx()
    tool = echo.tool(max_response_bytes=4096)
    result = outcome(http.HTTPArgs, lambda a: tool.run(ctx, a), args, lambda: ctx.touched)
    if result is not None:
        assert not leaks(SECRET, result)
        for key in ctx.keys:
            assert not leaks("".join(key.splitlines()[1:-1]), result, window=24)


# -- redis.command -------------------------------------------------------------------------
REDIS_PASSWORD = "A1a-redis-session-password-0123"


class FakeRedisSession:
    """The session's pool, in memory: echoes the command, and the password once."""

    user = "v-token-redis-acme-x1"
    redactor = reflect.Redactor([REDIS_PASSWORD.encode()])

    def execute(self, parts: list[str]) -> Any:
        return [b"OK", REDIS_PASSWORD.encode(), self.user.encode(), *(p.encode() for p in parts)]

    def close(self) -> None:
        pass


class RedisContext(RecordingContext):
    def resource(self, key: str, create: Callable[[], Any]) -> Any:
        self.resources.append(key)
        return FakeRedisSession()


_REDIS_ARG = _mostly(
    st.text(max_size=12) | st.integers() | st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["\ud800", float("nan"), float("inf"), "GET\r\n", 10**5000, -(2**64)])
    | st.booleans()
    | st.none()
    | st.binary(max_size=4),
)
_VERBS = _mostly(
    st.sampled_from(["GET", "get", "SET", "set", "DEL", "HGETALL", "PING"]),
    st.sampled_from(["\u017fet", "CONFIG", "acl", "EVAL", "", " GET", "GET\r\n", 5])
    | st.text(max_size=6),
)


@FUZZ
@given(
    command=_mostly(
        st.tuples(_VERBS, st.lists(_REDIS_ARG, max_size=5)).map(lambda t: [t[0], *t[1]]),
        st.lists(_REDIS_ARG, max_size=70) | st.text(max_size=5),
    ),
    instance=_mostly(st.just("default"), st.sampled_from(["other", "../default", "", "é"])),
    role=st.sampled_from(["analyst", "writer"]),
)
def test_redis_command_fuzz(echo: Echo, command: Any, instance: Any, role: str) -> None:  # noqa: F811
    tool = redis_cmd.RedisCommandTool(
        redis_cmd.RedisSettings.model_validate(
            {
                "instances": {"default": {"host": "127.0.0.1", "port": 1}},
                "commands": {"writer": ["GET", "SET"]},
                "max_arg_bytes": 64,
            }
        )
    )
    ctx = RedisContext(echo.ca, role=role)
    args = {"command": command, "instance": instance}
    result = outcome(
        redis_cmd.RedisArgs, lambda a: tool.run(ctx, a), args, lambda: bool(ctx.resources)
    )
    if result is not None:
        assert REDIS_PASSWORD not in json.dumps(result)
        assert not leaks(REDIS_PASSWORD, result)


# -- cloud.aws -----------------------------------------------------------------------------
AWS_ROLE_ARN = "arn:aws:iam::123456789012:role/clawql-{tenant}-{agent_role}"


class AWSContext(RecordingContext):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.cache: dict[str, Any] = {}

    def read_secret(self, path: str) -> Lease:
        self.reads.append(path)
        return Lease(data={"token": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.sig"})

    def resource(self, key: str, create: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = create()
        return self.cache[key]


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    from tests.audit.moto_server import MotoS3

    server = MotoS3()
    server.start()
    try:
        yield server.endpoint
    finally:
        server.stop()


@pytest.fixture(scope="module")
def aws_tool(moto_url: str) -> aws.AWSTool:
    ops = [
        "sts:get_caller_identity",
        "s3:list_buckets",
        "s3:get_object",
        "s3:put_object",
        "s3:list_objects_v2",
        "s3:generate_presigned_url",
    ]
    return aws.AWSTool(
        aws.AWSSettings.model_validate(
            {
                "endpoint_url": moto_url,
                "roles": {"analyst": {"role_arn_template": AWS_ROLE_ARN, "operations": ops}},
            }
        )
    )


_JSONISH = st.recursive(
    _mostly(
        st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=10),
        st.floats() | st.sampled_from(["\ud800", 10**5000]) | st.integers(-(2**70), 2**70),
    ),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=6,
)
_NAME = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=3, max_size=12)


def _deep(n: int) -> Any:
    value: Any = "x"
    for _ in range(n):
        value = {"Bucket": value}
    return value


_S3_PARAMS = st.fixed_dictionaries(
    {"Bucket": _mostly(_NAME, _JSONISH)},
    optional={
        "Key": _mostly(st.text(max_size=12), _JSONISH),
        "Body": st.text(max_size=20),
        "MaxKeys": _mostly(st.integers(0, 100), _JSONISH),
        "Prefix": st.text(max_size=5),
    },
)
_CALLS = st.sampled_from(
    [
        ("s3", "list_buckets"),
        ("s3", "get_object"),
        ("s3", "put_object"),
        ("s3", "list_objects_v2"),
        ("sts", "get_caller_identity"),
    ]
)


_NO_PARAMS = {"list_buckets", "get_caller_identity"}


@FUZZ
@given(
    call=_mostly(
        _CALLS,
        st.tuples(
            st.sampled_from(["s3", "sts", "iam", "S3", "s3 ", "", "ec2"]) | st.text(max_size=8),
            st.sampled_from(["generate_presigned_url", "ListBuckets", "list_users", "get_object"])
            | st.text(max_size=10),
        ),
    ),
    params=_mostly(
        _S3_PARAMS | st.just({}),
        st.dictionaries(st.text(max_size=6), _JSONISH, max_size=3)
        | st.sampled_from(
            [
                {"Bucket": "bad bucket name!", "Key": "k"},
                {"Bucket": "a/b", "Key": "k"},
                {"Bucket": _deep(40)},
                {"Bucket": "b", "Key": "k", "SSECustomerKey": 5},
                _deep(20_000),
            ]
        ),
    ),
)
def test_cloud_aws_fuzz(
    echo: Echo,  # noqa: F811
    aws_tool: aws.AWSTool,
    call: tuple[Any, Any],
    params: Any,
) -> None:
    tool = aws_tool
    ctx = AWSContext(echo.ca)
    if (
        call[1] in _NO_PARAMS
        and params
        and "Bucket" in params
        and not isinstance(params["Bucket"], dict)
    ):
        params = {}  # mostly well-formed calls: these take no parameters
    args = {"service": call[0], "operation": call[1], "params": params}
    result = outcome(aws.AWSArgs, lambda a: tool.run(ctx, a), args, lambda: bool(ctx.reads))
    if result is not None and ctx.cache:
        creds = next(iter(ctx.cache.values())).values
        for secret in (creds["SecretAccessKey"], creds["SessionToken"]):
            assert not leaks(secret, result, window=16)


def test_aws_credentials_only_when_a_request_is_signed(echo: Echo, moto_url: str) -> None:  # noqa: F811
    """A request botocore refuses (an S3 customisation's bucket check) costs no token."""
    tool = aws.AWSTool(
        aws.AWSSettings.model_validate(
            {
                "endpoint_url": moto_url,
                "roles": {
                    "analyst": {"role_arn_template": AWS_ROLE_ARN, "operations": ["s3:get_object"]}
                },
            }
        )
    )
    ctx = AWSContext(echo.ca)
    bad = aws.AWSArgs.model_validate(
        {"service": "s3", "operation": "get_object", "params": {"Bucket": "a/b", "Key": "k"}}
    )
    with pytest.raises(RequestRejected) as e:
        tool.run(ctx, bad)
    assert e.value.code == "aws_bad_params" and ctx.reads == []
    missing = aws.AWSArgs.model_validate(
        {"service": "s3", "operation": "get_object", "params": {"Bucket": "nope", "Key": "k"}}
    )
    with pytest.raises(RequestRejected) as e:
        tool.run(ctx, missing)
    assert e.value.code == "aws_error" and len(ctx.reads) == 1


def test_injected_secret_fixture_is_used() -> None:
    """The fuzz's injected secret is long enough to be redacted (guards the fixtures)."""
    assert len(SECRET) >= reflect.MIN_SECRET_BYTES and INJECT["header"] == "X-Api-Key"


# -- named cases ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "ok"),
    [
        ({"Bucket": "b", "MaxKeys": 5, "Flag": True, "N": None, "F": 1.5, "L": [1, "a"]}, True),
        ({"Bucket": _deep(20_000)}, False),  # nested 20,000 deep: refused, not a RecursionError
        ({"Bucket": _deep(33)}, False),
        ({"MaxKeys": float("nan")}, False),
        ({"MaxKeys": 2**64}, False),
        ({"Key": "a\ud800"}, False),
        ({"Key": b"bytes"}, False),
        ({"Key": {1: "x"}}, False),
        ({"Key": [0] * 100_001}, False),
    ],
)
def test_aws_params_grammar(params: dict[str, Any], ok: bool) -> None:
    if ok:
        aws.check_params(params)
    else:
        with pytest.raises(ValueError):
            aws.check_params(params)
        with pytest.raises(ValidationError):
            aws.AWSArgs.model_validate({"service": "s3", "operation": "get_object", **params})


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (["\u017fet", "k", "v"], "command_not_allowed"),  # long s: its upper() is SET
        ([" GET", "k"], "command_not_allowed"),
        (["GET\r\n", "k"], "command_not_allowed"),
        ([5, "k"], "command_not_allowed"),
        (["GET", "k" * 100], "command_too_large"),
        (["GET"] + ["k"] * 65, "too_many_args"),
    ],
)
def test_redis_refusals_before_the_session_user(
    echo: Echo,  # noqa: F811
    command: list[Any],
    code: str,
) -> None:
    tool = redis_cmd.RedisCommandTool(
        redis_cmd.RedisSettings.model_validate(
            {"instances": {"default": {"host": "127.0.0.1"}}, "max_arg_bytes": 64}
        )
    )
    ctx = RedisContext(echo.ca)
    with pytest.raises((RequestRejected, AccessDenied)) as e:
        tool.run(ctx, redis_cmd.RedisArgs.model_validate({"command": command}))
    assert getattr(e.value, "code", None) == code and ctx.resources == []


def test_redis_checked_verb_is_the_one_sent(echo: Echo) -> None:  # noqa: F811
    tool = redis_cmd.RedisCommandTool(
        redis_cmd.RedisSettings.model_validate({"instances": {"default": {"host": "127.0.0.1"}}})
    )
    ctx = RedisContext(echo.ca)
    reply = tool.run(ctx, redis_cmd.RedisArgs.model_validate({"command": ["get", "k", 1]}))
    assert reply == {"reply": ["OK", "[redacted]", FakeRedisSession.user, "GET", "k", "1"]}
