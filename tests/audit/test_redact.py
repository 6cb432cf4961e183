"""Redaction: every secret kind in every position, real samples, look-alikes, recall.

All secrets here are generated fakes of the right shape. A case fails if the
secret (or, for key=value and URLs, its value part) survives anywhere in the
redacted entry, keys included, or if the record of what was redacted is
wrong.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import string
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clawql_secrets.audit import recognizers
from clawql_secrets.audit.redact import REDACTIONS_KEY, Finding, RedactionConfig, Redactor
from clawql_secrets.errors import InputError

SAMPLES_DIR = Path(__file__).parent / "data" / "openbao-audit-samples"
HMAC = "hmac-sha256:" + "d59cc0a206881b3cf752ed558ab05a7c53ee2c9320cc9f5233eadada5d5484ad"

_rng = random.Random(20261128)
ALNUM = string.ascii_letters + string.digits
B64URL = ALNUM + "-_"
UPPER_DIGITS = string.ascii_uppercase + string.digits


def _rand(alphabet: str, n: int, rng: random.Random = _rng) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(rng: random.Random = _rng) -> str:
    header = _b64url(b'{"alg":"RS256","kid":"' + _rand(ALNUM, 8, rng).encode() + b'"}')
    payload = _b64url(
        json.dumps({"sub": "agent-7", "aud": "openbao", "n": _rand(ALNUM, 12, rng)}).encode()
    )
    return f"{header}.{payload}.{_rand(B64URL, 86, rng)}"


def make_pem(rng: random.Random = _rng, label: str = "PRIVATE KEY") -> str:
    body = base64.b64encode(rng.randbytes(600)).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def make_aws_secret(rng: random.Random = _rng) -> str:
    while True:
        s = _rand(ALNUM + "/+", 40, rng)
        classes = (str.isupper, str.islower, str.isdigit)
        if all(any(is_class(c) for c in s) for is_class in classes):
            return s


def make_gcp_key_b64(rng: random.Random = _rng, indent: int | None = None) -> str:
    doc = {
        "type": "service_account",
        "project_id": "clawql",
        "private_key_id": _rand("0123456789abcdef", 40, rng),
        "private_key": make_pem(rng),
        "client_email": "agent@clawql.iam.gserviceaccount.com",
    }
    seps = (",", ":") if indent is None and rng.random() < 0.5 else (", ", ": ")
    return base64.b64encode(json.dumps(doc, indent=indent, separators=seps).encode()).decode()


# kind -> (text containing the secret, the part that must disappear, single line?)
SECRETS: dict[str, tuple[str, str]] = {}


def _secret(name: str, text: str, core: str | None = None) -> None:
    SECRETS[name] = (text, core or text)


_secret("openbao_service_token", "s." + _rand(ALNUM, 24))
_secret("openbao_batch_token", "b." + _rand(B64URL, 159))
_secret("vault_hvs_token", "hvs." + _rand(B64URL, 91))
_secret("vault_hvb_token", "hvb." + _rand(B64URL, 138))
_secret("jwt", make_jwt())
_secret("pem_private_key", make_pem())
_secret("pem_rsa_private_key", make_pem(label="RSA PRIVATE KEY"))
_PEM_B64 = base64.b64encode(make_pem().encode()).decode()
_secret("pem_private_key_base64", _PEM_B64)
_secret("gcp_service_account_key_base64", make_gcp_key_b64(indent=2))
_secret("aws_access_key_id", "AKIA" + _rand(string.ascii_uppercase + string.digits, 16))
_secret("aws_sts_access_key_id", "ASIA" + _rand(string.ascii_uppercase + string.digits, 16))
_secret("aws_secret_access_key", make_aws_secret())
_PW = "Sup3r-" + _rand(ALNUM, 10)
_secret("url_password", f"postgresql://app:{_PW}@db.internal:5432/app", _PW)
_secret("redis_url_password_no_user", f"redis://:{_PW}x@cache:6379/0", _PW + "x")
_secret("password_equals", f"DB_PASSWORD={_PW}y", _PW + "y")
_secret("json_client_secret", f'{{"client_secret": "{_PW} z z"}}', f"{_PW} z z")
_secret("escaped_json_password", f'{{\\"password\\":\\"{_PW}q\\"}}', _PW + "q")
_secret("yaml_api_key", f"api_key: '{_PW}k'", _PW + "k")
_secret("generic_token_equals", f"?token={_PW}t&x=1", _PW + "t")
_secret("bearer_header", f"Authorization: Bearer {_PW}{_rand(ALNUM, 20)}", _PW)
_BASIC = base64.b64encode(b"user:" + _PW.encode()).decode()
_secret("basic_header", f"authorization: Basic {_BASIC}", _BASIC)

KIND_OF = {
    "openbao_service_token": "openbao_token",
    "openbao_batch_token": "openbao_token",
    "vault_hvs_token": "openbao_token",
    "vault_hvb_token": "openbao_token",
    "jwt": "jwt",
    "pem_private_key": "pem_private_key",
    "pem_rsa_private_key": "pem_private_key",
    "pem_private_key_base64": "pem_private_key",
    "gcp_service_account_key_base64": "gcp_service_account_key",
    "aws_access_key_id": "aws_access_key_id",
    "aws_sts_access_key_id": "aws_access_key_id",
    "aws_secret_access_key": "aws_secret_access_key",
    "url_password": "url_password",
    "redis_url_password_no_user": "url_password",
    "password_equals": "secret_assignment",
    "json_client_secret": "secret_assignment",
    "escaped_json_password": "secret_assignment",
    "yaml_api_key": "secret_assignment",
    "generic_token_equals": "secret_assignment",
    "bearer_header": "secret_assignment",
    "basic_header": "secret_assignment",
}


def _place_nested(text: str) -> tuple[dict[str, Any], str]:
    entry = {"request": {"path": "kv/x", "data": {"config": {"notes": f"see {text} here"}}}}
    return entry, "/request/data/config/notes"


def _place_list(text: str) -> tuple[dict[str, Any], str]:
    entry = {"request": {"data": {"items": ["a", {"b": [text]}]}}}
    return entry, "/request/data/items/1/b/0"


def _place_url(text: str) -> tuple[dict[str, Any], str]:
    entry = {"response": {"data": {"callback": f"https://api.example.com/cb?ref=1&v={text}#x"}}}
    return entry, "/response/data/callback"


def _place_error(text: str) -> tuple[dict[str, Any], str]:
    entry = {"error": f"1 error occurred:\n\t* failed to connect: {text}\n\n"}
    return entry, "/error"


def _place_response_auth(text: str) -> tuple[dict[str, Any], str]:
    entry = {"response": {"auth": {"metadata": {"note": text}}}}
    return entry, "/response/auth/metadata/note"


def _place_key(text: str) -> tuple[dict[str, Any], str]:
    return {"request": {"headers": {text: ["x"]}}}, "/request/headers"


POSITIONS = {
    "nested_data": _place_nested,
    "list_item": _place_list,
    "inside_url": _place_url,
    "error_message": _place_error,
    "response_auth": _place_response_auth,
    "dict_key": _place_key,
}
_URL_UNSAFE = {"pem_private_key", "pem_rsa_private_key", "json_client_secret", "yaml_api_key"}
_URL_UNSAFE |= {"escaped_json_password", "bearer_header", "basic_header", "url_password"}
_URL_UNSAFE |= {"redis_url_password_no_user", "generic_token_equals", "password_equals"}


def _cases() -> Iterator[Any]:
    for secret in SECRETS:
        for position in POSITIONS:
            if position == "inside_url" and secret in _URL_UNSAFE:
                continue
            if position == "dict_key" and "\n" in SECRETS[secret][0]:
                continue
            yield pytest.param(secret, position, id=f"{secret}-in-{position}")


def strings_of(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from strings_of(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from strings_of(v)


def resolve(entry: Any, pointer: str) -> Any:
    node = entry
    for token in pointer.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        node = node[int(token)] if isinstance(node, list) else node[token]
    return node


def assert_gone(redacted: dict[str, Any], core: str) -> None:
    for s in strings_of(redacted):
        assert core not in s
    # a partial leak of a long secret is a leak too
    if len(core) >= 24:
        for s in strings_of(redacted):
            assert core[4:20] not in s


def load_samples() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    decoder = json.JSONDecoder()
    for path in sorted(SAMPLES_DIR.glob("*.json")):
        text = path.read_text()
        pos = 0
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos >= len(text):
                break
            obj, pos = decoder.raw_decode(text, pos)
            entries.append(obj)
    return entries


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor()


@pytest.fixture(scope="module")
def samples() -> list[dict[str, Any]]:
    found = load_samples()
    assert found, f"no OpenBao audit samples in {SAMPLES_DIR}"
    return found


# -- every secret kind in every position --------------------------------------


@pytest.mark.parametrize(("secret", "position"), list(_cases()))
def test_secret_is_redacted_and_recorded(redactor: Redactor, secret: str, position: str) -> None:
    text, core = SECRETS[secret]
    entry, where = POSITIONS[position](text)
    out = redactor.redact(entry)
    assert_gone(out.entry, core)
    kinds = {f.type for f in out.findings}
    assert KIND_OF[secret] in kinds
    if position == "dict_key":
        assert all(f.path.startswith(where + "/") for f in out.findings)
    else:
        assert {f.path for f in out.findings} == {where}
        assert "[REDACTED:" in resolve(out.entry, where)
    assert out.entry[REDACTIONS_KEY] == [f.to_json() for f in out.findings]


def test_redacted_key_value_keeps_its_key_name(redactor: Redactor) -> None:
    out = redactor.redact({"error": "dial failed: postgresql://app:pw-1234567@db:5432/x"})
    assert out.entry["error"] == "dial failed: postgresql://app:[REDACTED:url_password]@db:5432/x"
    out = redactor.redact({"error": 'config {"password": "a b c", "user": "app"}'})
    assert (
        out.entry["error"] == 'config {"password": "[REDACTED:secret_assignment]", "user": "app"}'
    )


# -- structured rules ------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "pointer", "kind"),
    [
        pytest.param(
            {"response": {"data": {"password": "A1a-plain"}}},
            "/response/data/password",
            "secret_field",
            id="password_field_in_response_data",
        ),
        pytest.param(
            {"request": {"data": {"db": {"Secret_Key": "plain"}}}},
            "/request/data/db/Secret_Key",
            "secret_field",
            id="secret_key_field_any_case_nested",
        ),
        pytest.param(
            {"response": {"auth": {"client_token": "not-hmacd"}}},
            "/response/auth/client_token",
            "secret_field",
            id="unhmacd_client_token_in_response_auth",
        ),
        pytest.param(
            {"response": {"wrap_info": {"token": "not-hmacd"}}},
            "/response/wrap_info/token",
            "secret_field",
            id="unhmacd_wrapping_token",
        ),
        pytest.param(
            {"request": {"data": {"pin": 123456}}},
            "/request/data/pin",
            "secret_field",
            id="numeric_pin",
        ),
        pytest.param(
            {"request": {"path": "sys/init"}, "response": {"data": {"keys": ["s1", "s2"]}}},
            "/response/data/keys/1",
            "sys_secret",
            id="unseal_key_shares_from_sys_init",
        ),
        pytest.param(
            {"request": {"path": "sys/unseal", "data": {"key": "share"}}},
            "/request/data/key",
            "sys_secret",
            id="unseal_key_share_submitted",
        ),
        pytest.param(
            {"request": {"data": {"credentials": {"type": "service_account", "k": "v"}}}},
            "/request/data/credentials/k",
            "secret_field",
            id="credentials_object_every_leaf",
        ),
        pytest.param(
            {"request": {"data": {"plaintext": "aGVsbG8="}}},
            "/request/data/plaintext",
            "secret_field",
            id="transit_plaintext",
        ),
        pytest.param(
            {"response": {"data": {"ciphertext": "vault:v1:abcd"}}},
            "/response/data/ciphertext",
            "secret_field",
            id="transit_ciphertext_outlives_its_key",
        ),
        pytest.param(
            {"request": {"headers": {"X-Vault-Token": ["x1"]}}},
            "/request/headers/X-Vault-Token/0",
            "secret_field",
            id="token_header",
        ),
    ],
)
def test_secret_field_names_are_masked(
    redactor: Redactor, entry: dict[str, Any], pointer: str, kind: str
) -> None:
    out = redactor.redact(entry)
    assert resolve(out.entry, pointer) == f"[REDACTED:{kind}]"
    assert Finding(kind, pointer) in out.findings


def test_hmac_values_under_secret_fields_stay(redactor: Redactor) -> None:
    entry = {"response": {"data": {"password": HMAC, "username": HMAC, "keys": [HMAC, ""]}}}
    out = redactor.redact(entry)
    assert out.findings == ()
    assert out.entry["response"] == entry["response"]


def test_booleans_and_nulls_under_secret_fields_stay(redactor: Redactor) -> None:
    out = redactor.redact({"request": {"data": {"password": None, "token": True}}})
    assert out.findings == ()


def _kv(path: str, operation: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "response",
        "request": {"mount_point": "secret/", "mount_type": "kv", "path": path,
                    "operation": operation},
        "response": {"data": data},
    }  # fmt: skip


def test_kv2_secret_values_masked_whatever_their_names(redactor: Redactor) -> None:
    entry = _kv("secret/data/tenants/acme/agents/a1/apikey", "read",
                {"data": {"stripe": "sk_live_x", "n": 42}, "metadata": {"version": 3}})  # fmt: skip
    out = redactor.redact(entry)
    assert out.entry["response"]["data"]["data"] == {
        "stripe": "[REDACTED:kv_value]",
        "n": "[REDACTED:kv_value]",
    }
    assert out.entry["response"]["data"]["metadata"] == {"version": 3}
    assert {f.type for f in out.findings} == {"kv_value"}


def test_kv1_and_cubbyhole_whole_data_masked(redactor: Redactor) -> None:
    out = redactor.redact(_kv("secret/app/db", "read", {"anything": "v"}))
    assert out.entry["response"]["data"] == {"anything": "[REDACTED:kv_value]"}
    cubby = _kv("cubbyhole/x", "read", {"k": "v"})
    cubby["request"].update(mount_type="cubbyhole", mount_point="cubbyhole/")
    assert redactor.redact(cubby).entry["response"]["data"] == {"k": "[REDACTED:kv_value]"}


@pytest.mark.parametrize(
    ("path", "operation"),
    [
        pytest.param("secret/metadata/tenants/acme", "list", id="kv2_list_names_kept"),
        pytest.param("secret/metadata/app", "read", id="kv2_metadata_kept"),
        pytest.param("secret/app", "list", id="kv1_list_names_kept"),
    ],
)
def test_kv_names_and_metadata_are_not_masked(
    redactor: Redactor, path: str, operation: str
) -> None:
    entry = _kv(path, operation, {"keys": ["db", "stripe"], "versions": {"1": {"x": "y"}}})
    out = redactor.redact(entry)
    assert out.findings == ()
    assert out.entry["response"] == entry["response"]


# -- the real samples -----------------------------------------------------------


def test_real_samples_keep_every_field(redactor: Redactor, samples: list[dict[str, Any]]) -> None:
    for entry in samples:
        out = redactor.redact(entry)
        assert out.findings == ()
        kept = dict(out.entry)
        assert kept.pop(REDACTIONS_KEY) == []
        assert kept == entry


def test_real_samples_with_planted_secrets_keep_path_operation_metadata(
    redactor: Redactor, samples: list[dict[str, Any]]
) -> None:
    token = SECRETS["openbao_service_token"][0]
    for original in samples:
        entry = copy.deepcopy(original)
        entry["error"] = f"lookup of {token} failed"
        entry["request"].setdefault("data", {})["note"] = SECRETS["url_password"][0]
        out = redactor.redact(entry).entry
        assert_gone(out, token)
        assert_gone(out, SECRETS["url_password"][1])
        for field in ("path", "operation", "mount_type", "remote_address", "id"):
            assert out["request"].get(field) == original["request"].get(field)
        assert out.get("auth") == original.get("auth")
        assert out["type"] == original["type"]


# -- look-alikes that must stay ---------------------------------------------------

_CERT = make_pem(random.Random(7), "CERTIFICATE").replace(
    "\n-----END", "\nAb3dEfGhIjKlMnOpQrStUvWxYz0123456789AbCd\n-----END"
)

LOOKALIKES = {
    "uuid": "0d46dd5c-e727-6dad-18c4-d901991f4c05",
    "sha256_hex": "a39c56df16d0b78de3d8d1a3bd5f9ec365478a81b7288922202bf3c58bf44ceb",
    "sha1_hex_upper": "2F5F3CAE022F22FB1EC87017EF23E039D5684C3E",
    "hmac_value": HMAC,
    "hmac_inside_text": f"token {HMAC} was revoked",
    "lease_id": "database/creds/app/lgfXmXxI5eCmhOOcY1USKPBd",
    "mount_accessor": "auth_jwt_78ca3211",
    "clear_token_accessor": "Yq2mW0OeJc7rI6X4bY2fQ1zN",
    "timestamp": "2026-11-28T19:36:21.432152837Z",
    "plugin_version": "v2.7.2+builtin.bao",
    "denied_error": "1 error occurred:\n\t* permission denied\n\n",
    "token_word_in_error": "error validating token: token is expired",
    "connection_url_template": "postgresql://{{username}}:{{password}}@db:5432/app",
    "password_policy_name": "password_policy=strong",
    "masked_password": "password=********",
    "public_certificate_pem": _CERT,
    "public_cert_base64_blob": base64.b64encode(random.Random(3).randbytes(900)).decode(),
    "url_without_password": "https://user@example.com:8200/v1/sys/health",
    "path_with_token_word": "auth/token/lookup-self",
    "display_name": "jwt-agent-7",
    "basic_english": "basic authentication is disabled for this mount",
}


@pytest.mark.parametrize("value", [pytest.param(v, id=k) for k, v in LOOKALIKES.items()])
def test_lookalike_is_not_redacted(redactor: Redactor, value: str) -> None:
    out = redactor.redact({"request": {"data": {"note": value}}, "error": value})
    assert out.findings == ()
    assert out.entry["error"] == value


# -- properties of the redactor ------------------------------------------------------


def test_redaction_is_deterministic_and_never_mutates_input(redactor: Redactor) -> None:
    entry: dict[str, Any] = {
        "error": "x " + SECRETS["jwt"][0],
        "request": {"data": {"password": "p", "l": [SECRETS["aws_secret_access_key"][0]]}},
    }
    before = copy.deepcopy(entry)
    a = redactor.redact(entry)
    b = Redactor().redact(entry)
    assert entry == before
    assert a == b
    assert json.dumps(a.entry, sort_keys=True) == json.dumps(b.entry, sort_keys=True)


def test_findings_never_hold_values(redactor: Redactor) -> None:
    text, core = SECRETS["url_password"]
    out = redactor.redact({"error": text, "request": {"data": {"password": core}}})
    assert core not in json.dumps([f.to_json() for f in out.findings])
    assert core not in repr(out.findings)


def test_redacted_output_matches_no_recognizer(redactor: Redactor) -> None:
    for text, _ in SECRETS.values():
        out = redactor.redact({"error": f"a {text} b {text}"})
        assert recognizers.EXACT.search(out.entry["error"]) is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        pytest.param(["not", "an", "object"], "JSON object", id="not_an_object"),
        pytest.param({"redactions": []}, "redactions", id="forged_redactions_record"),
        pytest.param({"request": {"data": {"p": {b"hunter2"}}}}, "non-JSON", id="set_value"),
        pytest.param({"request": {"data": {1: "hunter2"}}}, "non-string key", id="int_key"),
    ],
)
def test_bad_entries_are_refused_without_echoing_values(
    redactor: Redactor, entry: Any, message: str
) -> None:
    with pytest.raises(InputError) as exc:
        redactor.redact(entry)
    assert message in str(exc.value)
    assert "hunter2" not in str(exc.value)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("token" * 40_000 + "=", id="repeated_key_word"),
        pytest.param("a." * 100_000 + "password", id="dotted_run_then_key"),
        pytest.param("x_" * 100_000 + "password" + " " * 1000, id="key_without_separator"),
        pytest.param("eyJ" + "a" * 200_000, id="jwt_header_without_dots"),
        pytest.param(("-----BEGIN " + "PRIVATE KEY-----") * 5_000, id="pem_headers_without_end"),
        pytest.param("http://a:" + "b" * 200_000, id="url_without_at"),
        pytest.param(("A1b/" * 10 + " ") * 5_000, id="many_aws_secret_lookalikes"),
    ],
)
def test_hostile_long_strings_redact_in_linear_time(redactor: Redactor, text: str) -> None:
    t0 = time.perf_counter()
    out = redactor.redact({"request": {"path": text}})
    assert time.perf_counter() - t0 < 5
    assert recognizers.EXACT.search(out.entry["request"]["path"]) is None


def test_too_deep_subtree_is_masked_not_walked() -> None:
    deep: dict[str, Any] = {"leaf": "s." + "A1" * 12}
    for _ in range(20):
        deep = {"d": deep}
    out = Redactor(RedactionConfig(max_depth=8)).redact({"request": {"data": deep}})
    assert any(f.type == "too_deep" for f in out.findings)
    assert_gone(out.entry, "A1" * 12)


# -- recall: the pre-filter never misses what Presidio alone finds -----------------

_FILLER = [
    "error", "failed to", ":", "=", '"', "'", "\\n", "\n", "\t", " ", "{", "}", "[", "]",
    "/", "?", "&", "@", "-", "_", ".", ",", "token", "password", "key", "secret", "auth",
    "Bearer", "http://", "s.", "b.", "hvs.", "eyJ", "AKIA", "-----BEGIN", "é", "ß", "\u212a",
    "\u017f", "x-vault-token", "api_key", "PRIVATE KEY", "LS0tLS1CRUdJTi",
]  # fmt: skip


def _wrap(secret: str, core: str, rng: random.Random) -> str:
    forms = [
        lambda: secret,
        lambda: json.dumps({"v": secret})[1:-1],
        lambda: json.dumps(json.dumps({"password": core})),
        lambda: f"{rng.choice(['token', 'PASSWORD', 'x-api-key', 'secret'])}={core}",
        lambda: f'"{rng.choice(["token", "client_secret", "auth"])}": "{core}"',
        lambda: f"Authorization: {rng.choice(['Bearer', 'token', ''])} {core}",
        lambda: f"{rng.choice(['Bearer', 'bearer', 'BEARER'])}{rng.choice([' ', chr(9)])}{core}",
        lambda: f"redis://{rng.choice(['', 'u'])}:{core}@h",
    ]
    return rng.choice(forms)()


def _mutate(s: str, rng: random.Random) -> str:
    """Near misses: boundaries, truncations, case flips, inserted characters."""
    if not s:
        return s
    i = rng.randrange(len(s))
    op = rng.randrange(5)
    if op == 0:
        return s[:i]
    if op == 1:
        return s[i:]
    if op == 2:
        return s[:i] + s[i].swapcase() + s[i + 1 :]
    if op == 3:
        return s[:i] + rng.choice(_FILLER) + s[i:]
    return s[:i] + s[i + 1 :]


def recall_corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    fresh = [
        lambda: "s." + _rand(ALNUM, 24, rng),
        lambda: "b." + _rand(B64URL, rng.randrange(40, 170), rng),
        lambda: "hv" + rng.choice("sbr") + "." + _rand(B64URL, rng.randrange(24, 100), rng),
        lambda: make_jwt(rng),
        lambda: make_pem(rng, rng.choice(["PRIVATE KEY", "EC PRIVATE KEY", "CERTIFICATE"])),
        lambda: base64.b64encode(make_pem(rng).encode()).decode(),
        lambda: make_gcp_key_b64(rng, rng.choice([None, 2])),
        lambda: rng.choice(["AKIA", "ASIA", "AROA"]) + _rand(UPPER_DIGITS, 16, rng),
        lambda: make_aws_secret(rng),
        lambda: _rand(ALNUM + "/+", rng.choice([39, 40, 41]), rng),
        lambda: f"https://u:{_rand(ALNUM, 10, rng)}@example.com/x",
        lambda: _rand(ALNUM + " .:=", rng.randrange(1, 30), rng),
    ]  # fmt: skip
    corpus = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randrange(1, 5)):
            if rng.random() < 0.5:
                secret = rng.choice(fresh)()
                parts.append(_wrap(secret, secret, rng))
            else:
                parts.append(rng.choice(_FILLER))
        s = rng.choice(["", " ", "\n", ": "]).join(parts)
        if rng.random() < 0.4:
            s = _mutate(s, rng)
        corpus.append(s)
    return corpus


def test_prefilter_never_misses_what_presidio_alone_finds(redactor: Redactor) -> None:
    corpus = recall_corpus(3000, seed=1)
    flagged = 0
    for text in corpus:
        alone = redactor.presidio_spans(text)
        if alone:
            flagged += 1
            assert recognizers.PREFILTER.search(text), f"pre-filter missed a {alone[0][2]}"
        if recognizers.EXACT.search(text):
            assert alone, "Presidio missed what its own patterns match"
    # the corpus must exercise the property, not pass vacuously
    assert flagged > len(corpus) // 3


def test_both_paths_redact_identically(redactor: Redactor) -> None:
    slow = Redactor(use_prefilter=False)
    corpus = recall_corpus(300, seed=2)
    entry = {"request": {"data": {f"f{i}": s for i, s in enumerate(corpus)}}}
    assert redactor.redact(entry) == slow.redact(entry)


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(parts=st.lists(st.sampled_from(_FILLER) | st.text(max_size=6), max_size=12))
def test_prefilter_recall_on_arbitrary_fragments(redactor: Redactor, parts: list[str]) -> None:
    text = "".join(parts)
    if redactor.presidio_spans(text):
        assert recognizers.PREFILTER.search(text)
