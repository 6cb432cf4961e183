"""Keys, CSRs and the checks an issued certificate must pass before it is written.

Pure: bytes and ``cryptography`` objects in, values out or an exception.
Following python-tuf's updater, nothing OpenBao returns reaches the disk until
it is verified here:

1. the leaf parses and its public key is the one this host generated;
2. the leaf is signed by the issuing CA that came with it;
3. it names what was asked for (common name, DNS and URI SANs);
4. it is valid now and ends after it starts.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clawql_secrets.certs.config import Service
from clawql_secrets.errors import IntegrityError


@dataclass(frozen=True)
class CertInfo:
    """What the renewer tracks of a certificate in place (public facts only)."""

    serial: str
    not_before: float
    not_after: float


@dataclass(frozen=True)
class Issued:
    """A verified certificate with its key, ready to be written. The key never prints."""

    info: CertInfo
    key_pem: bytes = field(repr=False)
    cert_pem: bytes  # leaf, then intermediates
    ca_pem: bytes  # the CA chain peers trust, root included


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def csr_for(service: Service, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A CSR naming the service; only this (and never the key) goes to OpenBao."""
    sans: list[x509.GeneralName] = [x509.DNSName(service.common_name)]
    sans += [x509.DNSName(d) for d in service.dns_sans if d != service.common_name]
    sans += [x509.UniformResourceIdentifier(u) for u in service.uri_sans]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service.common_name)]))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def info_of(cert: x509.Certificate) -> CertInfo:
    return CertInfo(
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
    )


def load_pems(data: bytes, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise IntegrityError(f"{what} is not a PEM certificate") from exc
    if not certs:
        raise IntegrityError(f"{what} holds no certificate")
    return certs


def same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def _names(cert: x509.Certificate) -> tuple[set[str], set[str], str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = set(san.get_values_for_type(x509.DNSName))
        uris = set(san.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        dns, uris = set(), set()
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    return dns, uris, cn


def verify_issued(
    service: Service,
    key: ec.EllipticCurvePrivateKey,
    leaf_pem: bytes,
    chain_pems: list[bytes],
    *,
    now: float,
) -> Issued:
    """Run the checklist in the module docstring; return what may be written."""
    # 1. the leaf carries our public key
    leaf = load_pems(leaf_pem, f"the certificate issued for {service.name}")[0]
    if not same_key(leaf, key):
        raise IntegrityError(
            f"the certificate issued for {service.name} is not for the key generated here"
        )
    # 2. signed by the issuing CA that came with it
    chain = [c for pem in chain_pems for c in load_pems(pem, "the CA chain")]
    if not chain:
        raise IntegrityError(f"OpenBao returned no CA chain for {service.name}")
    try:
        leaf.verify_directly_issued_by(chain[0])
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise IntegrityError(
            f"the certificate issued for {service.name} is not signed by its issuing CA"
        ) from exc
    # 3. the names asked for
    dns, uris, cn = _names(leaf)
    missing = sorted(
        ({service.common_name, *service.dns_sans} - dns) | (set(service.uri_sans) - uris)
    )
    if cn != service.common_name or missing:
        raise IntegrityError(
            f"the certificate issued for {service.name} does not name "
            f"{service.common_name!r} {missing or ''}".rstrip()
        )
    # 4. valid now
    info = info_of(leaf)
    if not info.not_before - 300 <= now < info.not_after:
        raise IntegrityError(
            f"the certificate issued for {service.name} is not valid now "
            f"(valid {_iso(info.not_before)} to {_iso(info.not_after)})"
        )
    intermediates = [c for c in chain if c.issuer != c.subject]
    pem = serialization.Encoding.PEM
    return Issued(
        info=info,
        key_pem=key_pem(key),
        cert_pem=b"".join(c.public_bytes(pem) for c in [leaf, *intermediates]),
        ca_pem=b"".join(c.public_bytes(pem) for c in chain),
    )


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def load_installed(
    cert_pem: bytes, key_data: bytes, service: Service
) -> tuple[CertInfo, x509.Certificate]:
    """Parse a certificate and key on disk; raise unless they belong together."""
    leaf = load_pems(cert_pem, f"{service.name}'s certificate file")[0]
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except (ValueError, TypeError) as exc:
        raise IntegrityError(f"{service.name}'s key file is not a PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not same_key(leaf, key):
        raise IntegrityError(f"{service.name}'s key file does not match its certificate")
    return info_of(leaf), leaf
