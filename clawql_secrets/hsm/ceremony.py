"""Break-glass: escrow the unseal key with M-of-N key holders, and restore it.

A key generated in the token can never leave it (non-extractable), so if the
HSM is lost, so is every OpenBao cluster sealed by it. The ceremony therefore
creates the key *outside* the HSM, once, and only for the ceremony:

1. 32 random bytes are read straight into a ``bytearray``;
2. the key is split with Shamir's scheme (pycryptodome works on 16-byte
   secrets, so each half is split with the same share indices, and share *i*
   is the concatenation of both halves' share *i*);
3. every share document carries the ceremony id, key name and version,
   threshold, the key check value (KCV) and the public half of an ephemeral
   Ed25519 ceremony key, and is signed by that key. The private half is
   discarded at the end of the ceremony, so nobody can mint shares later;
4. each share is encrypted to one holder's age X25519 public key;
5. the key is imported into the token as the next version, non-extractable
   and sensitive, and the clear copy is zeroed.

The manifest (ceremony id, public key, KCV, holders) is printed and written for
operators to pin; :func:`restore` checks shares against it.

What Python can and cannot wipe: we zero the ``bytearray`` holding the key and
the combined halves. We cannot zero the immutable ``bytes`` copies that
pycryptodome's Shamir code, python-pkcs11's template and the integer
arithmetic make; they live until the garbage collector reuses their memory.
The ceremony should run on a trusted, offline-capable host, and the process
exits right after.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import os
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rfc8785
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from clawql_secrets import holders as holders_mod
from clawql_secrets.errors import ConfigError, InputError, IntegrityError
from clawql_secrets.hsm.token import KEY_BYTES, HSMToken
from clawql_secrets.tlsca import write_private

SHARE_FORMAT = "clawql-secrets/key-share/v1"
MANIFEST_FORMAT = "clawql-secrets/ceremony-manifest/v1"
_KCV_INFO = b"clawql-secrets/key-check-value/v1"
_HALF = KEY_BYTES // 2
_MAX_SHARES = 255
_MAX_SHARE_FILE = 64 * 1024


def key_check_value(key: bytes | bytearray) -> str:
    """A public fingerprint of the key: HMAC-SHA256(key, label), 8 bytes, hex.

    A keyed hash, not the classic AES(key, 0) check value: for GCM that block
    is the GHASH key, which must stay secret.
    """
    return hmac.new(bytes(key), _KCV_INFO, hashlib.sha256).digest()[:8].hex()


def _zero(buf: bytearray) -> None:
    for i in range(len(buf)):
        buf[i] = 0


def _random_key() -> bytearray:
    """32 random bytes read straight into a mutable buffer we can zero."""
    key = bytearray(KEY_BYTES)
    with open("/dev/urandom", "rb", buffering=0) as rnd:
        if rnd.readinto(key) != KEY_BYTES:
            raise ConfigError("could not read enough random bytes from /dev/urandom")
    return key


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- the share document (pure) -------------------------------------------------


@dataclass(frozen=True)
class CeremonyPin:
    """What operators pin from the manifest to recognise their ceremony's shares."""

    ceremony_id: str
    public_key: str  # base64 of the raw Ed25519 public key
    key_check_value: str


@dataclass(frozen=True)
class Share:
    """A verified share document."""

    ceremony_id: str
    key_name: str
    key_version: int
    threshold: int
    total: int
    index: int
    holder: str
    value: bytes
    key_check_value: str
    public_key: str

    @property
    def pin(self) -> CeremonyPin:
        return CeremonyPin(self.ceremony_id, self.public_key, self.key_check_value)


_FIELDS: dict[str, type] = {
    "format": str,
    "ceremony_id": str,
    "key_name": str,
    "key_version": int,
    "threshold": int,
    "shares": int,
    "index": int,
    "holder": str,
    "share": str,
    "key_check_value": str,
    "ceremony_public_key": str,
    "signature": str,
}


