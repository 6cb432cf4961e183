"""Local verification of session JWTs: pure, no I/O, every failure coded.

The gateway checks a session JWT before anything reaches OpenBao, so forged
or stale tokens cost nothing downstream and get a precise answer. OpenBao
re-checks the same JWT at login; this is the first gate, not the only one.

Verification checklist (each step tagged below):

1. Size bound, then shape: three base64url segments of a JWS compact token.
2. Header: ``alg`` on the allow-list (asymmetric only: no ``none``, no HMAC,
   so a public key can never be used as an HMAC secret); ``kid`` known; the
   key's own ``alg`` equals the header's.
3. Signature over header and payload with that key only.
4. Payload is a JSON object with every required claim, of the right type.
5. ``iss`` and ``aud`` exact; ``exp``/``nbf``/``iat`` against ``now`` with a
   bounded clock skew; the lifetime ``exp - iat`` bounded.
6. Session claims: ``tenant``/``agent_role``/``sid`` well-formed and ``sub``
   is ``<tenant>/<agent>`` so that a subject is unique across tenants; names
   in the one grammar the desired state uses (``clawql_secrets.names``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt.api_jws import PyJWS

from clawql_secrets.gateway.errors import TokenMalformed, TokenRejected
from clawql_secrets.names import AGENT_RE, ROLE_RE, TENANT_RE

# HMAC and "none" are absent on purpose: with a published key, an HMAC token
# could be "signed" by anyone holding the public key.
ALLOWED_ALGORITHMS = frozenset({"ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA"})
SESSION_CLAIMS = ("iss", "aud", "sub", "sid", "tenant", "agent_role", "iat", "nbf", "exp", "jti")
# The agent part of ``sub`` (``clawql_secrets.names``); kept for importers.
NAME_RE = AGENT_RE
SID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class JWTLimits:
    """Typed limits enforced where the token comes in."""

    max_bytes: int = 4096
    clock_skew: int = 30
    max_lifetime: int = 24 * 3600


@dataclass(frozen=True)
class JWTPolicy:
    """What a token must look like for one purpose (sessions, or admin calls)."""

    issuer: str
    audience: str
    required: tuple[str, ...] = ("iss", "aud", "sub", "iat", "nbf", "exp", "jti")
    limits: JWTLimits = field(default_factory=JWTLimits)


@dataclass(frozen=True)
class SessionClaims:
    """The verified identity of an agent session."""

    sid: str
    tenant: str
    agent: str
    agent_role: str
    sub: str
    exp: int
    iat: int
    jti: str


class KeySet:
    """Public keys by ``kid``, from a JWKS document. Symmetric keys are refused."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self._keys: dict[str, jwt.PyJWK] = {}
        keys = jwks.get("keys")
        if not isinstance(keys, list):
            raise TokenMalformed("jwks_invalid", "the JWKS document has no 'keys' list")
        for raw in keys:
            if not isinstance(raw, dict) or not isinstance(raw.get("kid"), str):
                raise TokenMalformed("jwks_invalid", "every JWKS key needs a string 'kid'")
            if raw.get("kty") == "oct" or raw.get("alg") not in ALLOWED_ALGORITHMS:
                raise TokenMalformed(
                    "jwks_invalid", f"JWKS key {raw['kid']!r} is not an allowed asymmetric key"
                )
            try:
                self._keys[raw["kid"]] = jwt.PyJWK(raw)
            except jwt.PyJWTError as exc:
                raise TokenMalformed(
                    "jwks_invalid", f"JWKS key {raw['kid']!r} cannot be loaded"
                ) from exc
        if not self._keys:
            raise TokenMalformed("jwks_invalid", "the JWKS document has no keys")

    def get(self, kid: str) -> jwt.PyJWK | None:
        return self._keys.get(kid)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys


