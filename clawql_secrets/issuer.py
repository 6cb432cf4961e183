"""A local JWT issuer: workload identity for the development stack.

In production, the platform's identities come from its own issuer (Kubernetes
service-account tokens for our services, the platform's session issuer for
agents) and OpenBao trusts their JWKS. Locally this module plays that part: an
ES256 key under ``<data-dir>/issuer`` (0600, bootstrap trust like the node TLS
keys) signs short-lived JWTs, and OpenBao's ``jwt`` auth mounts trust its
public key. Nothing here ever holds an OpenBao token.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clawql_secrets.errors import ConfigError
from clawql_secrets.tlsca import write_private

ALGORITHM = "ES256"


class LocalIssuer:
    def __init__(self, issuer: str, key: ec.EllipticCurvePrivateKey) -> None:
        self.issuer = issuer
        self._key = key
        pub = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        import hashlib

        self.kid = hashlib.sha256(pub).hexdigest()[:16]

    @classmethod
    def load(cls, directory: Path, issuer: str) -> LocalIssuer:
        """The existing issuer; never creates a key (status, CLI commands)."""
        if not (directory / "signing.key").exists():
            raise ConfigError(
                f"no issuer key in {directory}",
                fix="run `clawql-secrets up` first (it creates the local stack's identities)",
            )
        return cls.load_or_create(directory, issuer)

    @classmethod
    def load_or_create(cls, directory: Path, issuer: str) -> LocalIssuer:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_path = directory / "signing.key"
        if key_path.exists():
            try:
                key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"the issuer key {key_path} cannot be read ({type(exc).__name__})",
                    fix="restore it from backup; a new key invalidates every trust configured",
                ) from exc
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ConfigError(f"the issuer key {key_path} is not an EC key")
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            write_private(
                key_path,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
        inst = cls(issuer, key)
        (directory / "public.pem").write_text(inst.public_pem())
        (directory / "jwks.json").write_text(json.dumps(inst.jwks(), indent=2))
        return inst

    def public_pem(self) -> str:
        return (
            self._key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def jwks(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self._key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": ALGORITHM})
        return {"keys": [jwk]}

    def mint(self, subject: str, audience: str, ttl: int = 300, **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "nbf": now - 5,
            "exp": now + ttl,
            "jti": secrets.token_urlsafe(16),
            **claims,
        }
        return jwt.encode(payload, self._key, algorithm=ALGORITHM, headers={"kid": self.kid})
