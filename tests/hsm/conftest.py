"""Fixtures for the HSM tests: a real SoftHSM2 token per test, real TLS.

Every test gets its own token directory under ``tmp_path``; the certificates
come from :class:`~clawql_secrets.tlsca.LocalCA` (three CAs: the bridge's
server CA, the dedicated seal-client CA, and an unrelated one).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from clawql_secrets.hsm import bridge
from clawql_secrets.hsm.softhsm import TokenSetup, ensure_token
from clawql_secrets.hsm.token import HSMToken
from clawql_secrets.tlsca import IssuedCert, LocalCA

KEY_NAME = "clawql-unseal"
NODE_URI = "spiffe://clawql.local/openbao/n1"


@dataclass(frozen=True)
class PKI:
    server: IssuedCert
    server_ca: Path
    client_ca: Path
    node: IssuedCert  # client cert with the allowed URI SAN
    wrong_identity: IssuedCert  # right CA, URI SAN outside the prefix
    no_uri: IssuedCert  # right CA, no URI SAN at all
    foreign: IssuedCert  # allowed URI SAN, but from another CA


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    root = tmp_path_factory.mktemp("pki")
    server_ca = LocalCA.load_or_create(root / "bridge-ca", "bridge server CA")
    client_ca = LocalCA.load_or_create(root / "seal-client-ca", "seal client CA")
    other_ca = LocalCA.load_or_create(root / "other-ca", "unrelated CA")
    certs = root / "certs"
    return PKI(
        server=server_ca.issue(
            certs, "bridge", dns=("localhost",), ips=("127.0.0.1",), server=True
        ),
        server_ca=server_ca.cert_path,
        client_ca=client_ca.cert_path,
        node=client_ca.issue(certs, "n1", uris=(NODE_URI,), client=True),
        wrong_identity=client_ca.issue(
            certs, "intruder", uris=("spiffe://clawql.local/openbao-evil/x",), client=True
        ),
        no_uri=client_ca.issue(certs, "nouri", dns=("n1.local",), client=True),
        foreign=other_ca.issue(certs, "foreign", uris=(NODE_URI,), client=True),
    )


@pytest.fixture
def hsm_setup(tmp_path: Path) -> TokenSetup:
    return ensure_token(tmp_path / "hsm")


def open_handle(setup: TokenSetup, key_name: str = KEY_NAME) -> HSMToken:
    return HSMToken.from_pin_file(
        lib_path=setup.lib_path,
        token_label=setup.token_label,
        pin_file=setup.pin_file,
        key_name=key_name,
        softhsm_conf=setup.conf_path,
    )


@pytest.fixture
def token(hsm_setup: TokenSetup) -> Iterator[HSMToken]:
    handle = open_handle(hsm_setup)
    try:
        handle.generate_version()
        yield handle
    finally:
        handle.close()


def token_files(setup: TokenSetup) -> dict[str, bytes]:
    tokendir = setup.conf_path.parent / "tokens"
    return {
        str(p.relative_to(tokendir)): p.read_bytes()
        for p in sorted(tokendir.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def settings(hsm_setup: TokenSetup, pki: PKI) -> bridge.BridgeSettings:
    return bridge.BridgeSettings(
        lib_path=hsm_setup.lib_path,
        softhsm_conf=hsm_setup.conf_path,
        token_label=hsm_setup.token_label,
        pin_file=hsm_setup.pin_file,
        key_name=KEY_NAME,
        mount="transit",
        host="127.0.0.1",
        port=0,
        tls_cert=pki.server.cert_path,
        tls_key=pki.server.key_path,
        client_ca=pki.client_ca,
        allowed_uri_prefix="spiffe://clawql.local/openbao/",
        max_body_bytes=64 * 1024,
    )


@pytest.fixture
def config_file(settings: bridge.BridgeSettings, tmp_path: Path) -> Path:
    path = tmp_path / "bridge.json"
    path.write_text(settings.model_dump_json(indent=2), encoding="utf-8")
    return path


@pytest.fixture
def bridge_metrics(settings: bridge.BridgeSettings, token: HSMToken) -> bridge.BridgeMetrics:
    """The metrics of the bridge ``bridge_url`` serves, as ``hsm serve`` builds them."""
    return bridge.BridgeMetrics(settings.allowed_uri_prefix, probe=token.current_version)


@pytest.fixture
def bridge_url(
    settings: bridge.BridgeSettings, token: HSMToken, bridge_metrics: bridge.BridgeMetrics
) -> Iterator[str]:
    with bridge.running_in_thread(settings, token, metrics=bridge_metrics) as url:
        yield url


ClientFactory = Callable[[IssuedCert | None], httpx.Client]


@pytest.fixture
def make_client(pki: PKI, bridge_url: str) -> Iterator[ClientFactory]:
    clients: list[httpx.Client] = []

    def make(cert: IssuedCert | None) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(pki.server_ca))
        if cert is not None:
            ctx.load_cert_chain(cert.cert_path, cert.key_path)
        client = httpx.Client(base_url=bridge_url, verify=ctx, timeout=10)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def put_json(client: httpx.Client, path: str, body: object) -> httpx.Response:
    """As OpenBao sends it: PUT, JSON body, no Content-Type."""
    return client.put(path, content=json.dumps(body).encode())
