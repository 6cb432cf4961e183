"""The ciphertext format of the transit seal, and what the AES-GCM tag binds.

OpenBao's transit seal splits a ciphertext on ``:`` into exactly three parts
and keeps the middle one as the key id, so the bridge answers
``clawql:v<N>:<base64(nonce || ciphertext || tag)>``. The version tells the
bridge which key in the token decrypts; the base64 body is opaque to OpenBao.

The additional authenticated data binds mount, key name and version. A blob
made for one key or mount therefore fails authentication under another, and a
ciphertext whose ``v<N>`` was edited fails too, instead of being decrypted by
a different key version that happens to exist.

Pure: values in, values out; every malformed input raises ``InputError``.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from clawql_secrets.errors import InputError

PREFIX = "clawql"
NONCE_BYTES = 12  # 96-bit nonces: the GCM size that needs no GHASH of the IV
TAG_BYTES = 16
MIN_BLOB_BYTES = NONCE_BYTES + TAG_BYTES
MAX_VERSION = 999_999_999
# Larger than any body the bridge accepts; bounds work done on garbage.
MAX_CIPHERTEXT_CHARS = 4 * 1024 * 1024

_VERSION_RE = re.compile(r"v([1-9][0-9]{0,8})")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MOUNT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}(/[A-Za-z0-9][A-Za-z0-9_-]{0,63}){0,7}")
_AAD_DOMAIN = b"clawql-secrets/transit-seal/v1"


@dataclass(frozen=True)
class Envelope:
    """A parsed ciphertext: the key version and ``nonce || ciphertext || tag``."""

    version: int
    blob: bytes


def is_valid_key_name(name: str) -> bool:
    """Key names become PKCS#11 labels ``<name>/v<N>``: no ``/``, ``:`` or spaces."""
    return _NAME_RE.fullmatch(name) is not None


def is_valid_mount(mount: str) -> bool:
    """A mount path as OpenBao sends it, without leading or trailing ``/``."""
    return _MOUNT_RE.fullmatch(mount) is not None


def format_version(version: int) -> str:
    """``v<N>``, the key id OpenBao records for a ciphertext."""
    if not 1 <= version <= MAX_VERSION:
        raise InputError(f"key version must be between 1 and {MAX_VERSION}, not {version}")
    return f"v{version}"


def parse_version(text: str) -> int:
    """The inverse of :func:`format_version`; no leading zeros, no sign."""
    match = _VERSION_RE.fullmatch(text)
    if match is None:
        raise InputError("key version must look like v<N> with N a positive integer")
    return int(match.group(1))


def format_ciphertext(version: int, blob: bytes) -> str:
    """The wire form of ``blob`` encrypted under key version ``version``."""
    if len(blob) < MIN_BLOB_BYTES:
        raise InputError(f"ciphertext blob is shorter than {MIN_BLOB_BYTES} bytes")
    body = base64.b64encode(blob).decode("ascii")
    return f"{PREFIX}:{format_version(version)}:{body}"


def parse_ciphertext(text: str) -> Envelope:
    """Parse and strictly validate a ciphertext; the inverse of :func:`format_ciphertext`.

    Strict means canonical: standard base64 alphabet with padding, nothing
    after it, so that exactly one string denotes each blob.
    """
    if len(text) > MAX_CIPHERTEXT_CHARS:
        raise InputError("ciphertext is too long")
    parts = text.split(":")
    if len(parts) != 3:
        raise InputError("ciphertext must have three ':'-separated parts: clawql:v<N>:<base64>")
    prefix, version_text, body = parts
    if prefix != PREFIX:
        raise InputError(f"ciphertext must start with '{PREFIX}:'")
    version = parse_version(version_text)
    try:
        blob = base64.b64decode(body.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise InputError("ciphertext body is not valid base64") from exc
    if base64.b64encode(blob).decode("ascii") != body:
        raise InputError("ciphertext body is not canonical base64")
    if len(blob) < MIN_BLOB_BYTES:
        raise InputError(f"ciphertext body is shorter than {MIN_BLOB_BYTES} bytes")
    return Envelope(version=version, blob=blob)


def aad_for(mount: str, key_name: str, version: int) -> bytes:
    """The associated data authenticated with every seal ciphertext.

    Fields are NUL-separated; none may contain NUL (mount and key name are
    validated to a restricted alphabet), so the encoding is unambiguous.
    """
    if not is_valid_mount(mount):
        raise InputError("mount must be 1-8 segments of letters, digits, '-' or '_'")
    if not is_valid_key_name(key_name):
        raise InputError("key name must be 1-64 letters, digits, '.', '-' or '_'")
    fields = (_AAD_DOMAIN, mount.encode(), key_name.encode(), format_version(version).encode())
    return b"\x00".join(fields)