def _b64json(segment: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise TokenMalformed("token_malformed", f"the JWT {what} is not base64url JSON") from exc
    if not isinstance(value, dict):
        raise TokenMalformed("token_malformed", f"the JWT {what} is not a JSON object")
    return value


def verify(token: str, keys: KeySet, policy: JWTPolicy, *, now: float) -> dict[str, Any]:
    """Verified claims of ``token``, or a coded error. Returns only after all of 1-5."""
    # 1. size and shape
    if len(token.encode("utf-8", "replace")) > policy.limits.max_bytes:
        raise TokenMalformed("token_too_large", f"the JWT exceeds {policy.limits.max_bytes} bytes")
    parts = token.split(".")
    if len(parts) != 3 or not all(p and _SEGMENT_RE.fullmatch(p) for p in parts):
        raise TokenMalformed("token_malformed", "the bearer is not a compact JWS (a.b.c)")
    # 2. header
    header = _b64json(parts[0], "header")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
        raise TokenRejected(
            "token_alg_refused",
            f"JWT algorithm {str(alg)[:16]!r} is not allowed (asymmetric signatures only)",
        )
    kid = header.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise TokenRejected(
            "token_unknown_kid", "the JWT is signed by a key this gateway does not trust"
        )
    if key.algorithm_name != alg:
        raise TokenRejected("token_alg_refused", "the JWT algorithm does not match its key")
    # 3. signature (the payload is only trusted after this)
    try:
        verified = PyJWS().decode_complete(token, key, algorithms=[alg])
    except jwt.InvalidSignatureError as exc:
        raise TokenRejected("token_bad_signature", "the JWT signature does not verify") from exc
    except jwt.PyJWTError as exc:
        raise TokenMalformed("token_malformed", "the JWT cannot be decoded") from exc
    # 4. payload and required claims
    try:
        claims = json.loads(verified["payload"])
    except ValueError as exc:
        raise TokenMalformed("token_malformed", "the JWT payload is not JSON") from exc
    if not isinstance(claims, dict):
        raise TokenMalformed("token_malformed", "the JWT payload is not a JSON object")
    missing = [c for c in policy.required if c not in claims]
    if missing:
        raise TokenRejected("token_missing_claim", f"the JWT lacks claims: {', '.join(missing)}")
    for name in ("iat", "nbf", "exp"):
        if name in claims and (
            not isinstance(claims[name], int | float) or isinstance(claims[name], bool)
        ):
            raise TokenRejected("token_bad_claim", f"the JWT claim {name!r} is not a number")
    # 5. issuer, audience, times
    if claims.get("iss") != policy.issuer:
        raise TokenRejected("token_wrong_issuer", "the JWT was issued by an untrusted issuer")
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    if policy.audience not in auds:
        raise TokenRejected("token_wrong_audience", "the JWT is not meant for this gateway")
    skew = policy.limits.clock_skew
    if "exp" in claims and now >= claims["exp"] + skew:
        raise TokenRejected("token_expired", "the JWT has expired")
    if "nbf" in claims and now + skew < claims["nbf"]:
        raise TokenRejected("token_not_yet_valid", "the JWT is not valid yet (nbf)")
    if "iat" in claims and now + skew < claims["iat"]:
        raise TokenRejected("token_not_yet_valid", "the JWT was issued in the future (iat)")
    if (
        "iat" in claims
        and "exp" in claims
        and claims["exp"] - claims["iat"] > (policy.limits.max_lifetime)
    ):
        raise TokenRejected(
            "token_lifetime_too_long",
            f"the JWT lives longer than {policy.limits.max_lifetime}s",
        )
    return claims


def verify_session(token: str, keys: KeySet, policy: JWTPolicy, *, now: float) -> SessionClaims:
    """Steps 1-6 for an agent session JWT."""
    required = tuple(dict.fromkeys((*policy.required, *SESSION_CLAIMS)))
    claims = verify(
        token,
        keys,
        JWTPolicy(policy.issuer, policy.audience, required, policy.limits),
        now=now,
    )
    # 6. session claims
    tenant, role, sid, sub, jti = (
        claims.get(k) for k in ("tenant", "agent_role", "sid", "sub", "jti")
    )
    for name, value, pattern in (
        ("tenant", tenant, TENANT_RE),
        ("agent_role", role, ROLE_RE),
        ("sid", sid, SID_RE),
    ):
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise TokenRejected("token_bad_claim", f"the JWT claim {name!r} is malformed")
    if not isinstance(jti, str) or not jti:
        raise TokenRejected("token_bad_claim", "the JWT claim 'jti' is malformed")
    if not isinstance(sub, str) or not isinstance(tenant, str):
        raise TokenRejected("token_bad_claim", "the JWT claim 'sub' is malformed")
    prefix, _, agent = sub.partition("/")
    if prefix != tenant or not AGENT_RE.fullmatch(agent):
        raise TokenRejected(
            "token_bad_claim", "the JWT subject must be '<tenant>/<agent>' of its own tenant"
        )
    return SessionClaims(
        sid=str(sid),
        tenant=tenant,
        agent=agent,
        agent_role=str(role),
        sub=sub,
        exp=int(claims["exp"]),
        iat=int(claims["iat"]),
        jti=jti,
    )
