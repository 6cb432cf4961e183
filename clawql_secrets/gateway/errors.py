"""Gateway errors: the project's tree plus a stable ``code`` and an HTTP status.

Agents and operators branch on ``code`` (stable, documented in the OpenAPI
schema); ``message`` is for people. Both are written by us, never copied from
a backend answer that might echo a credential.

    InputError
    ├── RequestRejected      400/404/413/422: bad body, unknown tool, oversized, tool refused
    └── TokenMalformed       400 here; the HTTP edge answers 401 with a Bearer challenge
                             (the bearer is not a JWT at all: size, base64, JSON)
    AuthenticationError
    └── TokenRejected        401: a JWT that fails verification, or a dead session
    SecurityError
    └── AccessDenied         403: authenticated but not allowed (other session, OpenBao said no)
    BackendError
    └── BackendUnavailable   502/503: OpenBao, PostgreSQL or Redis failed
"""

from __future__ import annotations

from clawql_secrets.errors import AuthenticationError, BackendError, InputError, SecurityError


class _Coded:
    code: str
    status: int


class RequestRejected(InputError, _Coded):
    def __init__(self, code: str, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class TokenMalformed(InputError, _Coded):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = 400


class TokenRejected(AuthenticationError, _Coded):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = 401


class AccessDenied(SecurityError, _Coded):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = 403


class BackendUnavailable(BackendError, _Coded):
    def __init__(self, code: str, message: str, *, status: int = 503) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


CodedError = RequestRejected | TokenMalformed | TokenRejected | AccessDenied | BackendUnavailable
