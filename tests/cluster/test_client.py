"""OpenBaoClient's failover rules, against an in-memory transport (pure unit tests)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.errors import InputError, NotLeaderError, OpenBaoError
from clawql_secrets.tlsca import LocalCA

ADDRS = ["https://a:1", "https://b:1", "https://c:1"]


def _client(
    handler: Callable[[httpx.Request], httpx.Response], tmp_path: Path, **kw: float
) -> OpenBaoClient:
    ca = LocalCA.load_or_create(tmp_path / "ca", "test").cert_path
    return OpenBaoClient(ADDRS, ca, transport=httpx.MockTransport(handler), **kw)


def test_307_from_standby_is_not_followed_but_retried_elsewhere(tmp_path: Path) -> None:
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.url.host)
        if req.url.host == "a":
            return httpx.Response(307, headers={"location": "https://dead:1/v1/x"})
        return httpx.Response(200, json={"data": {"ok": True}})

    with _client(handler, tmp_path) as c:
        assert c.write("secret/data/ops/x", {"data": {}})["data"] == {"ok": True}
    assert seen == ["a", "b"]
    assert "dead" not in seen


def test_all_nodes_failing_gives_clear_error_within_deadline(tmp_path: Path) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.host == "a":
            raise httpx.ConnectError("refused")
        return httpx.Response(503, json={"errors": ["Vault is sealed"]})

    with _client(handler, tmp_path, retry_for=0.3) as c, pytest.raises(NotLeaderError) as err:
        c.write("secret/data/ops/x", {})
    msg = err.value.diagnostics()
    assert "failed on every node" in msg and "majority of nodes" in msg


def test_client_errors_are_not_retried_and_name_the_path(tmp_path: Path) -> None:
    calls = 0

    def handler(req: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(403, json={"errors": ["permission denied"]})

    with _client(handler, tmp_path) as c, pytest.raises(OpenBaoError) as err:
        c.read("secret/data/other", token="s.sometokenvalue000000000000")
    assert calls == 1
    assert err.value.status == 403
    assert "secret/data/other" in str(err.value)
    assert "sometokenvalue" not in err.value.diagnostics()


def test_path_traversal_refused(tmp_path: Path) -> None:
    with _client(lambda r: httpx.Response(200), tmp_path) as c, pytest.raises(InputError):
        c.read("secret/../sys/raw")
