"""The OpenAPI document the gateway serves at ``/openapi.json``.

Written by hand around pydantic's JSON schemas of each tool's arguments, so
the document describes exactly the installed tools, the error codes and the
headers that come with them (the 401/403 ``WWW-Authenticate`` challenge, the
429/503 ``Retry-After``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clawql_secrets import __version__
from clawql_secrets.gateway.tools import Tool

ERROR_CODES = [
    # the bearer (401, with a WWW-Authenticate challenge)
    "missing_bearer",
    "token_too_large",
    "token_malformed",
    "token_alg_refused",
    "token_unknown_kid",
    "token_bad_signature",
    "token_missing_claim",
    "token_bad_claim",
    "token_wrong_issuer",
    "token_wrong_audience",
    "token_expired",
    "token_not_yet_valid",
    "token_lifetime_too_long",
    "jwks_invalid",
    "session_ended",
    "session_expired",
    # who may do what (403)
    "tool_not_allowed",
    "other_session",
    "not_admin",
    "admin_disabled",
    "anomaly_revoked",
    # the request (400/404/405/408/413/422)
    "unknown_session",
    "unknown_tool",
    "invalid_arguments",
    "invalid_json",
    "body_too_large",
    "body_timeout",
    "not_found",
    "method_not_allowed",
    # fair shares (429/503, with Retry-After)
    "session_busy",
    "tenant_busy",
    "gateway_busy",
    "auth_failures",
    # the exchange and OpenBao
    "exchange_refused",
    "exchange_mismatch",
    "openbao_denied",
    "openbao_refused",
    "openbao_unavailable",
    "openbao_error",
    "secret_not_found",
    "lease_unbounded",
    "registry_unavailable",
    "gateway_identity_failed",
    # sql.query
    "unknown_database",
    "sql_too_large",
    "too_many_params",
    "sql_timeout",
    "sql_permission_denied",
    "sql_error",
    "sql_unparsable",
    "sql_multiple_statements",
    "sql_params_mismatch",
    "sql_bad_param",
    "sql_function_refused",
    "sql_setting_refused",
    "sql_unsupported_result",
    "database_unavailable",
    "pool_exhausted",
    "session_closed",
    # http.request
    "bad_url",
    "bad_header",
    "bad_inject_format",
    "bad_secret_name",
    "destination_not_allowed",
    "http_not_allowed",
    "inject_header_not_allowed",
    "client_cert_not_allowed",
    "client_cert_unsupported",
    "secret_field_missing",
    "secret_not_a_header",
    "secret_too_short",
    "http_bad_encoding",
    "http_timeout",
    "http_unavailable",
    # redis.command
    "unknown_instance",
    "command_not_allowed",
    "command_too_large",
    "too_many_args",
    "reply_too_large",
    "redis_permission_denied",
    "redis_error",
    "redis_unavailable",
    # cloud.aws
    "unknown_operation",
    "operation_not_allowed",
    "aws_not_allowed",
    "aws_bad_params",
    "aws_denied",
    "aws_error",
    "aws_unavailable",
    "result_too_large",
    "internal_error",
]

SQL_CLASS_REFUSED = "^sql_[a-z]+_refused$"

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {
                    "type": "string",
                    # sql.query refuses a statement class by name: sql_<class>_refused.
                    "anyOf": [{"enum": list(ERROR_CODES)}, {"pattern": SQL_CLASS_REFUSED}],
                },
                "message": {"type": "string"},
            },
        }
    },
}


_STATUS_TEXT = {
    400: "bad request (invalid_json, …)",
    401: "no valid session bearer (or the session has ended)",
    403: "authenticated, not allowed",
    404: "not found",
    405: "method not allowed",
    408: "the body did not arrive within the read timeout (the connection is closed)",
    413: "body too large",
    422: "invalid arguments",
    429: "the session or tenant is over its share of concurrent calls",
    502: "a backend answered badly",
    503: "a backend or the gateway is unavailable or full",
}
_CHALLENGE = {
    "description": (
        'RFC 6750 challenge: Bearer [error="invalid_token" | error="insufficient_scope", ]'
        'resource_metadata="<RFC 9728 metadata URL>"'
    ),
    "schema": {"type": "string"},
}
_RETRY_AFTER = {"description": "seconds to wait", "schema": {"type": "integer", "minimum": 1}}


def _errors(*statuses: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in statuses:
        entry: dict[str, Any] = {
            "description": _STATUS_TEXT.get(s, "error"),
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        if s in (401, 403):
            entry["headers"] = {"WWW-Authenticate": _CHALLENGE}
        elif s in (429, 503):
            entry["headers"] = {"Retry-After": _RETRY_AFTER}
        out[str(s)] = entry
    return out


def args_schema(tool: Tool) -> dict[str, Any]:
    """The JSON Schema of a tool's arguments (the OpenAPI body, the MCP ``inputSchema``)."""
    return tool.args_model.model_json_schema()


