"""The OpenAPI document the gateway serves at ``/openapi.json``.

Written by hand around pydantic's JSON schemas of each tool's arguments, so
the document describes exactly the installed tools and the error codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clawql_secrets import __version__
from clawql_secrets.gateway.tools import Tool

ERROR_CODES = [
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
    "session_ended",
    "other_session",
    "not_admin",
    "admin_disabled",
    "unknown_session",
    "unknown_tool",
    "invalid_arguments",
    "invalid_json",
    "body_too_large",
    "exchange_refused",
    "exchange_mismatch",
    "openbao_denied",
    "openbao_unavailable",
    "openbao_error",
    "registry_unavailable",
    "gateway_identity_failed",
    "unknown_database",
    "sql_too_large",
    "too_many_params",
    "sql_timeout",
    "sql_permission_denied",
    "sql_error",
    "database_unavailable",
    "pool_exhausted",
    "session_closed",
    "not_found",
    "method_not_allowed",
    "internal_error",
]

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "enum": list(ERROR_CODES)},
                "message": {"type": "string"},
            },
        }
    },
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(s): {
            "description": "error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for s in statuses
    }


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
                    **_errors(400, 401, 403, 404, 413, 422, 502, 503),
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
                "session": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "admin": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
    }
