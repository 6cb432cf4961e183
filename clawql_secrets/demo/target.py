"""The demo's destination: a loopback HTTPS service that wants an agent's cert and token.

It stands in for an internal service behind mTLS that also expects an API token
(``Authorization: Bearer …``). It accepts a connection only with a client
certificate chaining to OpenBao's agent PKI (the chain is read from the cluster,
``pki_int/cert/ca_chain``, unauthenticated), and it is told only the SHA-256 of
the expected token: it compares digests in constant time and never keeps or logs
the header. Its answer to the agent is the name it saw and the verdict. What it
saw — the certificate's URI SANs, serial and validity — is recorded in memory for
the operator's side of the demo.

Its server key is made at start, signed by the stack's demo-target CA (which the
gateway's ``http.request`` trusts) and reaches OpenSSL through an anonymous
memory file: it is never on disk and dies with the process.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509

from clawql_secrets.cluster import stack
from clawql_secrets.cluster.layout import StackSettings
from clawql_secrets.errors import ConfigError, InputError, OpenBaoError
from clawql_secrets.gateway.localstack import demo_target_ca
from clawql_secrets.tlsca import load_chain_from_memory

CA_CHAIN_PATH = "pki_int/cert/ca_chain"
_SOCKET_TIMEOUT = 10.0


# -- pure parts ---------------------------------------------------------------------------
def token_digest(token: str) -> bytes:
    """What the target is told about the token it should accept."""
    return hashlib.sha256(token.encode()).digest()


def bearer_matches(header: str | None, expected_digest: bytes) -> bool:
    """Whether ``header`` is ``Bearer <token>`` with SHA-256(token) == ``expected_digest``.

    Digests of equal length are compared in constant time, so neither the token's
    length nor its first differing byte shows in the timing.
    """
    if len(expected_digest) != hashlib.sha256().digest_size:
        raise InputError("the expected token digest must be 32 bytes (SHA-256)")
    if header is None:
        return False
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    try:
        # http.server decodes header bytes as Latin-1: this gives back the bytes sent.
        raw = token.strip().encode("latin-1")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(hashlib.sha256(raw).digest(), expected_digest)


@dataclass(frozen=True)
class PeerCert:
    """What the target saw of one client certificate."""

    uri_sans: tuple[str, ...]
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime

    @classmethod
    def from_der(cls, der: bytes) -> PeerCert:
        cert = x509.load_der_x509_certificate(der)
        try:
            ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            uris = tuple(ext.value.get_values_for_type(x509.UniformResourceIdentifier))
        except x509.ExtensionNotFound:
            uris = ()
        serial = cert.serial_number.to_bytes((cert.serial_number.bit_length() + 7) // 8, "big")
        return cls(
            uri_sans=uris,
            serial=":".join(f"{b:02x}" for b in serial),  # as OpenBao prints serials
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )

    @property
    def lifetime_seconds(self) -> int:
        return int((self.not_after - self.not_before).total_seconds())


@dataclass(frozen=True)
class Seen:
    """One request, as the operator may see it: never the token, only the verdict."""

    at: dt.datetime
    method: str
    path: str
    cert: PeerCert
    authorized: bool

    def to_json(self) -> dict[str, Any]:
        c = self.cert
        return {
            "uri_sans": list(c.uri_sans),
            "serial": c.serial,
            "not_before": c.not_before.isoformat(),
            "not_after": c.not_after.isoformat(),
            "not_after - not_before (s)": c.lifetime_seconds,
            "not_after - request time (s)": int((c.not_after - self.at).total_seconds()),
            "token matched": self.authorized,
        }


# -- the server ---------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "clawql-demo-target"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a request line or header could carry what must not be logged."""

    def do_GET(self) -> None:
        conn = self.connection
        der = conn.getpeercert(binary_form=True) if isinstance(conn, ssl.SSLSocket) else None
        if not der:  # CERT_REQUIRED makes this unreachable; refuse all the same
            self._answer(401, {"error": "a client certificate is required"})
            return
        cert = PeerCert.from_der(der)
        ok = bearer_matches(self.headers.get("Authorization"), self.server.expected_digest)
        self.server.record(Seen(dt.datetime.now(dt.UTC), self.command, self.path[:200], cert, ok))
        hello = cert.uri_sans[0] if cert.uri_sans else None
        self._answer(200 if ok else 401, {"hello": hello, "authorized": ok})

    def _answer(self, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], tls: ssl.SSLContext, expected_digest: bytes):
        self.tls = tls
        self.expected_digest = expected_digest
        self.seen: list[Seen] = []
        self.refused_handshakes = 0
        self._lock = threading.Lock()
        super().__init__(addr, _Handler)

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def snapshot(self) -> tuple[list[Seen], int]:
        with self._lock:
            return list(self.seen), self.refused_handshakes

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens here, on the request's own thread: a slow or
        # certificate-less client never holds up the accept loop.
        request.settimeout(_SOCKET_TIMEOUT)
        try:
            tls = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            with self._lock:
                self.refused_handshakes += 1
            return
        with tls:
            super().finish_request(tls, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: the default prints a traceback, which may quote request data."""


def agent_ca_chain(settings: StackSettings) -> str:
    """OpenBao's agent PKI chain (intermediate and root), read without a token."""
    try:
        with stack.client_for(settings, retry_for=10) as client:
            data = client.read(CA_CHAIN_PATH, token="").get("data") or {}
    except OpenBaoError as exc:
        raise OpenBaoError(
            f"cannot read OpenBao's agent CA chain ({CA_CHAIN_PATH})",
            status=exc.status,
            fix="apply the example desired state (its `pki:` section): `clawql-secrets up` "
            "without --no-example, or `clawql-secrets apply`",
        ) from exc
    chain = data.get("ca_chain") or data.get("certificate") or ""
    if isinstance(chain, list):
        chain = "\n".join(str(c) for c in chain)
    if "CERTIFICATE" not in str(chain):
        raise OpenBaoError(f"OpenBao's {CA_CHAIN_PATH} holds no certificate")
    return str(chain)


def server_context(settings: StackSettings, client_ca_pem: str) -> ssl.SSLContext:
    """Server TLS: a fresh in-memory key signed by the demo-target CA; client certs required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cadata=client_ca_pem)
    except ssl.SSLError as exc:
        raise OpenBaoError("OpenBao's agent CA chain is not usable PEM") from exc
    chain, key = demo_target_ca(settings).issue_pem(
        "clawql-demo-target",
        dns=("localhost",),
        ips=(settings.host,),
        server=True,
        lifetime=dt.timedelta(days=1),
    )
    load_chain_from_memory(ctx, chain, key)  # NoMemoryFiles (a ConfigError) without memfd
    return ctx


class DemoTarget:
    """A running target; ``seen`` is what the operator may look at."""

    def __init__(self, server: _Server, thread: threading.Thread, url: str) -> None:
        self._server = server
        self._thread = thread
        self.url = url

    @property
    def seen(self) -> list[Seen]:
        return self._server.snapshot()[0]

    @property
    def refused_handshakes(self) -> int:
        """Connections dropped during TLS (no or untrusted client certificate)."""
        return self._server.snapshot()[1]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start(
    settings: StackSettings, expected_digest: bytes, *, client_ca_pem: str | None = None
) -> DemoTarget:
    """Serve on ``settings.host:settings.demo_target_port`` (loopback: StackSettings
    refuses any other host) in a background thread. Client certificates must chain
    to ``client_ca_pem``, by default OpenBao's agent PKI."""
    if len(expected_digest) != hashlib.sha256().digest_size:
        raise InputError("the expected token digest must be 32 bytes (SHA-256)")
    if client_ca_pem is None:
        client_ca_pem = agent_ca_chain(settings)
    tls = server_context(settings, client_ca_pem)
    addr = (settings.host, settings.demo_target_port)
    try:
        server = _Server(addr, tls, expected_digest)
    except OSError as exc:
        raise ConfigError(
            f"the demo target cannot listen on {addr[0]}:{addr[1]} ({type(exc).__name__})",
            fix="stop whatever uses that port (base port + 80), then run the demo again",
        ) from exc
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="demo-target", daemon=True
    )
    thread.start()
    return DemoTarget(server, thread, f"https://{addr[0]}:{addr[1]}")


@contextlib.contextmanager
def running(
    settings: StackSettings, expected_digest: bytes, *, client_ca_pem: str | None = None
) -> Iterator[DemoTarget]:
    """The target for the duration of a block; stopped however the block ends."""
    target = start(settings, expected_digest, client_ca_pem=client_ca_pem)
    try:
        yield target
    finally:
        target.stop()