def schema(tools: Mapping[str, Tool]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    components: dict[str, Any] = {"Error": _ERROR}
    for name, tool in sorted(tools.items()):
        ref = "Args_" + name.replace(".", "_")
        components[ref] = args_schema(tool)
        paths[f"/v1/tools/{name}"] = {
            "post": {
                "summary": f"call {name} with the session's credentials",
                "security": [{"session": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}
                    },
                },
                "responses": {
                    "200": {"description": "the tool's result, under 'result'"},
                    **_errors(400, 401, 403, 404, 408, 413, 422, 429, 502, 503),
                },
            }
        }
    sid = [{"name": "sid", "in": "path", "required": True, "schema": {"type": "string"}}]
    paths["/v1/sessions/{sid}"] = {
        "get": {
            "summary": "state, expiry and lease count of a session (no secrets)",
            "parameters": sid,
            "security": [{"session": []}, {"admin": []}],
            "responses": {"200": {"description": "session"}, **_errors(401, 403, 404)},
        },
        "delete": {
            "summary": "end the session: every lease revoked, its DB users dropped",
            "parameters": sid,
            "security": [{"session": []}, {"admin": []}],
            "responses": {"200": {"description": "ended"}, **_errors(401, 403, 404, 503)},
        },
    }
    paths["/v1/sessions/{sid}/revoke"] = {
        "post": {
            "summary": "anomaly revoke (admin identity only)",
            "parameters": sid,
            "security": [{"admin": []}],
            "responses": {"200": {"description": "revoked"}, **_errors(401, 403, 404, 503)},
        }
    }
    paths["/mcp"] = {
        "post": {
            "summary": (
                "MCP (streamable HTTP, stateless, JSON responses): tools/list shows the tools "
                "the session's role may call, tools/call runs them as the REST API does"
            ),
            "security": [{"session": []}],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "responses": {
                "200": {"description": "a JSON-RPC response"},
                "202": {"description": "a notification, accepted"},
                **_errors(400, 401, 405, 408, 413, 429, 503),
            },
        }
    }
    paths["/.well-known/oauth-protected-resource"] = {
        "get": {
            "summary": (
                "RFC 9728 protected-resource metadata: the canonical URI (resource) and the "
                "session issuer (authorization_servers); also served under /mcp"
            ),
            "responses": {"200": {"description": "the metadata document"}},
        }
    }
    for path, text in (
        ("/healthz", "liveness"),
        ("/readyz", "readiness: registry and OpenBao reachable"),
        ("/metrics", "Prometheus metrics (no secrets)"),
        ("/openapi.json", "this document"),
    ):
        paths[path] = {"get": {"summary": text, "responses": {"200": {"description": "ok"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "ClawQL Secrets gateway", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "session": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "a session JWT whose aud is the gateway's canonical URI",
                },
                "admin": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
    }
