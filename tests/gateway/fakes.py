"""Test doubles for pure unit tests of the layers above OpenBao (never for live tests)."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from clawql_secrets.cluster.client import OpenBaoClient

Handler = Callable[[httpx.Request], httpx.Response]


def mock_openbao(handler: Handler) -> OpenBaoClient:
    """An ``OpenBaoClient`` whose transport is ``handler``: no TLS context, no retries."""
    bao = OpenBaoClient.__new__(OpenBaoClient)
    bao.addrs, bao.token, bao.retry_for, bao._preferred = ["https://127.0.0.1:1"], None, 0, 0
    bao._http = httpx.Client(transport=httpx.MockTransport(handler))
    return bao
