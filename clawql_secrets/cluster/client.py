"""A small OpenBao HTTP client: the one place that talks to OpenBao's API.

Why not follow redirects: a standby answers a write with 307 to the leader; when
the leader is dead that is a redirect into nothing, so we treat 307, 429 and
5xx as "try another node" and retry across every node with backoff until a
deadline, then fail with a message that says what was tried. Only this
project's ``OpenBaoError`` family leaves this module. Tokens are passed per
call and never appear in an error message.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from clawql_secrets.errors import ConfigError, InputError, NotLeaderError, OpenBaoError

_RETRYABLE = frozenset({307, 412, 429, 500, 502, 503, 504})
JSON = dict[str, Any]


class OpenBaoClient:
    """Talks to a set of OpenBao nodes, verifying them with ``ca``."""

    def __init__(
        self,
        addrs: Sequence[str],
        ca: Path,
        *,
        token: str | None = None,
        timeout: float = 5.0,
        retry_for: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not addrs:
            raise InputError("no OpenBao address given")
        self.addrs = list(addrs)
        self.token = token
        self.retry_for = retry_for
        try:
            verify = ssl.create_default_context(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the CA certificate {ca} that verifies OpenBao",
                fix="check the path; for the local stack run `clawql-secrets up` first",
            ) from exc
        self._http = httpx.Client(
            verify=verify,
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,
            transport=transport,
        )
        self._preferred = 0

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OpenBaoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ------------------------------------------------------------
    def read(self, path: str, *, token: str | None = None) -> JSON:
        return self.request("GET", path, token=token)

    def write(
        self, path: str, body: Mapping[str, Any] | None = None, *, token: str | None = None
    ) -> JSON:
        return self.request("POST", path, body=body, token=token)

    def delete(self, path: str, *, token: str | None = None) -> JSON:
        return self.request("DELETE", path, token=token)

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        token: str | None = None,
        node: str | None = None,
        retry_for: float | None = None,
    ) -> JSON:
        """One API call. ``node`` pins the call to one address (no failover)."""
        if ".." in path.split("/"):
            raise InputError(f"refusing OpenBao path with '..': {path!r}")
        headers = {}
        tok = token if token is not None else self.token
        if tok:
            headers["X-Vault-Token"] = tok
        addrs = [node] if node else self._rotation()
        deadline = time.monotonic() + (self.retry_for if retry_for is None else retry_for)
        delay, attempt, last = 0.05, 0, "no attempt made"
        while True:
            addr = addrs[attempt % len(addrs)]
            attempt += 1
            try:
                resp = self._http.request(
                    method, f"{addr}/v1/{path.lstrip('/')}", json=body, headers=headers
                )
            except httpx.HTTPError as exc:
                last = f"{addr}: {type(exc).__name__}"
            else:
                if resp.status_code not in _RETRYABLE:
                    if not node:
                        self._preferred = self.addrs.index(addr)
                    return _decode(resp, method, path)
                last = f"{addr}: HTTP {resp.status_code} {_errors(resp)}".rstrip()
            if time.monotonic() >= deadline:
                raise NotLeaderError(
                    f"OpenBao {method} {path} failed on every node for "
                    f"{self.retry_for if retry_for is None else retry_for:.0f}s; last: {last}",
                    fix="check that a majority of nodes is up and unsealed (clawql-secrets status)",
                )
            if attempt % len(addrs) == 0:
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _rotation(self) -> list[str]:
        return self.addrs[self._preferred :] + self.addrs[: self._preferred]

    # -- unauthenticated helpers ----------------------------------------------
    def health(self, addr: str) -> JSON | None:
        """``sys/health`` of one node, or None if it does not answer."""
        try:
            resp = self._http.get(
                f"{addr}/v1/sys/health",
                params={"standbyok": "true", "sealedcode": 200, "uninitcode": 200},
                timeout=2.0,
            )
            data: JSON = resp.json()
        except (httpx.HTTPError, ValueError):
            return None
        return data


def _errors(resp: httpx.Response) -> str:
    try:
        errs = resp.json().get("errors") or []
    except ValueError:
        return ""
    return "; ".join(str(e) for e in errs)[:500]


def _decode(resp: httpx.Response, method: str, path: str) -> JSON:
    if resp.status_code == 204:
        return {}
    if resp.status_code >= 400:
        detail = _errors(resp) or resp.reason_phrase
        fix = None
        if resp.status_code == 403:
            fix = "the identity used lacks a policy for this path"
        raise OpenBaoError(
            f"OpenBao refused {method} {path}: HTTP {resp.status_code}: {detail}",
            status=resp.status_code,
            fix=fix,
        )
    try:
        data: JSON = resp.json()
    except ValueError as exc:
        raise OpenBaoError(f"OpenBao sent a non-JSON answer to {method} {path}") from exc
    return data
