"""The seal ciphertext format: strict parsing, canonical form, AAD binding."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clawql_secrets.errors import InputError
from clawql_secrets.hsm import envelope

BLOB = bytes(range(40))
GOOD = "clawql:v3:" + base64.b64encode(BLOB).decode()


def test_round_trip() -> None:
    text = envelope.format_ciphertext(3, BLOB)
    assert text == GOOD
    assert envelope.parse_ciphertext(text) == envelope.Envelope(3, BLOB)


def test_key_id_is_the_middle_part_as_openbao_expects() -> None:
    assert envelope.format_ciphertext(12, BLOB).split(":")[1] == "v12"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("clawql:v1", id="two_parts"),
        pytest.param(GOOD + ":extra", id="four_parts"),
        pytest.param(GOOD.replace("clawql:", "vault:"), id="foreign_prefix"),
        pytest.param(GOOD.replace(":v3:", ":3:"), id="version_without_v"),
        pytest.param(GOOD.replace(":v3:", ":v0:"), id="version_zero"),
        pytest.param(GOOD.replace(":v3:", ":v03:"), id="version_leading_zero"),
        pytest.param(GOOD.replace(":v3:", ":v-3:"), id="version_negative"),
        pytest.param(GOOD.replace(":v3:", ":v9999999999:"), id="version_too_large"),
        pytest.param("clawql:v1:not base64!", id="body_not_base64"),
        pytest.param(
            "clawql:v1:" + base64.urlsafe_b64encode(b"\xff" * 30).decode(), id="urlsafe_alphabet"
        ),
        pytest.param(GOOD.rstrip("=") + "A", id="body_non_canonical"),
        pytest.param(GOOD + "\n", id="trailing_newline"),
        pytest.param("clawql:v1:" + base64.b64encode(b"x" * 27).decode(), id="body_too_short"),
        pytest.param("clawql:v1:" + "é" * 40, id="non_ascii_body"),
        pytest.param("clawql:v1:" + "A" * (envelope.MAX_CIPHERTEXT_CHARS + 1), id="too_long"),
    ],
)
def test_garbage_is_refused(text: str) -> None:
    with pytest.raises(InputError):
        envelope.parse_ciphertext(text)


def test_format_refuses_short_blob_and_bad_version() -> None:
    with pytest.raises(InputError):
        envelope.format_ciphertext(1, b"short")
    with pytest.raises(InputError):
        envelope.format_ciphertext(0, BLOB)


def test_aad_binds_mount_key_and_version() -> None:
    base = envelope.aad_for("transit", "clawql-unseal", 1)
    assert base != envelope.aad_for("transit2", "clawql-unseal", 1)
    assert base != envelope.aad_for("transit", "other", 1)
    assert base != envelope.aad_for("transit", "clawql-unseal", 2)


@pytest.mark.parametrize(
    ("mount", "key"),
    [("transit", "a/b"), ("transit", "a:b"), ("", "k"), ("/transit", "k"), ("t\x00", "k")],
)
def test_aad_refuses_ambiguous_names(mount: str, key: str) -> None:
    with pytest.raises(InputError):
        envelope.aad_for(mount, key, 1)


@given(
    st.integers(1, envelope.MAX_VERSION), st.binary(min_size=envelope.MIN_BLOB_BYTES, max_size=200)
)
def test_property_format_then_parse_is_identity(version: int, blob: bytes) -> None:
    assert envelope.parse_ciphertext(
        envelope.format_ciphertext(version, blob)
    ) == envelope.Envelope(version, blob)


@given(st.text(max_size=120))
def test_property_parse_accepts_only_canonical_text(text: str) -> None:
    try:
        parsed = envelope.parse_ciphertext(text)
    except InputError:
        return
    assert envelope.format_ciphertext(parsed.version, parsed.blob) == text
