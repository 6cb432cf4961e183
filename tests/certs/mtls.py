"""Two small services doing mTLS with each other on loopback, for the live test.

Each service has a TLS server (a thread) and a client (called from the test's
loop). They reload their certificate the two ways ``certs run`` supports:

- ``reread``: builds a fresh ``SSLContext`` from the bundle file (key and chain
  in one file, replaced by one rename) for every connection;
- ``signal``: keeps its contexts in memory and rebuilds them when told
  (the test's SIGUSR1 handler calls ``reload()``).

Every handshake checks the peer's chain against the CA file, its DNS name
(client side) and its SPIFFE-style URI SAN (both sides: authorization, since
the same CA also signs other certificates). Failures are recorded, not raised.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def spiffe(name: str) -> str:
    return f"spiffe://clawql.internal/svc/{name}"


def dns(name: str) -> str:
    return f"{name}.svc.clawql.internal"


def _uris(peer: dict[str, Any] | None) -> set[str]:
    sans = (peer or {}).get("subjectAltName") or ()
    return {str(v) for k, v in sans if k == "URI"}


@dataclass
class Peer:
    name: str
    directory: Path
    mode: str  # "reread" or "signal"
    failures: list[str] = field(default_factory=list)
    served: int = 0
    # serial -> when a peer first saw it in a handshake (Unix time)
    serials_seen_by_peers: dict[int, float] = field(default_factory=dict)
    reloads: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server_ctx: ssl.SSLContext | None = None
        self._client_ctx: ssl.SSLContext | None = None
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name=f"mtls-{self.name}", daemon=True)

    # -- certificate loading --------------------------------------------------
    @property
    def bundle(self) -> Path:
        return self.directory / "tls.pem"

    def _contexts(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        for ctx in (server, client):
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=str(self.directory / "ca.crt"))
        if self.mode == "reread":
            server.load_cert_chain(str(self.bundle))
            client.load_cert_chain(str(self.bundle))
        else:
            for ctx in (server, client):
                ctx.load_cert_chain(
                    str(self.directory / "tls.crt"), str(self.directory / "tls.key")
                )
        return server, client

    def reload(self) -> None:
        server, client = self._contexts()
        with self._lock:
            self._server_ctx, self._client_ctx = server, client
            self.reloads += 1

    def _ctx(self, server_side: bool) -> ssl.SSLContext:
        if self.mode == "reread":
            return self._contexts()[0 if server_side else 1]
        with self._lock:
            ctx = self._server_ctx if server_side else self._client_ctx
        if ctx is None:
            raise RuntimeError(f"{self.name} has not loaded a certificate")
        return ctx

    # -- server ---------------------------------------------------------------
    def start(self) -> None:
        if self.mode == "signal":
            self.reload()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            try:
                with self._ctx(server_side=True).wrap_socket(conn, server_side=True) as tls:
                    want = {spiffe(n) for n in ("alpha", "beta") if n != self.name}
                    if not _uris(tls.getpeercert()) & want:
                        raise ssl.SSLError(f"{self.name}: client is not a known peer")
                    if tls.recv(4) != b"ping":
                        raise OSError("no ping")
                    tls.sendall(b"pong")
                    self.served += 1
            except (OSError, ssl.SSLError, ValueError, RuntimeError) as exc:
                self.failures.append(f"{self.name} server: {type(exc).__name__}: {exc}")
            finally:
                conn.close()

    # -- client ---------------------------------------------------------------
    def call(self, other: Peer) -> bool:
        """One full handshake to ``other``; True on success."""
        try:
            ctx = self._ctx(server_side=False)
            with (
                socket.create_connection(("127.0.0.1", other.port), timeout=5) as raw,
                ctx.wrap_socket(raw, server_hostname=dns(other.name)) as tls,
            ):
                peer = tls.getpeercert()
                if spiffe(other.name) not in _uris(peer):
                    raise ssl.SSLError(f"{other.name} did not prove {spiffe(other.name)}")
                der = tls.getpeercert(binary_form=True)
                tls.sendall(b"ping")
                if tls.recv(4) != b"pong":
                    raise OSError("no pong")
        except (OSError, ssl.SSLError, ValueError, RuntimeError) as exc:
            self.failures.append(f"{self.name}->{other.name}: {type(exc).__name__}: {exc}")
            return False
        from cryptography import x509

        if der:
            serial = x509.load_der_x509_certificate(der).serial_number
            other.serials_seen_by_peers.setdefault(serial, time.time())
        return True