def _signing_input(doc: dict[str, Any]) -> bytes:
    unsigned = {k: v for k, v in doc.items() if k != "signature"}
    return bytes(rfc8785.dumps(unsigned))


def parse_share(data: bytes, name: str) -> Share:
    """Check one decrypted share document; IntegrityError naming ``name`` if bad.

    Checklist:
    1. well-formed JSON object with exactly the expected fields and types;
    2. sane numbers (1 <= index <= shares, 2 <= threshold <= shares);
    3. share value and keys decode to the right lengths;
    4. the signature verifies under the embedded ceremony public key.
    Whether that key is the *right* ceremony's is checked by :func:`select_shares`.
    """
    # Step 1: structure.
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise IntegrityError(f"share {name}: not a JSON share document (damaged?)") from exc
    if not isinstance(doc, dict) or set(doc) != set(_FIELDS):
        raise IntegrityError(f"share {name}: unexpected structure (damaged or not a share)")
    for field, kind in _FIELDS.items():
        value = doc[field]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise IntegrityError(f"share {name}: field {field!r} has the wrong type")
    if doc["format"] != SHARE_FORMAT:
        raise IntegrityError(f"share {name}: unknown format {doc['format'][:60]!r}")
    # Step 2: numbers.
    total, threshold, index = doc["shares"], doc["threshold"], doc["index"]
    if not (2 <= threshold <= total <= _MAX_SHARES and 1 <= index <= total):
        raise IntegrityError(f"share {name}: inconsistent index/threshold/share count")
    # Step 3: encodings.
    try:
        value = base64.b64decode(doc["share"], validate=True)
        public_raw = base64.b64decode(doc["ceremony_public_key"], validate=True)
        signature = base64.b64decode(doc["signature"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise IntegrityError(f"share {name}: bad base64 encoding") from exc
    if len(value) != KEY_BYTES or len(public_raw) != 32 or len(signature) != 64:
        raise IntegrityError(f"share {name}: share, key or signature has the wrong length")
    # Step 4: signature.
    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, _signing_input(doc))
    except (InvalidSignature, ValueError) as exc:
        raise IntegrityError(
            f"share {name}: signature does not verify (altered or forged)"
        ) from exc
    return Share(
        ceremony_id=doc["ceremony_id"],
        key_name=doc["key_name"],
        key_version=doc["key_version"],
        threshold=threshold,
        total=total,
        index=index,
        holder=doc["holder"],
        value=value,
        key_check_value=doc["key_check_value"],
        public_key=doc["ceremony_public_key"],
    )


def select_shares(shares: Sequence[tuple[str, Share]], pin: CeremonyPin | None) -> list[Share]:
    """The shares of one ceremony, enough to combine; raise naming any outsider.

    With a pin, every share must match it. Without one, the ceremony most
    shares agree on is taken and any share of another ceremony is named as
    foreign; a tie cannot be decided and is refused.
    """
    if not shares:
        raise InputError("no shares given")
    if pin is None:
        counts = Counter(s.pin for _, s in shares)
        ranked = counts.most_common()
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            groups = "; ".join(
                f"ceremony {p.ceremony_id}: " + ", ".join(n for n, s in shares if s.pin == p)
                for p, _ in ranked
            )
            raise IntegrityError(
                f"the shares come from different ceremonies ({groups})",
                fix="pin the ceremony with --manifest so foreign shares can be named",
            )
        pin = ranked[0][0]
    for name, share in shares:
        if share.ceremony_id != pin.ceremony_id or share.public_key != pin.public_key:
            raise IntegrityError(
                f"share {name} belongs to another ceremony ({share.ceremony_id}, "
                f"expected {pin.ceremony_id})"
            )
        if share.key_check_value != pin.key_check_value:
            raise IntegrityError(f"share {name}: key check value differs from the ceremony's")
    first = shares[0][1]
    seen: dict[int, str] = {}
    for name, share in shares:
        if (share.key_name, share.key_version, share.threshold, share.total) != (
            first.key_name,
            first.key_version,
            first.threshold,
            first.total,
        ):
            raise IntegrityError(f"share {name}: disagrees with the other shares' parameters")
        if share.index in seen:
            raise InputError(f"shares {seen[share.index]} and {name} are the same share")
        seen[share.index] = name
    if len(shares) < first.threshold:
        raise InputError(
            f"{len(shares)} share(s) given, the ceremony needs {first.threshold}: nothing written"
        )
    return [s for _, s in shares]


def combine(shares: Sequence[Share]) -> bytearray:
    """Recombine the key from at least ``threshold`` verified shares of one ceremony."""
    left = Shamir.combine([(s.index, s.value[:_HALF]) for s in shares])
    right = Shamir.combine([(s.index, s.value[_HALF:]) for s in shares])
    key = bytearray(left)
    key += right
    return key


# -- the ceremony (I/O) ----------------------------------------------------------


@dataclass(frozen=True)
class CeremonyResult:
    manifest: dict[str, Any]
    manifest_path: Path
    share_paths: tuple[Path, ...]


def ceremony(
    token: HSMToken,
    holders: Sequence[str],
    out_dir: Path,
    *,
    threshold: int = 3,
) -> CeremonyResult:
    """Run a key ceremony: shares for ``holders`` in ``out_dir``, key into ``token``."""
    holders = [h.strip() for h in holders]
    total = len(holders)
    if not 2 <= threshold <= total <= _MAX_SHARES:
        raise InputError(
            f"need 2 <= threshold <= holders <= {_MAX_SHARES} (threshold {threshold}, "
            f"{total} holders)"
        )
    recipients = holders_mod.parse_recipients(list(holders))
    try:
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create {out_dir} ({exc.strerror})") from exc
    share_paths = tuple(out_dir / f"share-{i}.age" for i in range(1, total + 1))
    manifest_path = out_dir / "manifest.json"
    existing = [p for p in (*share_paths, manifest_path) if p.exists()]
    if existing:
        raise InputError(f"{existing[0]} exists: use an empty output directory")

    ceremony_id = str(uuid.uuid4())
    version = token.current_version() + 1 if token.versions() else 1
    signer = Ed25519PrivateKey.generate()
    public_key = _b64(signer.public_key().public_bytes_raw())
    key = _random_key()
    try:
        kcv = key_check_value(key)
        # Split each half with the same indices (see the module docstring).
        lefts = Shamir.split(threshold, total, bytes(key[:_HALF]))
        rights = Shamir.split(threshold, total, bytes(key[_HALF:]))
        encrypted: list[bytes] = []
        for (index, left), (index_r, right), holder, recipient in zip(
            lefts, rights, holders, recipients, strict=True
        ):
            if index != index_r:
                raise ConfigError("Shamir split returned mismatched indices")
            doc: dict[str, Any] = {
                "format": SHARE_FORMAT,
                "ceremony_id": ceremony_id,
                "key_name": token.key_name,
                "key_version": version,
                "threshold": threshold,
                "shares": total,
                "index": index,
                "holder": holder,
                "share": _b64(left + right),
                "key_check_value": kcv,
                "ceremony_public_key": public_key,
            }
            doc["signature"] = _b64(signer.sign(_signing_input(doc)))
            encrypted.append(holders_mod.encrypt_to(recipient, json.dumps(doc).encode()))
        # Stage every file first: nothing is imported unless all shares exist.
        staged = [p.with_name(f".{p.name}.staged") for p in share_paths]
        try:
            for path, blob in zip(staged, encrypted, strict=True):
                write_private(path, blob)
            token.import_version(key, version)
        except BaseException:
            for path in staged:
                path.unlink(missing_ok=True)
            raise
    finally:
        _zero(key)
        del signer  # the ceremony key dies here; its public half is in the manifest

    for src, dst in zip(staged, share_paths, strict=True):
        os.replace(src, dst)
    manifest = {
        "format": MANIFEST_FORMAT,
        "ceremony_id": ceremony_id,
        "created_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "token_label": token.token_label,
        "key_name": token.key_name,
        "key_version": version,
        "threshold": threshold,
        "shares": total,
        "ceremony_public_key": public_key,
        "key_check_value": kcv,
        "holders": [
            {
                "index": i,
                "holder": holder,
                "file": path.name,
                "sha256": hashlib.sha256(blob).hexdigest(),
            }
            for i, (holder, path, blob) in enumerate(
                zip(holders, share_paths, encrypted, strict=True), start=1
            )
        ],
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return CeremonyResult(manifest=manifest, manifest_path=manifest_path, share_paths=share_paths)


def load_pin(manifest_path: Path) -> CeremonyPin:
    """The pin from a ceremony manifest."""
    try:
        doc = json.loads(manifest_path.read_bytes())
        pin = CeremonyPin(
            ceremony_id=str(doc["ceremony_id"]),
            public_key=str(doc["ceremony_public_key"]),
            key_check_value=str(doc["key_check_value"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"the ceremony manifest {manifest_path} cannot be read") from exc
    return pin


def decrypt_share(encrypted: bytes, identity: Any, name: str = "share") -> bytes:
    """A holder's step: open their encrypted share (age) to the signed JSON document."""
    if len(encrypted) > _MAX_SHARE_FILE:
        raise InputError(f"{name} is too large to be a share")
    data = holders_mod.decrypt_with(identity, encrypted, name)
    parse_share(data, name)  # fail early for the holder, not only at restore
    return data


@dataclass
class RecoveredKey:
    """A key recombined from verified shares, not yet imported. Zero it when done."""

    key: bytearray
    key_name: str
    key_version: int

    def wipe(self) -> None:
        _zero(self.key)


def recombine(
    decrypted_shares: Sequence[tuple[str, bytes]], *, pin: CeremonyPin | None = None
) -> RecoveredKey:
    """Steps 1-6 of a restore, without touching any token.

    Callers open the token only after this succeeds, so refused shares leave
    the token files byte-identical (a PKCS#11 login alone rewrites SoftHSM's
    token.object).
    """
    # Steps 1-4 of parse_share for every share, naming the first bad one.
    parsed = [(name, parse_share(data, name)) for name, data in decrypted_shares]
    # Step 5: one ceremony, pinned or by majority; no duplicates; enough shares.
    chosen = select_shares(parsed, pin)
    # Step 6: recombine and check against the KCV before anything is imported.
    key = combine(chosen)
    if not hmac.compare_digest(key_check_value(key), chosen[0].key_check_value):
        _zero(key)
        raise IntegrityError(
            "the recombined key does not match the ceremony's key check value: nothing written"
        )
    return RecoveredKey(key, chosen[0].key_name, chosen[0].key_version)


def import_recovered(recovered: RecoveredKey, token: HSMToken) -> int:
    """Step 7: import under the original version (refused if it exists); wipes the key."""
    try:
        if recovered.key_name != token.key_name:
            raise InputError(
                f"the shares are for key {recovered.key_name!r}, the token handle for "
                f"{token.key_name!r}"
            )
        return token.import_version(recovered.key, recovered.key_version)
    finally:
        recovered.wipe()


def restore(
    decrypted_shares: Sequence[tuple[str, bytes]],
    token: HSMToken,
    *,
    pin: CeremonyPin | None = None,
) -> int:
    """Recombine the key from named shares and import it as its original version.

    Nothing is written to the token unless every share verifies, at least
    ``threshold`` distinct shares of one ceremony are present, and the
    combined key matches the key check value. Returns the version restored.
    """
    return import_recovered(recombine(decrypted_shares, pin=pin), token)
