"""Fakes for the renewer's unit tests: a clock, and a CA that signs CSRs in memory."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clawql_secrets.certs.config import CertsConfig, Service
from clawql_secrets.errors import ClawQLError

T0 = 1_900_000_000.0  # a fixed "now", 2030


class FakeClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class FakeCA:
    """Signs CSRs like ``pki_int/sign/<role>``: validity from the fake clock, names from the CSR.

    ``fail`` set to an exception makes every sign raise it (an outage);
    ``subject``, ``validity`` and ``public_key_override`` replace what the
    leaf would carry (a misbehaving server).
    """

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.fromtimestamp(clock(), dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name("fake root"))
            .issuer_name(_name("fake root"))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.calls = 0
        self.fail: ClawQLError | None = None
        self.subject: x509.Name | None = None
        self.validity: tuple[dt.datetime, dt.datetime] | None = None
        self.public_key_override: ec.EllipticCurvePublicKey | None = None

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def sign(self, service: Service, csr_pem: bytes) -> tuple[bytes, list[bytes]]:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        csr = x509.load_pem_x509_csr(csr_pem)
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        pub = self.public_key_override or csr.public_key()
        start, end = self.validity or (
            now - dt.timedelta(seconds=5),
            now + dt.timedelta(seconds=service.ttl),
        )
        leaf = (
            x509.CertificateBuilder()
            .subject_name(self.subject or csr.subject)
            .issuer_name(self.cert.subject)
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(san, critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return leaf.public_bytes(serialization.Encoding.PEM), [self.pem]


def make_config(
    tmp_path: Path, *, ttl: int = 900, jitter: float = 0.0, **svc: object
) -> CertsConfig:
    (tmp_path / "jwt").write_text("a.b.c")
    (tmp_path / "ca.pem").write_text("unused by fakes")
    d = tmp_path / "svc"
    service = {
        "name": "alpha",
        "pki_role": "svc-alpha",
        "common_name": "alpha.svc.clawql.internal",
        "uri_sans": ["spiffe://clawql.internal/svc/alpha"],
        "ttl": ttl,
        "key_file": str(d / "tls.key"),
        "cert_file": str(d / "tls.crt"),
        "ca_file": str(d / "ca.crt"),
        "bundle_file": str(d / "tls.pem"),
        **svc,
    }
    return CertsConfig.model_validate(
        {
            "openbao": {"addrs": ["https://127.0.0.1:1"], "ca_file": str(tmp_path / "ca.pem")},
            "identity": {"mount": "certs", "role": "renewer", "jwt_file": str(tmp_path / "jwt")},
            "services": [service],
            "schedule": {"jitter": jitter, "backoff_initial": 1, "backoff_max": 30},
        }
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ca(clock: FakeClock) -> FakeCA:
    return FakeCA(clock)
