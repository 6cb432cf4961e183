"""The per-call session login to OpenBao over a small keep-alive connection pool.

Every tool call logs in to OpenBao (ADR 0005), so this one request is the
gateway's hottest OpenBao call. ``OpenBaoClient`` (httpx) spends ~0.6 ms of
CPU on it; a standard-library ``http.client`` connection kept alive per node
spends ~0.2 ms (measured: ADR 0005, "Performance"). Same contract as
``OpenBaoClient.request`` for this call: TLS verified against the OpenBao CA,
no redirects followed, 307/412/429/5xx or a connection failure → the next
node, with backoff, until ``retry_for``, then ``NotLeaderError``; any other
HTTP error → ``OpenBaoError`` with its status. The JWT and the token never
appear in an error, a log line or a metric.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from clawql_secrets.errors import ConfigError, InputError, NotLeaderError, OpenBaoError

_RETRYABLE = frozenset({307, 412, 429, 500, 502, 503, 504})
_MAX_IDLE = 16  # idle connections kept per node


class _Node:
    def __init__(self, addr: str, ctx: ssl.SSLContext, timeout: float) -> None:
        u = urlsplit(addr)
        if u.scheme != "https" or not u.hostname:
            raise InputError(f"the OpenBao address {addr!r} is not an https:// URL")
        self.addr = addr
        self._host = u.hostname
        self._port = u.port or 443
        self._prefix = u.path.rstrip("/")
        self._ctx = ctx
        self._timeout = timeout
        self._idle: list[http.client.HTTPSConnection] = []
        self._lock = threading.Lock()

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        fresh = conn is None
        if conn is None:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=self._ctx
            )
        try:
            try:
                status, data = _send(conn, f"{self._prefix}/v1/{path}", body)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if fresh:
                    raise
                # An idle keep-alive connection the node closed: one retry on a new one.
                conn.close()
                status, data = _send(conn, f"{self._prefix}/v1/{path}", body)
        except BaseException:
            conn.close()
            raise
        with self._lock:
            if len(self._idle) < _MAX_IDLE:
                self._idle.append(conn)
                conn = None
        if conn is not None:
            conn.close()
        return status, data

    def close(self) -> None:
        with self._lock:
            conns, self._idle = self._idle, []
        for c in conns:
            c.close()


def _send(conn: http.client.HTTPSConnection, url: str, body: bytes) -> tuple[int, bytes]:
    conn.request(
        "POST", url, body=body, headers={"Content-Type": "application/json", "Accept": "*/*"}
    )
    resp = conn.getresponse()
    data = resp.read()
    if resp.will_close:
        conn.close()
    return resp.status, data


class LoginClient:
    """``POST auth/<mount>/login`` with failover across ``addrs``."""

    def __init__(
        self, addrs: Sequence[str], ca: Path, *, timeout: float = 5.0, retry_for: float = 5.0
    ) -> None:
        if not addrs:
            raise InputError("no OpenBao address given")
        try:
            ctx = ssl.create_default_context(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the CA certificate {ca} that verifies OpenBao",
                fix="check the path; for the local stack run `clawql-secrets up` first",
            ) from exc
        self._nodes = [_Node(a.rstrip("/"), ctx, timeout) for a in addrs]
        self._retry_for = retry_for
        self._preferred = 0

    def login(self, mount: str, body: dict[str, Any]) -> dict[str, Any]:
        path = f"auth/{mount}/login"
        if ".." in path.split("/"):
            raise InputError(f"refusing OpenBao path with '..': {path!r}")
        raw = json.dumps(body).encode()
        n = len(self._nodes)
        start = self._preferred
        deadline = time.monotonic() + self._retry_for
        delay, attempt, last = 0.05, 0, "no attempt made"
        while True:
            idx = (start + attempt) % n
            node = self._nodes[idx]
            attempt += 1
            try:
                status, data = node.post(path, raw)
            except (OSError, http.client.HTTPException) as exc:
                last = f"{node.addr}: {type(exc).__name__}"
            else:
                if status not in _RETRYABLE:
                    self._preferred = idx
                    return _decode(status, data, path)
                last = f"{node.addr}: HTTP {status} {_errors(data)}".rstrip()
            if time.monotonic() >= deadline:
                raise NotLeaderError(
                    f"OpenBao POST {path} failed on every node for "
                    f"{self._retry_for:.0f}s; last: {last}",
                    fix="check that a majority of nodes is up and unsealed (clawql-secrets status)",
                )
            if attempt % n == 0:
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def close(self) -> None:
        for node in self._nodes:
            node.close()


def _errors(data: bytes) -> str:
    try:
        doc = json.loads(data or b"null")
    except ValueError:
        return ""
    errs = doc.get("errors") if isinstance(doc, dict) else None
    return "; ".join(str(e) for e in errs or [])[:500]


def _decode(status: int, data: bytes, path: str) -> dict[str, Any]:
    if status == 204:
        return {}
    if status >= 400:
        detail = _errors(data) or http.client.responses.get(status, "")
        raise OpenBaoError(
            f"OpenBao refused POST {path}: HTTP {status}: {detail}",
            status=status,
            fix="the identity used lacks a policy for this path" if status == 403 else None,
        )
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise OpenBaoError(f"OpenBao sent a non-JSON answer to POST {path}") from exc
    if not isinstance(doc, dict):
        raise OpenBaoError(f"OpenBao sent a non-object answer to POST {path}")
    return doc
