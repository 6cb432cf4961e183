"""The demo's HTTPS destination: its header check, and its mTLS, without OpenBao.

The client CA is a throwaway ``LocalCA`` standing in for OpenBao's agent PKI;
token values are random per run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from clawql_secrets.cluster import stack
from clawql_secrets.cluster.layout import StackSettings
from clawql_secrets.demo import target
from clawql_secrets.errors import InputError
from clawql_secrets.gateway.localstack import demo_target_ca
from clawql_secrets.tlsca import LocalCA

SAN = "spiffe://clawql/tenants/acme/agents/bot-t"


def _token() -> str:
    return "tok_" + secrets.token_urlsafe(24)


# -- the header check ---------------------------------------------------------------------
TOKEN = _token()
DIGEST = target.token_digest(TOKEN)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),
        (f"  Bearer {TOKEN}  ", True),
        (None, False),
        ("", False),
        ("Bearer", False),
        ("Bearer ", False),
        (TOKEN, False),  # no scheme
        (f"Basic {TOKEN}", False),
        (f"Bearer {TOKEN}x", False),
        (f"Bearer {TOKEN[:-1]}", False),
        (f"Bearer {TOKEN.upper()}", False),
        ("Bearer \u20ac" + TOKEN, False),  # not Latin-1: cannot be header bytes
    ],
    ids=[
        "right-token",
        "scheme-case-insensitive",
        "surrounding-space",
        "missing-header",
        "empty-header",
        "scheme-only",
        "empty-token",
        "no-scheme",
        "wrong-scheme",
        "token-with-suffix",
        "token-prefix",
        "token-other-case",
        "non-latin1",
    ],
)
def test_bearer_matches(header: str | None, expected: bool) -> None:
    assert target.bearer_matches(header, DIGEST) is expected


@pytest.mark.parametrize("digest", [b"", b"\0" * 31, hashlib.sha512(b"x").digest()])
def test_bearer_matches_refuses_a_digest_that_is_not_sha256(digest: bytes) -> None:
    with pytest.raises(InputError, match="32 bytes"):
        target.bearer_matches(f"Bearer {TOKEN}", digest)


def test_token_digest_is_sha256_of_the_token() -> None:
    assert target.token_digest(TOKEN) == hashlib.sha256(TOKEN.encode()).digest()


# -- the server -----------------------------------------------------------------------------
@dataclass
class Running:
    settings: StackSettings
    dest: target.DemoTarget
    token: str
    client_cert: Path
    client_key: Path


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    settings = stack.free_settings(tmp_path / "stack")
    agents = LocalCA.load_or_create(tmp_path / "agents-ca", "test agents CA")
    chain, key = agents.issue_pem(
        "bot-t", uris=(SAN,), client=True, lifetime=dt.timedelta(minutes=5)
    )
    (tmp_path / "client.pem").write_bytes(chain)
    (tmp_path / "client.key").write_bytes(key)
    token = _token()
    with target.running(
        settings,
        target.token_digest(token),
        client_ca_pem=agents.cert_path.read_text(),
    ) as dest:
        yield Running(settings, dest, token, tmp_path / "client.pem", tmp_path / "client.key")


def _client(r: Running, *, with_cert: bool = True) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(demo_target_ca(r.settings).cert_path))
    if with_cert:
        ctx.load_cert_chain(r.client_cert, r.client_key)
    return httpx.Client(verify=ctx, trust_env=False, timeout=5.0)


def test_target_listens_on_loopback_at_the_stack_demo_port(running: Running) -> None:
    s = running.settings
    assert running.dest.url == f"https://127.0.0.1:{s.demo_target_port}"
    assert s.demo_target_port == s.base_port + 80


def test_right_cert_and_token_answers_the_san_and_records_the_cert(
    running: Running, capfd: pytest.CaptureFixture[str]
) -> None:
    with _client(running) as c:
        resp = c.get(
            f"{running.dest.url}/hello", headers={"Authorization": f"Bearer {running.token}"}
        )
    assert resp.status_code == 200
    assert resp.json() == {"hello": SAN, "authorized": True}
    (seen,) = running.dest.seen
    assert seen.cert.uri_sans == (SAN,)
    assert seen.authorized and seen.path == "/hello"
    assert 290 <= (seen.cert.not_after - seen.at).total_seconds() <= 300
    assert seen.cert.lifetime_seconds == 600  # LocalCA backdates 5 minutes
    assert len(seen.cert.serial.split(":")) >= 8
    shown = json.dumps(seen.to_json())
    out, err = capfd.readouterr()
    for text in (shown, resp.text, out, err):
        assert running.token not in text


def test_wrong_token_is_401_and_recorded_as_unauthorized(running: Running) -> None:
    with _client(running) as c:
        wrong = c.get(f"{running.dest.url}/", headers={"Authorization": f"Bearer {_token()}"})
        missing = c.get(f"{running.dest.url}/")
    assert (wrong.status_code, wrong.json()) == (401, {"hello": SAN, "authorized": False})
    assert missing.status_code == 401
    assert [s.authorized for s in running.dest.seen] == [False, False]


def test_no_client_cert_is_refused_in_the_handshake(running: Running) -> None:
    with _client(running, with_cert=False) as c, pytest.raises(httpx.HTTPError):
        c.get(f"{running.dest.url}/", headers={"Authorization": f"Bearer {running.token}"})
    deadline = time.monotonic() + 2  # counted on the server's thread, after the client gave up
    while running.dest.refused_handshakes == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert running.dest.refused_handshakes == 1
    assert running.dest.seen == []


def test_client_cert_from_another_ca_is_refused(running: Running, tmp_path: Path) -> None:
    other = LocalCA.load_or_create(tmp_path / "other-ca", "not the agents CA")
    chain, key = other.issue_pem("bot-t", uris=(SAN,), client=True)
    (tmp_path / "other.pem").write_bytes(chain)
    (tmp_path / "other.key").write_bytes(key)
    ctx = ssl.create_default_context(cafile=str(demo_target_ca(running.settings).cert_path))
    ctx.load_cert_chain(tmp_path / "other.pem", tmp_path / "other.key")
    with (
        httpx.Client(verify=ctx, trust_env=False, timeout=5.0) as c,
        pytest.raises(httpx.HTTPError),
    ):
        c.get(f"{running.dest.url}/", headers={"Authorization": f"Bearer {running.token}"})
    assert running.dest.seen == []


def test_target_is_stopped_when_the_block_fails(tmp_path: Path) -> None:
    settings = stack.free_settings(tmp_path / "stack")
    agents = LocalCA.load_or_create(tmp_path / "agents-ca", "test agents CA")
    with (
        pytest.raises(RuntimeError),
        target.running(
            settings, target.token_digest(_token()), client_ca_pem=agents.cert_path.read_text()
        ),
    ):
        raise RuntimeError("a failing step")
    with socket.socket() as sock:  # nothing listens on the port any more
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not a listener
        sock.bind((settings.host, settings.demo_target_port))


def test_demo_target_ca_key_is_owner_only(tmp_path: Path) -> None:
    settings = StackSettings(data_dir=tmp_path / "stack")
    ca = demo_target_ca(settings)
    assert (ca.directory / "ca.key").stat().st_mode & 0o777 == 0o600
    assert ca.directory.stat().st_mode & 0o777 == 0o700
