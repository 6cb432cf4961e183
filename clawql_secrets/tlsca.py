"""A small local certificate authority for the development stack.

The local stack needs TLS between OpenBao nodes, their clients and the HSM
bridge. In production these certificates come from the organisation's PKI; here
one CA per purpose is generated on first ``up`` (EC P-256) and kept under the
data directory with 0600 keys. Each CA key is bootstrap trust (see README,
"security model"): whoever holds it can mint identities for that purpose only,
which is why the HSM bridge trusts a CA of its own rather than the one that
signs the nodes' listener certificates.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from clawql_secrets.atomicfile import write_atomic
from clawql_secrets.errors import ConfigError

_KEY_MODE = 0o600


@dataclass(frozen=True)
class IssuedCert:
    """Paths of a certificate (PEM, leaf then CA) and its private key."""

    cert_path: Path
    key_path: Path
    ca_path: Path


class NoMemoryFiles(ConfigError):
    """This platform has no anonymous memory files (Linux ``memfd``)."""


@contextlib.contextmanager
def _memory_file(data: bytes, name: str) -> Iterator[str]:
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is None:
        raise NoMemoryFiles("keeping a private key off disk needs Linux memfd")
    fd = memfd_create(name, getattr(os, "MFD_CLOEXEC", 1))
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def load_chain_from_memory(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """``ctx.load_cert_chain`` from PEM bytes through anonymous memory files: the key
    never has a disk path. ``NoMemoryFiles`` without memfd; ``ssl.SSLError`` on bad PEM."""
    with _memory_file(cert_pem, "clawql-cert") as cert, _memory_file(key_pem, "clawql-key") as key:
        ctx.load_cert_chain(cert, key)


def _private_dir(directory: Path) -> None:
    """``directory`` and any parent it creates, 0700 (``mkdir(parents=True)`` would
    give new parents the umask's mode)."""
    missing = [p for p in (directory, *directory.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir(mode=0o700, exist_ok=True)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, readable by the owner only (``atomicfile``)."""
    write_atomic(path, data, mode=_KEY_MODE)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class LocalCA:
    """A CA whose certificate and key live in one directory."""

    def __init__(self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey):
        self.directory = directory
        self.cert = cert
        self._key = key

    @property
    def cert_path(self) -> Path:
        return self.directory / "ca.pem"

    @classmethod
    def load_or_create(cls, directory: Path, common_name: str) -> LocalCA:
        _private_dir(directory)
        cert_path, key_path = directory / "ca.pem", directory / "ca.key"
        if cert_path.exists() and key_path.exists():
            try:
                cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
                key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"the CA in {directory} cannot be read ({type(exc).__name__})",
                    fix=f"restore {directory} from backup, or remove it to create a new CA",
                ) from exc
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ConfigError(f"the CA key in {directory} is not an EC key")
            return cls(directory, cert, key)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        write_private(key_path, _key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(directory, cert, key)

    def issue(
        self,
        directory: Path,
        name: str,
        *,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        uris: tuple[str, ...] = (),
        server: bool = False,
        client: bool = False,
        days: int = 825,
    ) -> IssuedCert:
        """Issue a leaf certificate ``<name>.pem``/``<name>.key`` into ``directory``.

        An existing pair signed by this CA is kept as is, so a restart does not
        churn certificates that running peers have pinned.
        """
        _private_dir(directory)
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        if cert_path.exists() and key_path.exists() and self._signed_by_me(cert_path):
            return IssuedCert(cert_path, key_path, self.cert_path)
        chain, key = self.issue_pem(
            name,
            dns=dns,
            ips=ips,
            uris=uris,
            server=server,
            client=client,
            lifetime=dt.timedelta(days=days),
        )
        write_private(key_path, key)
        cert_path.write_bytes(chain)
        return IssuedCert(cert_path, key_path, self.cert_path)

    def issue_pem(
        self,
        name: str,
        *,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        uris: tuple[str, ...] = (),
        server: bool = False,
        client: bool = False,
        lifetime: dt.timedelta = dt.timedelta(days=825),
    ) -> tuple[bytes, bytes]:
        """A new leaf as PEM bytes (certificate then CA; PKCS#8 key), written nowhere.

        For a process that holds its key in memory only for as long as it runs.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        sans += [x509.UniformResourceIdentifier(u) for u in uris]
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.cert.public_bytes(
            serialization.Encoding.PEM
        )
        return chain, _key_pem(key)

    def _signed_by_me(self, cert_path: Path) -> bool:
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            cert.verify_directly_issued_by(self.cert)
        except (OSError, ValueError, TypeError, InvalidSignature):
            return False
        return cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
