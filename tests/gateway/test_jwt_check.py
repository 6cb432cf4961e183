"""JWT attack table: each forged or stale session token is refused with its own code."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from clawql_secrets.errors import AuthenticationError, InputError
from clawql_secrets.gateway import jwt_check, session_issuer
from clawql_secrets.gateway.errors import TokenMalformed, TokenRejected
from clawql_secrets.gateway.jwt_check import JWTPolicy, KeySet
from clawql_secrets.issuer import LocalIssuer

ISS = session_issuer.SESSIONS_ISSUER_URL
AUD = session_issuer.SESSION_AUDIENCE
POLICY = JWTPolicy(ISS, AUD)


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> LocalIssuer:
    return session_issuer.load_issuer(tmp_path_factory.mktemp("sess"))


@pytest.fixture(scope="module")
def keys(issuer: LocalIssuer) -> KeySet:
    return KeySet(issuer.jwks())


def _b64(obj: object) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims(issuer: LocalIssuer, **over: object) -> dict[str, object]:
    now = int(time.time())
    c: dict[str, object] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "acme/bot",
        "sid": "s" * 24,
        "tenant": "acme",
        "agent_role": "analyst",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "j1",
    }
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def _sign(issuer: LocalIssuer, claims: dict[str, object], **headers: object) -> str:
    return jwt.encode(
        claims,
        issuer._key,
        algorithm="ES256",
        headers={"kid": issuer.kid, **headers},
    )


def test_valid_session_token(issuer: LocalIssuer, keys: KeySet) -> None:
    tok = session_issuer.issue(issuer, tenant="acme", agent="bot", role="analyst", ttl=600)
    c = jwt_check.verify_session(tok, keys, POLICY, now=time.time())
    assert (c.tenant, c.agent, c.agent_role, c.sub) == ("acme", "bot", "analyst", "acme/bot")


def test_underscores_and_agent_hyphens_are_accepted(issuer: LocalIssuer, keys: KeySet) -> None:
    tok = session_issuer.issue(
        issuer, tenant="acme_eu", agent="data-reader_1", role="data_reader", ttl=600
    )
    c = jwt_check.verify_session(tok, keys, POLICY, now=time.time())
    assert (c.tenant, c.agent, c.agent_role) == ("acme_eu", "data-reader_1", "data_reader")


def _alg_none(i: LocalIssuer) -> str:
    return f"{_b64({'alg': 'none', 'kid': i.kid})}.{_b64(_claims(i))}.x"


def _hs256_with_public_key(i: LocalIssuer) -> str:
    header = _b64({"alg": "HS256", "kid": i.kid, "typ": "JWT"})
    body = _b64(_claims(i))
    import hashlib
    import hmac

    mac = hmac.new(i.public_pem().encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(mac)}"


def _tampered_tenant(i: LocalIssuer) -> str:
    h, _, s = _sign(i, _claims(i)).split(".")
    return f"{h}.{_b64(_claims(i, tenant='globex', sub='globex/bot'))}.{s}"


def _unknown_kid(i: LocalIssuer) -> str:
    other = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(_claims(i), other, algorithm="ES256", headers={"kid": "not-a-known-kid"})


def _known_kid_other_key(i: LocalIssuer) -> str:
    other = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(_claims(i), other, algorithm="ES256", headers={"kid": i.kid})


ATTACKS: dict[str, tuple[Callable[[LocalIssuer], str], type[Exception], str]] = {
    "alg_none": (_alg_none, TokenRejected, "token_alg_refused"),
    "hs256_signed_with_public_key": (_hs256_with_public_key, TokenRejected, "token_alg_refused"),
    "expired": (
        lambda i: _sign(i, _claims(i, iat=int(time.time()) - 900, exp=int(time.time()) - 120)),
        TokenRejected,
        "token_expired",
    ),
    "not_yet_valid": (
        lambda i: _sign(i, _claims(i, nbf=int(time.time()) + 300)),
        TokenRejected,
        "token_not_yet_valid",
    ),
    "issued_in_future": (
        lambda i: _sign(i, _claims(i, iat=int(time.time()) + 300)),
        TokenRejected,
        "token_not_yet_valid",
    ),
    "wrong_issuer": (
        lambda i: _sign(i, _claims(i, iss="https://evil.example")),
        TokenRejected,
        "token_wrong_issuer",
    ),
    "wrong_audience": (
        lambda i: _sign(i, _claims(i, aud="openbao")),
        TokenRejected,
        "token_wrong_audience",
    ),
    "unknown_kid": (_unknown_kid, TokenRejected, "token_unknown_kid"),
    "known_kid_wrong_key": (_known_kid_other_key, TokenRejected, "token_bad_signature"),
    "tampered_tenant_claim": (_tampered_tenant, TokenRejected, "token_bad_signature"),
    "oversized": (
        lambda i: _sign(i, _claims(i, pad="x" * 5000)),
        TokenMalformed,
        "token_too_large",
    ),
    "garbage_base64": (lambda i: "!!!.@@@.###", TokenMalformed, "token_malformed"),
    "base64_not_json": (
        lambda i: f"{_b64(b'hello')}.{_b64(b'x')}.AAAA",
        TokenMalformed,
        "token_malformed",
    ),
    "two_segments": (lambda i: "abc.def", TokenMalformed, "token_malformed"),
    "missing_sid": (lambda i: _sign(i, _claims(i, sid=None)), TokenRejected, "token_missing_claim"),
    "missing_tenant": (
        lambda i: _sign(i, _claims(i, tenant=None)),
        TokenRejected,
        "token_missing_claim",
    ),
    "subject_of_other_tenant": (
        lambda i: _sign(i, _claims(i, sub="globex/bot")),
        TokenRejected,
        "token_bad_claim",
    ),
    "subject_not_unique_across_tenants": (
        lambda i: _sign(i, _claims(i, sub="bot")),
        TokenRejected,
        "token_bad_claim",
    ),
    "lifetime_too_long": (
        lambda i: _sign(i, _claims(i, exp=int(time.time()) + 10 * 86400)),
        TokenRejected,
        "token_lifetime_too_long",
    ),
    "exp_not_a_number": (
        lambda i: _sign(i, _claims(i, exp="tomorrow")),
        TokenRejected,
        "token_bad_claim",
    ),
    # ``$`` in a pattern matches before a final newline: claims are checked whole.
    "tenant_trailing_newline": (
        lambda i: _sign(i, _claims(i, tenant="acme\n", sub="acme\n/bot")),
        TokenRejected,
        "token_bad_claim",
    ),
    "agent_trailing_newline": (
        lambda i: _sign(i, _claims(i, sub="acme/bot\n")),
        TokenRejected,
        "token_bad_claim",
    ),
    "role_trailing_newline": (
        lambda i: _sign(i, _claims(i, agent_role="analyst\n")),
        TokenRejected,
        "token_bad_claim",
    ),
    "tenant_path_traversal": (
        lambda i: _sign(i, _claims(i, tenant="../globex", sub="../globex/bot")),
        TokenRejected,
        "token_bad_claim",
    ),
    # One name grammar (clawql_secrets.names): what `apply` refuses, the gateway refuses.
    "tenant_with_hyphen": (
        lambda i: _sign(i, _claims(i, tenant="acme-eu", sub="acme-eu/bot")),
        TokenRejected,
        "token_bad_claim",
    ),
    "tenant_longer_than_31": (
        lambda i: _sign(i, _claims(i, tenant="a" * 32, sub="a" * 32 + "/bot")),
        TokenRejected,
        "token_bad_claim",
    ),
    "tenant_starting_with_digit": (
        lambda i: _sign(i, _claims(i, tenant="1acme", sub="1acme/bot")),
        TokenRejected,
        "token_bad_claim",
    ),
    "role_with_hyphen": (
        lambda i: _sign(i, _claims(i, agent_role="data-reader")),
        TokenRejected,
        "token_bad_claim",
    ),
    "role_naming_a_session_anchor": (
        lambda i: _sign(i, _claims(i, agent_role="analyst.session")),
        TokenRejected,
        "token_bad_claim",
    ),
    "agent_with_dot": (
        lambda i: _sign(i, _claims(i, sub="acme/bot.v2")),
        TokenRejected,
        "token_bad_claim",
    ),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_refused(name: str, issuer: LocalIssuer, keys: KeySet) -> None:
    make, kind, code = ATTACKS[name]
    token = make(issuer)
    with pytest.raises(kind) as info:
        jwt_check.verify_session(token, keys, POLICY, now=time.time())
    assert getattr(info.value, "code", None) == code
    assert isinstance(info.value, InputError | AuthenticationError)


def test_clock_skew_is_bounded(issuer: LocalIssuer, keys: KeySet) -> None:
    now = int(time.time())
    tok = _sign(issuer, _claims(issuer, iat=now - 600, nbf=now - 600, exp=now - 10))
    jwt_check.verify_session(tok, keys, POLICY, now=now)  # within 30 s of skew
    with pytest.raises(TokenRejected):
        jwt_check.verify_session(tok, keys, POLICY, now=now + 31)


def test_jwks_with_symmetric_key_refused() -> None:
    with pytest.raises(TokenMalformed) as info:
        KeySet({"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0", "alg": "HS256"}]})
    assert info.value.code == "jwks_invalid"


def test_empty_jwks_refused() -> None:
    with pytest.raises(TokenMalformed):
        KeySet({"keys": []})


@pytest.mark.parametrize(
    "ttl", ["0", "2h", "15 minutes", "-5m", ""], ids=["zero", "too_long", "words", "neg", "empty"]
)
def test_bad_session_ttl_refused(ttl: str) -> None:
    with pytest.raises(InputError):
        session_issuer.parse_ttl(ttl)


@pytest.mark.parametrize(
    ("tenant", "agent", "role"),
    [
        ("Acme", "a", "r"),
        ("acme", "a/b", "r"),
        ("acme", "a", "r r"),
        ("", "a", "r"),
        ("acme-eu", "a", "r"),
        ("acme", "a", "data-reader"),
        ("acme", "a", "analyst.session"),
        ("acme", "../a", "r"),
    ],
    ids=[
        "upper_tenant",
        "slash_agent",
        "space_role",
        "empty_tenant",
        "hyphen_tenant",
        "hyphen_role",
        "dot_role",
        "dotdot_agent",
    ],
)
def test_bad_session_names_refused(issuer: LocalIssuer, tenant: str, agent: str, role: str) -> None:
    with pytest.raises(InputError):
        session_issuer.issue(issuer, tenant=tenant, agent=agent, role=role, ttl=60)


def test_session_issue_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from clawql_secrets.cli import main

    rc = main(
        [
            "session",
            "issue",
            "--tenant",
            "acme",
            "--agent",
            "bot",
            "--role",
            "analyst",
            "--ttl",
            "15m",
            "--data-dir",
            str(tmp_path),
        ]
    )
    assert rc == 0
    token = capsys.readouterr().out.strip()
    keys = KeySet(json.loads((tmp_path / "sessions-issuer" / "jwks.json").read_text()))
    c = jwt_check.verify_session(token, keys, POLICY, now=time.time())
    assert c.exp - c.iat == 900
    assert (tmp_path / "sessions-issuer").resolve() != (tmp_path / "issuer").resolve()
