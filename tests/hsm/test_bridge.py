"""The HSM bridge over real TLS (uvicorn in a thread) and a real SoftHSM2 token."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from clawql_secrets.errors import ConfigError
from clawql_secrets.hsm import bridge
from clawql_secrets.hsm.softhsm import TokenSetup
from clawql_secrets.hsm.token import HSMToken
from tests.hsm.conftest import KEY_NAME, PKI, ClientFactory, open_handle, put_json

ENC = f"/v1/transit/encrypt/{KEY_NAME}"
DEC = f"/v1/transit/decrypt/{KEY_NAME}"
SECRET = b"the root key, in clear"
B64 = base64.b64encode(SECRET).decode()


def encrypt(client: httpx.Client, plaintext: bytes = SECRET) -> str:
    resp = put_json(client, ENC, {"plaintext": base64.b64encode(plaintext).decode()})
    assert resp.status_code == 200, resp.text
    ciphertext: str = resp.json()["data"]["ciphertext"]
    return ciphertext


def decrypt(client: httpx.Client, ciphertext: str) -> bytes:
    resp = put_json(client, DEC, {"ciphertext": ciphertext})
    assert resp.status_code == 200, resp.text
    return base64.b64decode(resp.json()["data"]["plaintext"])


def test_round_trip_as_openbao_calls_it(make_client: ClientFactory, pki: PKI) -> None:
    client = make_client(pki.node)
    ciphertext = encrypt(client)
    prefix, key_id, _ = ciphertext.split(":")
    assert (prefix, key_id) == ("clawql", "v1")
    assert decrypt(client, ciphertext) == SECRET


def test_post_is_accepted_too(make_client: ClientFactory, pki: PKI) -> None:
    client = make_client(pki.node)
    resp = client.post(ENC, json={"plaintext": B64})
    assert resp.status_code == 200
    resp = client.post(DEC, json={"ciphertext": resp.json()["data"]["ciphertext"]})
    assert base64.b64decode(resp.json()["data"]["plaintext"]) == SECRET


def test_health_needs_no_certificate_and_shows_no_secret(
    make_client: ClientFactory, hsm_setup: TokenSetup
) -> None:
    resp = make_client(None).get("/v1/health")
    assert resp.status_code == 200
    assert resp.json() == {
        "status": "ok",
        "token_label": "clawql",
        "key_name": KEY_NAME,
        "key_version": 1,
    }
    assert hsm_setup.pin_file.read_text().strip() not in resp.text


# -- refusals, table-driven ---------------------------------------------------------


def _call(client: httpx.Client, method: str, path: str, body: Any) -> httpx.Response:
    if isinstance(body, bytes):
        return client.request(method, path, content=body)
    return client.request(method, path, content=json.dumps(body).encode())


CASES = [
    # (id, cert attribute or None, method, path, body, status, message fragment)
    (
        "unauthenticated_no_client_cert",
        None,
        "PUT",
        ENC,
        {"plaintext": B64},
        401,
        "no client certificate",
    ),
    (
        "client_cert_without_allowed_uri_san",
        "wrong_identity",
        "PUT",
        ENC,
        {"plaintext": B64},
        403,
        "no URI SAN under",
    ),
    (
        "client_cert_without_any_uri_san",
        "no_uri",
        "PUT",
        DEC,
        {"ciphertext": "x"},
        403,
        "URI SANs: none",
    ),
    ("oversize_body", "node", "PUT", ENC, {"plaintext": "A" * 70_000}, 413, "exceeds 65536 bytes"),
    (
        "unknown_mount",
        "node",
        "PUT",
        f"/v1/other/encrypt/{KEY_NAME}",
        {"plaintext": B64},
        404,
        "no transit mount 'other'",
    ),
    (
        "unknown_key",
        "node",
        "PUT",
        "/v1/transit/encrypt/nokey",
        {"plaintext": B64},
        404,
        "no key 'nokey'",
    ),
    ("unknown_endpoint", "node", "GET", "/v1/sys/seal-status", None, 404, "no such endpoint"),
    ("outside_v1", "node", "GET", "/metrics", None, 404, "no such endpoint"),
    (
        "renew_self_disabled",
        "node",
        "PUT",
        "/v1/auth/token/renew-self",
        {"increment": 0},
        404,
        "disable_renewal",
    ),
    ("wrong_method", "node", "GET", ENC, None, 405, "PUT or POST"),
    ("body_not_json", "node", "PUT", ENC, b"plaintext=abc", 400, "not valid JSON"),
    ("body_not_object", "node", "PUT", ENC, ["plaintext"], 400, "JSON object"),
    (
        "unexpected_field",
        "node",
        "PUT",
        ENC,
        {"plaintext": B64, "nonce": "x"},
        400,
        "unexpected field",
    ),
    ("plaintext_not_base64", "node", "PUT", ENC, {"plaintext": "***"}, 400, "must be base64"),
    ("plaintext_not_string", "node", "PUT", ENC, {"plaintext": 5}, 400, "must be a string"),
    ("garbage_ciphertext_two_parts", "node", "PUT", DEC, {"ciphertext": "clawql:v1"}, 400, "three"),
    (
        "garbage_ciphertext_vault_prefix",
        "node",
        "PUT",
        DEC,
        {"ciphertext": "vault:v1:" + "A" * 40},
        400,
        "start with",
    ),
    (
        "garbage_ciphertext_bad_base64",
        "node",
        "PUT",
        DEC,
        {"ciphertext": "clawql:v1:@@@@"},
        400,
        "base64",
    ),
    (
        "garbage_ciphertext_too_short",
        "node",
        "PUT",
        DEC,
        {"ciphertext": "clawql:v1:AAAA"},
        400,
        "shorter",
    ),
    (
        "garbage_ciphertext_bad_version",
        "node",
        "PUT",
        DEC,
        {"ciphertext": "clawql:vX:" + "A" * 40},
        400,
        "v<N>",
    ),
    (
        "ciphertext_unknown_version",
        "node",
        "PUT",
        DEC,
        {"ciphertext": "clawql:v9:" + "A" * 40},
        400,
        "does not exist",
    ),
    (
        "ciphertext_forged",
        "node",
        "PUT",
        DEC,
        {"ciphertext": "clawql:v1:" + "A" * 40},
        400,
        "does not authenticate",
    ),
]


@pytest.mark.parametrize(
    ("cert", "method", "path", "body", "status", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_refusals(
    make_client: ClientFactory,
    pki: PKI,
    caplog: pytest.LogCaptureFixture,
    cert: str | None,
    method: str,
    path: str,
    body: Any,
    status: int,
    fragment: str,
) -> None:
    client = make_client(getattr(pki, cert) if cert else None)
    with caplog.at_level(logging.INFO, logger="clawql_secrets.hsm.bridge"):
        resp = _call(client, method, path, body)
    assert resp.status_code == status
    doc = resp.json()
    assert list(doc) == ["errors"] and len(doc["errors"]) == 1
    assert fragment in doc["errors"][0]
    assert "Traceback" not in resp.text
    # One log line says why, and neither it nor the answer echoes the plaintext.
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and fragment in lines[0]
    assert B64 not in lines[0] and B64 not in resp.text


def test_refused_callers_never_reach_the_token(make_client: ClientFactory, pki: PKI) -> None:
    resp = put_json(make_client(pki.wrong_identity), ENC, {"plaintext": B64})
    assert resp.status_code == 403
    assert "ciphertext" not in resp.text


def test_client_cert_from_another_ca_fails_the_handshake(
    make_client: ClientFactory, pki: PKI
) -> None:
    """The TLS layer trusts only the seal-client CA: no HTTP answer at all."""
    client = make_client(pki.foreign)
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        put_json(client, ENC, {"plaintext": B64})


def test_ciphertext_for_another_mount_does_not_decrypt(
    token: HSMToken, settings: bridge.BridgeSettings, pki: PKI, make_client: ClientFactory
) -> None:
    """AAD binds the mount: a bridge serving 'transit2' cannot open 'transit' blobs."""
    ciphertext = encrypt(make_client(pki.node))
    other = settings.model_copy(update={"mount": "transit2"})
    ctx = ssl.create_default_context(cafile=str(pki.server_ca))
    ctx.load_cert_chain(pki.node.cert_path, pki.node.key_path)
    with bridge.running_in_thread(other, token) as url, httpx.Client(base_url=url, verify=ctx) as c:
        resp = put_json(c, f"/v1/transit2/decrypt/{KEY_NAME}", {"ciphertext": ciphertext})
    assert resp.status_code == 400
    assert "does not authenticate" in resp.json()["errors"][0]


# -- rotation while running ---------------------------------------------------------


def test_rotation_is_picked_up_without_restart(
    make_client: ClientFactory, pki: PKI, hsm_setup: TokenSetup, config_file: Path
) -> None:
    client = make_client(pki.node)
    old = encrypt(client)
    # Rotate through a second handle in this process...
    with open_handle(hsm_setup) as other:
        assert other.generate_version() == 2
    assert encrypt(client).split(":")[1] == "v2"
    # ...and through the CLI handler in another process (another PKCS#11 login).
    code = (
        "import argparse, pathlib, sys\n"
        "from clawql_secrets.hsm import commands\n"
        "sys.exit(commands.cmd_rotate(argparse.Namespace(config=pathlib.Path(sys.argv[1]))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(config_file)],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "v3" in proc.stdout
    newest = encrypt(client)
    assert newest.split(":")[1] == "v3"
    assert make_client(None).get("/v1/health").json()["key_version"] == 3
    assert decrypt(client, old) == SECRET
    assert decrypt(client, newest) == SECRET


# -- settings and start-up ------------------------------------------------------------


def test_port_in_use_names_the_port(settings: bridge.BridgeSettings, token: HSMToken) -> None:
    with bridge.running_in_thread(settings, token) as url:
        port = int(url.rsplit(":", 1)[1])
        taken = settings.model_copy(update={"port": port})
        with pytest.raises(ConfigError, match=f"port {port} "):
            bridge.bind_socket(taken.host, taken.port)


def test_settings_relative_paths_are_resolved(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "bridge.json"
    path.parent.mkdir()
    path.write_text(
        json.dumps(
            {
                "pin_file": "hsm/user.pin",
                "tls_cert": "t.pem",
                "tls_key": "t.key",
                "client_ca": "ca.pem",
            }
        )
    )
    settings = bridge.load_settings(path)
    assert settings.pin_file == path.parent / "hsm" / "user.pin"
    assert (settings.mount, settings.key_name, settings.host) == ("transit", KEY_NAME, "127.0.0.1")
    assert settings.allowed_uri_prefix == "spiffe://clawql.local/openbao/"


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        pytest.param("{", "not valid JSON", id="not_json"),
        pytest.param({"tls_cert": "a"}, "pin_file: Field required", id="missing_field"),
        pytest.param(
            {
                "pin_file": "p",
                "tls_cert": "c",
                "tls_key": "k",
                "client_ca": "a",
                "pin": "1234-secret",
            },
            "pin: Extra inputs",
            id="unknown_field",
        ),
        pytest.param(
            {
                "pin_file": "p",
                "tls_cert": "c",
                "tls_key": "k",
                "client_ca": "a",
                "allowed_uri_prefix": "spiffe://clawql.local/openbao",
            },
            "ending in '/'",
            id="prefix_without_slash",
        ),
        pytest.param(
            {"pin_file": "p", "tls_cert": "c", "tls_key": "k", "client_ca": "a", "key_name": "a/b"},
            "key_name",
            id="bad_key_name",
        ),
        pytest.param(
            {
                "pin_file": "p",
                "tls_cert": "c",
                "tls_key": "k",
                "client_ca": "a",
                "max_body_bytes": 10,
            },
            "max_body_bytes",
            id="tiny_body_limit",
        ),
    ],
)
def test_bad_settings_are_config_errors_without_values(
    tmp_path: Path, doc: Any, fragment: str
) -> None:
    path = tmp_path / "bridge.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(ConfigError) as err:
        bridge.load_settings(path)
    assert fragment in err.value.message
    assert "1234-secret" not in err.value.message


def test_missing_tls_files_are_config_errors(
    settings: bridge.BridgeSettings, tmp_path: Path
) -> None:
    broken = settings.model_copy(update={"tls_key": tmp_path / "missing.key"})
    with pytest.raises(ConfigError, match="bridge certificate"):
        bridge.build_ssl_context(broken)


@pytest.mark.parametrize(
    ("peercert", "ok"),
    [
        ({"subjectAltName": (("URI", "spiffe://clawql.local/openbao/n2"),)}, True),
        ({"subjectAltName": (("URI", "spiffe://clawql.local/openbao/"),)}, False),
        ({"subjectAltName": (("URI", "spiffe://clawql.local/openbao-x/n1"),)}, False),
        ({"subjectAltName": (("DNS", "spiffe://clawql.local/openbao/n1"),)}, False),
        ({}, False),
        (None, False),
    ],
)
def test_client_identity_rule(peercert: dict[str, Any] | None, ok: bool) -> None:
    prefix = "spiffe://clawql.local/openbao/"
    if ok:
        assert bridge.client_identity(peercert, prefix).startswith(prefix)
    else:
        with pytest.raises(Exception, match="client certificate"):
            bridge.client_identity(peercert, prefix)


def test_commands_register_and_status(
    config_file: Path, token: HSMToken, capsys: pytest.CaptureFixture[str]
) -> None:
    from clawql_secrets.hsm import commands

    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(["hsm", "status", "--config", str(config_file), "--json"])
    assert args.func(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["current_version"] == 1
    assert doc["versions"][0]["extractable"] is False


def test_listening_socket_lets_asyncio_disable_nagle() -> None:
    """Regression: without proto=IPPROTO_TCP asyncio skips TCP_NODELAY (40 ms/request)."""
    sock = bridge.bind_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
