"""The agent-facing gateway: token exchange per tool call, session credentials, revocation.

Modules: ``jwt_check`` (pure session-JWT verification), ``session_issuer``
(local issuer of session JWTs), ``config``, ``registry`` (shared session
registry, no credentials), ``core`` (exchange, tools, session end), ``tools``
(plugin interface and built-ins), ``metrics``, ``openapi``, ``app`` (ASGI),
``commands`` (CLI).
"""
