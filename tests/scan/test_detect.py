"""Detector decisions, each case named after what it checks."""

from __future__ import annotations

import base64
import hashlib

import pytest

from clawql_secrets.scan import entropy
from clawql_secrets.scan.detect import Detector, is_reference, length_class, mask, public_name
from tests.scan.corpus import ALNUM, UPPER_DIGITS, rand

DETECTOR = Detector()


def kinds(text: str) -> list[str]:
    return [h.kind for h in DETECTOR.scan_text(text)]


# -- found ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "kind"),
    [
        ("service_token_bare", lambda: "s." + rand(24), "openbao_token"),
        ("aws_key_id_in_ini", lambda: "aws_access_key_id = AK" + "IA" + rand(16, UPPER_DIGITS),
         "aws_access_key_id"),
        ("password_in_url", lambda: "redis://:" + rand(12) + "@cache:6379/0", "url_password"),
        ("yaml_password", lambda: "password: " + rand(10), "secret_assignment"),
        ("unquoted_yaml_token_by_entropy", lambda: "webhook_token: " + rand(32),
         "high_entropy_value"),
        ("hex_signing_key_by_entropy", lambda: "signing_key: " + hashlib.sha256(
            rand(8).encode()).hexdigest(), "high_entropy_value"),
        ("unlabelled_long_token", lambda: "see " + rand(40) + rand(8), "high_entropy_token"),
        ("token_inside_base64", lambda: "blob " + base64.b64encode(
            ("api_key=" + rand(24)).encode()).decode(), "secret_assignment"),
        ("bearer_header", lambda: "Authorization: Bearer " + rand(40), "secret_assignment"),
    ],
)  # fmt: skip
def test_found(name: str, text: object, kind: str) -> None:
    assert callable(text)
    assert kind in kinds(text()), name


def test_line_and_column_are_reported() -> None:
    text = "a: 1\nb: 2\n  db_password: " + rand(16) + "\n"
    [hit] = DETECTOR.scan_text(text)
    # The recognizer matches from the key word ("password"), after the "db_" prefix.
    assert (hit.line, hit.column, hit.kind) == (3, 6, "secret_assignment")


# -- not found ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("env_reference", "password: ${DB_PASSWORD}"),
        ("shell_reference", "DB_PASSWORD=$VAULT_PASSWORD"),
        ("helm_placeholder", 'api_key: "{{ .Values.apiKey }}"'),
        ("angle_placeholder", "password = <your-password>"),
        ("masked", "password: ********"),
        ("json_object_after_auth", '{"auth":{"policy_results":{"allowed":true}}}'),
        ("hmac_value", "token: hmac-sha256:" + hashlib.sha256(b"x").hexdigest()),
        ("sha256_hex", "checksum " + hashlib.sha256(b"y").hexdigest()),
        ("git_commit", "commit " + hashlib.sha1(b"z").hexdigest()),
        ("uuid", "id: 3f1c2a4e-9b7d-4c1e-8f2a-1b2c3d4e5f60"),
        ("digest_prefixed", "integrity: sha512-" + base64.b64encode(bytes(range(64))).decode()),
        ("client_id_is_public", '"client_id":"0DHqvq2D77kL2/JTPSZkTMJbkFVmUu0TzMi0jiXcFy8="'),
        ("slug", "secret_name: clawql-secrets-gateway-internal-tls"),
        ("path_value", "private_key_file: /etc/clawql/tls/listener.key"),
        ("image_digest", "image: quay.io/openbao/openbao@sha256:" + "ab" * 32),
        ("base64_of_text", "motd " + base64.b64encode(b"nothing secret in here, ok").decode()),
    ],
)  # fmt: skip
def test_not_found(name: str, text: str) -> None:
    assert kinds(text) == [], name


def test_public_pem_blocks_are_blanked_but_lines_kept() -> None:
    body = "\n".join(rand(64, ALNUM + "+/") for _ in range(3)) + "\n" + rand(40, ALNUM + "+/")
    cert = f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----"
    text = f"{cert}\npassword: {rand(12)}\n"
    [hit] = DETECTOR.scan_text(text)
    assert (hit.line, hit.kind) == (7, "secret_assignment")


def test_private_pem_block_is_not_blanked() -> None:
    text = "-----BEGIN " + "EC PRIVATE KEY-----\n" + rand(64) + "\n-----END EC PRIVATE KEY-----"
    assert kinds(text) == ["pem_private_key"]


# -- masking ------------------------------------------------------------------------


def test_mask_keeps_only_a_public_format_prefix() -> None:
    value = "hv" + "s." + rand(90)
    preview = mask(value, "openbao_token")
    assert preview == "hvs.**** (64-127 chars)"
    assert mask("hunter2hunter2", "secret_assignment") == "**** (<16 chars)"
    assert mask(rand(40), "high_entropy_token").startswith("**** ")


@pytest.mark.parametrize(
    ("n", "label"), [(1, "<16"), (16, "16-31"), (63, "32-63"), (127, "64-127"), (5000, "1024+")]
)
def test_length_classes(n: int, label: str) -> None:
    assert length_class(n) == f"{label} chars"


def test_reference_and_public_name_rules() -> None:
    assert is_reference("${X}") and is_reference("$X") and is_reference("{{ .x }}")
    assert not is_reference("hunter2")
    assert public_name("client_id") and public_name("x") and public_name("checksum")
    assert not public_name("secret_id") and not public_name("api_key_id")


def test_der_classification() -> None:
    from tests.scan.corpus import _certificate, _pem_private_key

    _, der_key = _pem_private_key()
    _, der_cert, _, _ = _certificate()
    assert entropy.der_kind(der_key) == "private_key"
    assert entropy.der_kind(der_cert) == "certificate"
    assert entropy.der_kind(b"\x30" + bytes(64)) is None


def test_c2sp_public_keys_and_signature_lines_are_public_but_private_keys_are_not() -> None:
    """The audit witness's vkey in the shipper's config and its cosignature objects in the
    store are public by design; the Go-format private key next to them is not."""
    from clawql_secrets.audit.checkpoint import Checkpoint, Ed25519Signer
    from clawql_secrets.audit.cosignature import WitnessSigner

    witness = WitnessSigner.generate("clawql.local/witness")
    log_key = Ed25519Signer.generate("clawql.local/audit")
    config = f'{{"witnesses": [{{"url": "http://127.0.0.1:1", "key": "{witness.witness_key()}"}}],'
    config += f'\n "verifier": "{log_key.verifier_key()}"}}\n'
    assert kinds(config) == []
    cp = Checkpoint("clawql.local/audit/n1", 3, bytes(32))
    assert kinds(witness.cosign(cp.body(), 1_700_000_000).line()) == []
    # Not public: the private key files, a vkey whose hash does not check out, and a
    # 76-byte random blob dressed as a signature line's neighbour.
    assert kinds(f"key: {witness.key_string()}\n") != []
    assert kinds(log_key.key_string() + "\n") != []
    forged = str(witness.witness_key()).replace("+", "+0", 1)[:-1]
    assert kinds(f"token: {forged}\n") != []
    blob = base64.b64encode(rand(57).encode()).decode()
    assert kinds(f"session_secret: {blob}\n") != []
