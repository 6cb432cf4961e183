"""Entropy of one token, and the shapes that are random but not secret.

Hashes, UUIDs, git commit ids and HMACs are as random as keys; they are told
apart by shape (hex alphabet, UUID layout) and by what precedes them
(``sha256:``, ``hmac-sha256:``, ``ssh-ed25519``). Base64 that decodes to text
is not judged: the text is scanned instead. Base64 that decodes to DER is
parsed: certificates and public keys are not secrets, private keys are.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import Counter
from typing import Final

HEX: Final = re.compile(r"[0-9a-fA-F]+")
UUID: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_B64: Final = re.compile(r"[A-Za-z0-9+/]+={0,2}|[A-Za-z0-9_-]+={0,2}")

# Prefixes that announce a digest, an HMAC or a public key: what follows is
# random and public.
NOT_SECRET_BEFORE: Final = re.compile(
    r"(?:hmac-sha(?:1|256|384|512)[:=]|sha(?:1|224|256|384|512)[:=-]|md5[:=-]|blake2b?[:=-]"
    r"|(?:ssh-(?:rsa|dss|ed25519|ed448)|ecdsa-sha2-nistp\d+|sk-ssh-ed25519@openssh\.com"
    r"|sk-ecdsa-sha2-nistp256@openssh\.com)[ \t]+|@sha256:|integrity[\"']?[ \t]*[:=][ \t]*[\"']?)$",
    re.IGNORECASE,
)


DIGEST_PREFIX: Final = re.compile(r"(?i:sha(?:1|224|256|384|512)|md5|blake2b?)-")
"""Subresource-integrity style ``sha512-<base64>``: a digest, public."""

_PUBLIC_PARTS: Final = re.compile(
    r"(?i:sha(?:1|224|256|384|512)|md5)[:=-][0-9a-fA-F]{32,}|[0-9a-fA-F]{32,}"
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|age1[02-9ac-hj-np-z]{58}"
)


def without_public_parts(text: str) -> str:
    """``text`` minus hex digests, UUIDs and age recipients (image@sha256:..., ids)."""
    return _PUBLIC_PARTS.sub("", text)


def shannon(text: str) -> float:
    """Shannon entropy in bits per character (0 for an empty string)."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def classes(text: str) -> int:
    """How many of upper case, lower case and digits occur."""
    return (
        any(c.isupper() for c in text)
        + any(c.islower() for c in text)
        + any(c.isdigit() for c in text)
    )


def is_hash_like(text: str) -> bool:
    """Hex digests (any case), git commit ids, UUIDs: random, public."""
    return HEX.fullmatch(text) is not None or UUID.fullmatch(text) is not None


def is_slug(text: str) -> bool:
    """Words joined by ``-``/``_``/``.`` (resource names, identifiers): not random."""
    parts = [p for p in re.split(r"[-_.]", text) if p]
    return len(parts) >= 3 and all(p.isalpha() or p.isdigit() for p in parts)


def is_path_like(text: str) -> bool:
    """A file path or URL path: slashes far more often than in base64 (1 in 64)."""
    return text.startswith(("/", "./", "~/")) or text.count("/") * 12 > len(text)


def b64decode(text: str) -> bytes | None:
    """The bytes of standard or URL-safe base64 (padding optional), or None."""
    if len(text) < 8 or _B64.fullmatch(text) is None:
        return None
    body = text.rstrip("=")
    if len(body) % 4 == 1:
        return None
    padded = body + "=" * (-len(body) % 4)
    try:
        if "-" in padded or "_" in padded:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None


def as_text(data: bytes) -> str | None:
    """``data`` as text if it is UTF-8 and (almost) all printable, else None."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text:
        return None
    printable = sum(1 for c in text if c.isprintable() or c in "\r\n\t")
    return text if printable / len(text) >= 0.97 else None


def der_kind(data: bytes) -> str | None:
    """``certificate``/``public_key``/``private_key`` for DER, None if it is not one."""
    if len(data) < 32 or data[0] != 0x30:
        return None
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        x509.load_der_x509_certificate(data)
        return "certificate"
    except ValueError:
        pass
    try:
        serialization.load_der_public_key(data)
        return "public_key"
    except (ValueError, TypeError):
        pass
    try:
        serialization.load_der_private_key(data, password=None)
        return "private_key"
    except TypeError:
        return "private_key"  # encrypted: still a private key
    except Exception:  # not DER of a key this library knows
        return None
