"""The exchange assertion: how the gateway, and only the gateway, gets an agent's token.

OpenBao's agents mount trusts one issuer: this gateway's exchange key. It does
not trust the platform's session issuer, so an agent's own session JWT opens
nothing in OpenBao (wrong key, issuer and audience), before or after its
session ends (ADR 0010). Per tool call, after the gateway has verified the
session JWT and found the session active, it signs a seconds-lived assertion
in the shape of an RFC 8693 token-exchange result:

- ``sub`` = ``<tenant>/<agent>`` (the alias name: globally unique),
  ``tenant``, ``agent``, ``agent_role``, ``sid`` — the agent, subject;
- ``act: {"sub": <actor>}`` — the gateway, acting for it; OpenBao's roles
  bind ``/act/sub`` and map it to the token's metadata, so every audit entry
  of the call names both;
- ``aud`` = the exchange audience (never a session JWT's audience), ``iss``
  = the exchange issuer, ``exp`` = at most ``ttl`` seconds away and never past
  the session's own ``exp``, a fresh ``jti``.

The key is Ed25519 (signing costs tens of microseconds on the hot path). It
is bootstrap trust like the node TLS keys: a 0600 PEM file on the gateway's
host (a mounted file in Kubernetes), named by ``scan`` and the threat model,
rotated by publishing the new public key next to the old one in the desired
state (the mount accepts every listed key), then switching the gateways.
"""

from __future__ import annotations

import hashlib
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from clawql_secrets.errors import ConfigError
from clawql_secrets.gateway.jwt_check import SessionClaims
from clawql_secrets.tlsca import write_private

ALGORITHM = "EdDSA"
SKEW = 5  # seconds iat/nbf are backdated by (OpenBao's roles allow none on exp)
ANCHOR_TTL = 5  # an anchor's assertion is used at once
KEY_FILE, PUBLIC_FILE = "signing.key", "public.pem"


@dataclass(frozen=True)
class AssertionSpec:
    """Who signs and for whom: the exchange issuer, OpenBao's audience, the actor."""

    issuer: str
    audience: str
    actor: str
    ttl: int = 30


class ExchangeSigner:
    """Signs exchange assertions with a key that never leaves this object."""

    def __init__(self, key: ed25519.Ed25519PrivateKey, spec: AssertionSpec) -> None:
        self._key = key
        self.spec = spec
        self.kid = key_id(key.public_key())

    @classmethod
    def from_file(cls, path: Path, spec: AssertionSpec) -> ExchangeSigner:
        return cls(load_key(path), spec)

    def assertion(self, claims: SessionClaims, now: float, *, use: str = "call") -> str:
        """A signed assertion for one OpenBao login on behalf of ``claims``'s session.

        ``use`` is ``call`` (the per-call batch role) or ``session`` (the session's
        anchor role); the roles bind it, so an assertion opens only what it was signed
        for. An anchor's assertion lives ``ANCHOR_TTL`` seconds: it is spent at once.
        ``iat``/``nbf`` are backdated by ``SKEW`` seconds for clock skew with OpenBao,
        which allows none on ``exp``.
        """
        issued = int(now)
        ttl = self.spec.ttl if use == "call" else min(self.spec.ttl, ANCHOR_TTL)
        exp = min(issued + ttl, claims.exp)
        payload = {
            "iss": self.spec.issuer,
            "aud": self.spec.audience,
            "sub": claims.sub,
            "tenant": claims.tenant,
            "agent": claims.agent,
            "agent_role": claims.agent_role,
            "sid": claims.sid,
            "act": {"sub": self.spec.actor},
            "use": use,
            "iat": issued - SKEW,
            "nbf": issued - SKEW,
            "exp": exp,
            "jti": secrets.token_urlsafe(12),
        }
        return self.sign(payload)

    def sign(self, payload: dict[str, Any]) -> str:
        """``payload`` as a compact JWS with the exchange key (EdDSA, this key's ``kid``)."""
        return jwt.encode(payload, self._key, algorithm=ALGORITHM, headers={"kid": self.kid})

    def __repr__(self) -> str:
        return f"ExchangeSigner(kid={self.kid!r}, <key redacted>)"


def stack_key_dir(data_dir: Path) -> Path:
    """Where the local stack keeps the exchange key (``up`` creates it)."""
    return data_dir / "gateway-exchange"


def minter(path: Path, issuer: str) -> Callable[..., str]:
    """``mint(subject, audience, ttl=60, **claims)`` signing with the exchange key at
    ``path``: what the policy capability matrix logs in with, as the gateway does."""
    signer = ExchangeSigner(load_key(path), AssertionSpec(issuer, "", ""))

    def mint(subject: str, audience: str, ttl: int = 60, **claims: Any) -> str:
        now = int(time.time())
        return signer.sign(
            {
                "iss": issuer,
                "sub": subject,
                "aud": audience,
                "iat": now - SKEW,
                "nbf": now - SKEW,
                "exp": now + ttl,
                "jti": secrets.token_urlsafe(12),
                **claims,
            }
        )

    return mint


def key_id(public: ed25519.Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public: ed25519.Ed25519PublicKey) -> str:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def load_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """The exchange key from ``path``: a PEM Ed25519 private key readable by its owner only."""
    try:
        mode = path.stat().st_mode
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the gateway's exchange key {path} ({type(exc).__name__})",
            fix="point exchange.key_file at the key; locally `clawql-secrets up` creates it",
        ) from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"the gateway's exchange key {path} is readable by others",
            fix=f"chmod 600 {path}",
        )
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"the gateway's exchange key {path} is not a PEM private key") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"the gateway's exchange key {path} is not an Ed25519 key")
    return key


def load_or_create(directory: Path) -> ed25519.Ed25519PublicKey:
    """The local stack's exchange key in ``directory`` (created once, 0600); writes
    ``public.pem`` next to it for the desired state to trust. Returns the public key."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / KEY_FILE
    if path.exists():
        public = load_key(path).public_key()
    else:
        key = ed25519.Ed25519PrivateKey.generate()
        write_private(
            path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        public = key.public_key()
    pem = public_pem(public)
    pub_path = directory / PUBLIC_FILE
    if not pub_path.exists() or pub_path.read_text() != pem:
        pub_path.write_text(pem)
    return public
