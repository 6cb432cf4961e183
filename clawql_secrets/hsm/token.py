"""The PKCS#11 adapter: the only module that imports ``pkcs11``.

Everything the project does with the HSM goes through :class:`HSMToken`, which
holds AES-256 keys labelled ``<key_name>/v<N>`` and does AES-GCM inside the
token. Three facts about python-pkcs11 over SoftHSM2 shape it:

* **Not thread-safe.** python-pkcs11 calls ``C_Initialize(NULL)``, so SoftHSM
  runs without its own mutexes while the GIL is released; two threads have
  crashed the process and truncated a token file. Every PKCS#11 call here
  (load, open, login, find, encrypt...) runs under one process-wide lock,
  ``_PKCS11_LOCK``.
* **Login is per process and token.** A second ``C_Login`` raises
  ``UserAlreadyLoggedIn`` whether or not the PIN is right. So the process keeps
  one logged-in session per token (``_Runtime``) shared by every handle, and a
  later handle's PIN is compared with the one that logged in.
* **Configuration is read once, at C_Initialize.** SoftHSM reads
  ``SOFTHSM2_CONF`` when the library initialises, so one process serves one
  library configuration at a time; when the last handle closes the library is
  finalised and the next open may use another (tests do this).

Errors leave as :class:`~clawql_secrets.errors.HSMError` (or a subclass below)
with a message naming the cause; most PKCS#11 exceptions carry no text, so the
message comes from the exception type and the operation attempted.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import pkcs11
import pkcs11.exceptions as p11e
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass

from clawql_secrets.errors import ConfigError, HSMError, InputError
from clawql_secrets.hsm import envelope, pinguard

DEFAULT_LIB_PATH = Path("/usr/lib/softhsm/libsofthsm2.so")
KEY_BYTES = 32
# DER of the Ed25519 curve OID 1.3.101.112 (RFC 8410), as CKA_EC_PARAMS.
_ED25519_PARAMS = bytes.fromhex("06032b6570")

# One lock for every PKCS#11 call in the process (see the module docstring).
_PKCS11_LOCK = threading.RLock()


class PinError(HSMError):
    """The PIN was wrong, or attempts are refused for now (rate limit)."""


class KeyVersionMissing(HSMError):
    """No key with the requested label exists in the token."""


class KeyVersionExists(HSMError):
    """A key with the label to be created already exists."""


class DecryptionFailed(HSMError):
    """The token refused to decrypt: altered ciphertext, wrong AAD, wrong key."""


@dataclass(frozen=True)
class KeyVersionInfo:
    """Public facts about one key version; never its value."""

    version: int
    label: str
    generated_in_token: bool  # CKA_LOCAL: False for break-glass imports
    sensitive: bool
    extractable: bool


@dataclass(frozen=True)
class TokenInfo:
    """What ``hsm status`` shows: no secret."""

    token_label: str
    token_serial: str
    library: str
    key_name: str
    versions: tuple[KeyVersionInfo, ...]

    @property
    def current_version(self) -> int | None:
        return max((v.version for v in self.versions), default=None)


# -- error translation -------------------------------------------------------


def _hsm_error(exc: BaseException, doing: str) -> HSMError:
    """Translate a PKCS#11 exception raised while ``doing`` something."""
    name = type(exc).__name__
    if isinstance(exc, p11e.NoSuchToken | p11e.TokenNotPresent | p11e.TokenNotRecognised):
        return HSMError(
            f"{doing}: the token is not present",
            fix="check token_label and, for SoftHSM2, softhsm_conf (its tokendir)",
        )
    if isinstance(exc, p11e.NoSuchKey):
        return KeyVersionMissing(f"{doing}: no such key in the token")
    if isinstance(exc, p11e.UserNotLoggedIn):
        return HSMError(f"{doing}: not logged in to the token")
    if isinstance(exc, p11e.PinIncorrect | p11e.PinInvalid | p11e.PinLenRange):
        return PinError(f"{doing}: the token refused the PIN")
    if isinstance(exc, p11e.PinLocked):
        return PinError(
            f"{doing}: the token has locked the user PIN",
            fix="the security officer must reset the PIN, or restore into a new token",
        )
    if isinstance(exc, p11e.DeviceRemoved | p11e.DeviceError | p11e.DeviceMemory):
        return HSMError(f"{doing}: the HSM device failed ({name})")
    if isinstance(exc, p11e.MechanismInvalid | p11e.FunctionNotSupported):
        return HSMError(f"{doing}: the token does not support AES-256-GCM ({name})")
    return HSMError(f"{doing}: PKCS#11 error {name}")


# -- the process-wide library state -----------------------------------------


@dataclass
class _Login:
    session: Any  # pkcs11.Session: typed loosely, python-pkcs11 returns subclasses
    token: Any
    pin_salt: bytes
    pin_digest: bytes
    refs: int = 0


class _Runtime:
    """The library loaded in this process and the token logins it holds.

    Mutated only under ``_PKCS11_LOCK``.
    """

    def __init__(self) -> None:
        self.lib: Any = None
        self.key: tuple[str, str | None] | None = None  # (library path, SOFTHSM2_CONF)
        self.logins: dict[str, _Login] = {}
        self.refs = 0

    def load(self, lib_path: Path, softhsm_conf: Path | None) -> Any:
        key = (str(lib_path), None if softhsm_conf is None else str(softhsm_conf))
        if self.key is not None and self.key != key:
            if self.refs:
                raise HSMError(
                    f"this process already uses PKCS#11 library {self.key[0]} with "
                    f"configuration {self.key[1]}; one configuration per process",
                    fix="close the other token handle first, or use another process",
                )
            self._finalize()
        if self.lib is not None:
            return self.lib
        if not lib_path.is_file():
            raise HSMError(
                f"the PKCS#11 library {lib_path} does not exist",
                fix="set lib_path to your HSM's PKCS#11 module; for SoftHSM2 run "
                "scripts/bootstrap.sh (it installs softhsm2)",
            )
        if softhsm_conf is not None:
            if not softhsm_conf.is_file():
                raise ConfigError(
                    f"the SoftHSM2 configuration {softhsm_conf} does not exist",
                    fix="create the token with ensure_token, or fix softhsm_conf",
                )
            # SoftHSM reads this at C_Initialize only; see the module docstring.
            os.environ["SOFTHSM2_CONF"] = str(softhsm_conf)
        try:
            lib = pkcs11.lib(str(lib_path))
        except p11e.GeneralError as exc:
            raise HSMError(
                f"the PKCS#11 library {lib_path} failed to initialise",
                fix="for SoftHSM2: check softhsm_conf and that its tokendir exists "
                "(the library reports the reason only to syslog)",
            ) from exc
        except (p11e.PKCS11Error, OSError) as exc:
            raise HSMError(
                f"the PKCS#11 library {lib_path} cannot be loaded ({type(exc).__name__})",
                fix="point lib_path at a PKCS#11 module built for this machine",
            ) from exc
        self.lib, self.key = lib, key
        return lib

    def _finalize(self) -> None:
        if self.lib is not None:
            with contextlib.suppress(p11e.PKCS11Error):  # already finalised
                self.lib.finalize()
        self.lib, self.key, self.logins = None, None, {}

    def release(self, label: str) -> None:
        login = self.logins.get(label)
        if login is not None:
            login.refs -= 1
            if login.refs <= 0:
                del self.logins[label]
                with contextlib.suppress(p11e.PKCS11Error):  # gone either way
                    login.session.close()
        self.unref()

    def unref(self) -> None:
        self.refs -= 1
        if self.refs <= 0:
            self.refs = 0
            self._finalize()


_RUNTIME = _Runtime()


def _as_bytes(value: object) -> bytes:
    # python-pkcs11 returns bytes for bytes input (iterators only for iterator input).
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    raise HSMError("the PKCS#11 library returned an unexpected result type")


def _pin_digest(pin: str, salt: bytes) -> bytes:
    return hashlib.sha256(salt + pin.encode()).digest()


# -- the token handle ---------------------------------------------------------


class HSMToken:
    """A logged-in handle on one token, for one key name's versions.

    Open with :meth:`open` (or :meth:`from_pin_file`), use as a context manager
    or call :meth:`close`. Safe to share between threads: every call takes the
    process-wide PKCS#11 lock.
    """

    def __init__(self, token_label: str, key_name: str) -> None:
        # Use HSMToken.open(); this only sets the fields.
        self.token_label = token_label
        self.key_name = key_name
        self._keys: dict[int, Any] = {}
        self._latest = 0
        self._closed = False
        self._label_re = re.compile(re.escape(key_name) + r"/v([1-9][0-9]{0,8})")

    # -- opening and closing --------------------------------------------------

    @classmethod
    def open(
        cls,
        *,
        lib_path: Path,
        token_label: str,
        pin: str,
        key_name: str,
        state_dir: Path,
        softhsm_conf: Path | None = None,
        pin_file: Path | None = None,
        policy: pinguard.PinPolicy | None = None,
    ) -> HSMToken:
        """Load the library, log in (rate-limited) and return a handle.

        ``state_dir`` holds the cross-process PIN failure record; ``pin_file``,
        when given, locates the PIN verifier that lets a wrong PIN be refused
        without touching the token.
        """
        if not envelope.is_valid_key_name(key_name):
            raise ConfigError(f"invalid key name {key_name!r}: use letters, digits, '.-_'")
        if not token_label or len(token_label) > 32:
            raise ConfigError("the token label must be 1-32 characters (a PKCS#11 limit)")
        guard = pinguard.PinGuard(state_dir, policy)
        with guard.attempt() as attempt:
            refusal = attempt.refusal()
            if refusal is not None:
                raise PinError(
                    f"token {token_label!r}: {refusal}",
                    fix="check pin_file holds the right PIN before retrying",
                )
            if pin_file is not None and pinguard.check_pin_verifier(pin_file, pin) is False:
                cls._wrong_pin(attempt, token_label, "it does not match the PIN verifier")
            handle = cls(token_label, key_name)
            with _PKCS11_LOCK:
                lib = _RUNTIME.load(lib_path, softhsm_conf)
                _RUNTIME.refs += 1
                try:
                    handle._login(lib, pin, attempt)
                except BaseException:
                    _RUNTIME.unref()
                    raise
            attempt.succeeded()
        handle._scan()
        return handle

    @classmethod
    def from_pin_file(
        cls,
        *,
        lib_path: Path,
        token_label: str,
        pin_file: Path,
        key_name: str,
        softhsm_conf: Path | None = None,
    ) -> HSMToken:
        """Open with the PIN read from ``pin_file``; failures are recorded beside it."""
        return cls.open(
            lib_path=lib_path,
            token_label=token_label,
            pin=pinguard.read_pin(pin_file),
            key_name=key_name,
            state_dir=pin_file.parent,
            softhsm_conf=softhsm_conf,
            pin_file=pin_file,
        )

    @staticmethod
    def _wrong_pin(attempt: pinguard.PinAttempt, token_label: str, why: str) -> None:
        state = attempt.failed()
        policy = attempt.policy
        left = max(policy.free_attempts - state.failures, 0)
        raise PinError(
            f"wrong PIN for token {token_label!r} ({why}); consecutive failures: "
            f"{state.failures}, free attempts left before refusals: {left}",
            fix="check pin_file; SoftHSM has no lockout, so this bridge throttles attempts",
        )

    def _login(self, lib: Any, pin: str, attempt: pinguard.PinAttempt) -> None:
        login = _RUNTIME.logins.get(self.token_label)
        if login is not None:
            # Already logged in by this process: C_Login would answer
            # UserAlreadyLoggedIn for any PIN, so compare with the one that worked.
            if not hmac.compare_digest(_pin_digest(pin, login.pin_salt), login.pin_digest):
                self._wrong_pin(attempt, self.token_label, "the token refused it")
            login.refs += 1
            return
        doing = f"opening token {self.token_label!r}"
        try:
            token = lib.get_token(token_label=self.token_label)
        except p11e.MultipleTokensReturned as exc:
            raise HSMError(f"{doing}: several tokens carry this label") from exc
        except p11e.PKCS11Error as exc:
            raise _hsm_error(exc, doing) from exc
        try:
            session = token.open(rw=True, user_pin=pin)
        except (p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange):
            self._wrong_pin(attempt, self.token_label, "the token refused it")
            return  # unreachable: _wrong_pin raises
        except p11e.PKCS11Error as exc:
            raise _hsm_error(exc, doing) from exc
        salt = os.urandom(16)
        _RUNTIME.logins[self.token_label] = _Login(
            session=session, token=token, pin_salt=salt, pin_digest=_pin_digest(pin, salt), refs=1
        )

    def close(self) -> None:
        """Release this handle; the last one logs out and finalises the library."""
        with _PKCS11_LOCK:
            if self._closed:
                return
            self._closed = True
            self._keys.clear()
            _RUNTIME.release(self.token_label)

    def __enter__(self) -> HSMToken:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals --------------------------------------------------------------

    def _session(self) -> Any:
        if self._closed:
            raise HSMError("the HSM token handle is closed")
        login = _RUNTIME.logins.get(self.token_label)
        if login is None:
            raise HSMError(f"token {self.token_label!r} is no longer logged in")
        return login.session

    def label_for(self, version: int) -> str:
        return f"{self.key_name}/{envelope.format_version(version)}"

    def _find(self, version: int) -> Any | None:
        """The key object for ``version``, or None; caller holds the lock."""
        label = self.label_for(version)
        found = list(
            self._session().get_objects(
                {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}
            )
        )
        if len(found) > 1:
            raise HSMError(
                f"{len(found)} keys carry the label {label!r} (a concurrent rotation?)",
                fix="keep one: the ciphertexts of the others cannot be told apart",
            )
        return found[0] if found else None

    def _scan(self) -> tuple[int, ...]:
        """Re-read every version label in the token (C_FindObjects over secret keys)."""
        with _PKCS11_LOCK:
            try:
                keys = {}
                for obj in self._session().get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}):
                    match = self._label_re.fullmatch(obj.label)
                    if match is not None:
                        keys[int(match.group(1))] = obj
            except p11e.PKCS11Error as exc:
                raise _hsm_error(exc, f"listing keys of {self.key_name!r}") from exc
            self._keys = keys
            self._latest = max(keys, default=0)
            return tuple(sorted(keys))

    def _key(self, version: int) -> Any:
        key = self._keys.get(version)
        if key is None:
            try:
                key = self._find(version)
            except p11e.PKCS11Error as exc:
                raise _hsm_error(exc, f"finding {self.label_for(version)!r}") from exc
            if key is None:
                raise KeyVersionMissing(
                    f"key {self.label_for(version)!r} does not exist in token {self.token_label!r}"
                )
            self._keys[version] = key
        return key

    def _refresh_latest(self) -> int:
        """Pick up versions added by another handle or process (rotation, restore).

        Cheap: one C_FindObjects for the label after the newest known one,
        repeated only while newer versions appear. No restart or signal is
        needed for a running bridge to encrypt under a new version.
        """
        while True:
            try:
                nxt = self._find(self._latest + 1)
            except p11e.PKCS11Error as exc:
                raise _hsm_error(exc, f"looking for new versions of {self.key_name!r}") from exc
            if nxt is None:
                return self._latest
            self._latest += 1
            self._keys[self._latest] = nxt

    # -- public operations -------------------------------------------------

    def versions(self) -> tuple[int, ...]:
        """Every version of the key name present in the token, ascending."""
        return self._scan()

    def current_version(self) -> int:
        """The newest version: the one new encryptions use."""
        with _PKCS11_LOCK:
            latest = self._refresh_latest()
        if latest == 0:
            raise KeyVersionMissing(
                f"token {self.token_label!r} holds no version of key {self.key_name!r}",
                fix="create one with `clawql-secrets hsm rotate` or a key ceremony",
            )
        return latest

    def encrypt(self, plaintext: bytes, aad: Callable[[int], bytes]) -> tuple[int, bytes]:
        """AES-256-GCM in the token under the current version.

        ``aad`` maps the version chosen to the associated data, so the version
        can be authenticated too. Returns ``(version, nonce || ct || tag)``.
        Nonces are 96 random bits: with the seal's call rate (a few per minute)
        the 2**32 messages-per-key bound for random nonces is never approached.
        """
        with _PKCS11_LOCK:
            version = self.current_version()
            key = cast(pkcs11.types.EncryptMixin, self._key(version))
            nonce = os.urandom(envelope.NONCE_BYTES)
            params = pkcs11.GCMParams(nonce, aad(version), envelope.TAG_BYTES * 8)
            try:
                sealed = key.encrypt(plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=params)
            except p11e.PKCS11Error as exc:
                raise _hsm_error(exc, f"encrypting with {self.label_for(version)!r}") from exc
        return version, nonce + _as_bytes(sealed)

    def decrypt(self, version: int, blob: bytes, aad: bytes) -> bytes:
        """Decrypt ``nonce || ct || tag`` made by :meth:`encrypt` under ``version``."""
        if len(blob) < envelope.MIN_BLOB_BYTES:
            raise InputError("ciphertext is too short")
        nonce, sealed = blob[: envelope.NONCE_BYTES], blob[envelope.NONCE_BYTES :]
        with _PKCS11_LOCK:
            key = cast(pkcs11.types.DecryptMixin, self._key(version))
            params = pkcs11.GCMParams(nonce, aad, envelope.TAG_BYTES * 8)
            try:
                opened = key.decrypt(sealed, mechanism=Mechanism.AES_GCM, mechanism_param=params)
            except (
                p11e.GeneralError,
                p11e.EncryptedDataInvalid,
                p11e.EncryptedDataLenRange,
                p11e.DataInvalid,
                p11e.FunctionFailed,
            ) as exc:
                # SoftHSM reports a failed tag check only as GeneralError.
                raise DecryptionFailed(
                    f"ciphertext does not authenticate under {self.label_for(version)!r}: "
                    "altered, or made for another key, version or mount"
                ) from exc
            except p11e.PKCS11Error as exc:
                raise _hsm_error(exc, f"decrypting with {self.label_for(version)!r}") from exc
        return _as_bytes(opened)

    def _template(self, version: int) -> dict[Attribute, Any]:
        """Attributes every version gets: usable for encrypt/decrypt only, never readable."""
        return {
            Attribute.LABEL: self.label_for(version),
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.MODIFIABLE: False,
            Attribute.ENCRYPT: True,
            Attribute.DECRYPT: True,
            Attribute.WRAP: False,
            Attribute.UNWRAP: False,
            Attribute.SIGN: False,
            Attribute.VERIFY: False,
            Attribute.DERIVE: False,
        }

    def _check_new(self, version: int) -> None:
        if self._find(version) is not None:
            raise KeyVersionExists(
                f"token {self.token_label!r} already holds {self.label_for(version)!r}",
                fix="restore into a fresh token, or choose the next version",
            )

    def generate_version(self) -> int:
        """Rotation: a new non-extractable AES-256 key as the next version.

        Old versions stay, so every earlier ciphertext still decrypts.
        """
        with _PKCS11_LOCK:
            version = self._refresh_latest() + 1
            try:
                self._check_new(version)
                key = self._session().generate_key(
                    KeyType.AES,
                    KEY_BYTES * 8,
                    label=self.label_for(version),
                    store=True,
                    capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                    template=self._template(version),
                )
            except p11e.PKCS11Error as exc:
                raise _hsm_error(exc, f"generating {self.label_for(version)!r}") from exc
            self._keys[version] = key
            self._latest = version
            return version

    def import_version(self, key_bytes: bytes | bytearray, version: int | None = None) -> int:
        """Import a key made outside (break-glass) as non-extractable and sensitive.

        ``version`` defaults to the next one; a restore passes the ceremony's
        version so that old ciphertexts find their key. python-pkcs11 needs
        ``bytes``, so an immutable copy of the key exists until it is garbage
        collected; the caller zeroes its own ``bytearray``.
        """
        if len(key_bytes) != KEY_BYTES:
            raise InputError(f"an imported key must be {KEY_BYTES} bytes")
        with _PKCS11_LOCK:
            if version is None:
                version = self._refresh_latest() + 1
            template = self._template(version)
            template.update(
                {
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.KEY_TYPE: KeyType.AES,
                    Attribute.VALUE: bytes(key_bytes),
                }
            )
            try:
                self._check_new(version)
                key = self._session().create_object(template)
            except p11e.PKCS11Error as exc:
                raise _hsm_error(exc, f"importing {self.label_for(version)!r}") from exc
            finally:
                template.clear()
            self._keys[version] = key
            self._latest = max(self._latest, version)
            return version

    def key_info(self, version: int) -> KeyVersionInfo:
        """Public attributes of one version (reading them never reveals the value)."""
        with _PKCS11_LOCK:
            key = self._key(version)
            try:
                attrs = key.get_attributes(
                    [Attribute.LOCAL, Attribute.SENSITIVE, Attribute.EXTRACTABLE]
                )
            except p11e.PKCS11Error as exc:
                raise _hsm_error(exc, f"reading attributes of {self.label_for(version)!r}") from exc
        return KeyVersionInfo(
            version=version,
            label=self.label_for(version),
            generated_in_token=bool(attrs[Attribute.LOCAL]),
            sensitive=bool(attrs[Attribute.SENSITIVE]),
            extractable=bool(attrs[Attribute.EXTRACTABLE]),
        )

    def info(self) -> TokenInfo:
        """Token and key facts for status displays; no secret."""
        versions = self.versions()
        with _PKCS11_LOCK:
            login = _RUNTIME.logins.get(self.token_label)
            lib = _RUNTIME.lib
            if login is None or lib is None or self._closed:
                raise HSMError("the HSM token handle is closed")
            try:
                serial = bytes(login.token.serial).decode("ascii", "replace").strip()
                library = f"{lib.manufacturer_id.strip()} {lib.library_description.strip()}"
            except p11e.PKCS11Error as exc:
                raise _hsm_error(exc, "reading token information") from exc
        return TokenInfo(
            token_label=self.token_label,
            token_serial=serial,
            library=library,
            key_name=self.key_name,
            versions=tuple(self.key_info(v) for v in versions),
        )

    # -- Ed25519 signing keys (the audit log's checkpoint signer) ------------

    def ed25519_public_key(self, label: str, *, generate: bool = False) -> bytes:
        """The raw 32-byte public key of the Ed25519 pair labelled ``label``.

        With ``generate``, a missing pair is generated in the token: private
        half sensitive, never extractable, usable only to sign. An existing
        private key that is extractable or not sensitive is refused.
        """
        doing = f"finding Ed25519 key {label!r}"
        with _PKCS11_LOCK:
            try:
                priv = self._ed25519_object(label, ObjectClass.PRIVATE_KEY)
                pub = self._ed25519_object(label, ObjectClass.PUBLIC_KEY)
                if priv is None and pub is None and generate:
                    doing = f"generating Ed25519 key {label!r}"
                    pub, priv = self._session().generate_keypair(
                        KeyType.EC_EDWARDS,
                        mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
                        store=True,
                        label=label,
                        public_template={
                            Attribute.EC_PARAMS: _ED25519_PARAMS,
                            Attribute.TOKEN: True,
                            Attribute.VERIFY: True,
                            Attribute.LABEL: label,
                        },
                        private_template={
                            Attribute.TOKEN: True,
                            Attribute.PRIVATE: True,
                            Attribute.SENSITIVE: True,
                            Attribute.EXTRACTABLE: False,
                            Attribute.SIGN: True,
                            Attribute.DERIVE: False,
                            Attribute.LABEL: label,
                        },
                    )
                if priv is None or pub is None:
                    raise KeyVersionMissing(
                        f"token {self.token_label!r} holds no complete Ed25519 key pair {label!r}"
                    )
                if priv[Attribute.EXTRACTABLE] or not priv[Attribute.SENSITIVE]:
                    raise HSMError(
                        f"Ed25519 key {label!r} is extractable or not sensitive: refusing it",
                        fix="generate a new signing key in the token under another label",
                    )
                point = bytes(pub[Attribute.EC_POINT])
            except p11e.PKCS11Error as exc:
                raise _hsm_error(exc, doing) from exc
        # CKA_EC_POINT is a DER OCTET STRING (04 20 || key); some tokens give the raw key.
        if len(point) == 34 and point[:2] == b"\x04\x20":
            return point[2:]
        if len(point) == 32:
            return point
        raise HSMError(f"Ed25519 key {label!r} has a malformed public point")

    def sign_ed25519(self, label: str, message: bytes) -> bytes:
        """A 64-byte Ed25519 signature (CKM_EDDSA) by the private key labelled ``label``."""
        with _PKCS11_LOCK:
            try:
                priv = self._ed25519_object(label, ObjectClass.PRIVATE_KEY)
                if priv is None:
                    raise KeyVersionMissing(f"token {self.token_label!r} has no Ed25519 {label!r}")
                signature = cast(pkcs11.types.SignMixin, priv).sign(
                    message, mechanism=Mechanism.EDDSA
                )
            except p11e.PKCS11Error as exc:
                raise _hsm_error(exc, f"signing with Ed25519 key {label!r}") from exc
        return _as_bytes(signature)

    def _ed25519_object(self, label: str, cls: ObjectClass) -> Any | None:
        """The one object of class ``cls`` for the Ed25519 ``label``; caller holds the lock."""
        found = list(
            self._session().get_objects(
                {
                    Attribute.CLASS: cls,
                    Attribute.KEY_TYPE: KeyType.EC_EDWARDS,
                    Attribute.LABEL: label,
                }
            )
        )
        if len(found) > 1:
            raise HSMError(f"{len(found)} Ed25519 keys carry the label {label!r}")
        return found[0] if found else None


def set_initial_pins(
    *,
    lib_path: Path,
    softhsm_conf: Path | None,
    token_label: str,
    so_pin: str,
    user_pin: str,
    new_so_pin: str,
    new_user_pin: str,
) -> None:
    """Replace the PINs a token was initialised with (they were on a command line).

    ``softhsm2-util`` takes PINs only as arguments (it reads no pipe), where
    other local users can see them in the process list for a moment. This sets
    fresh ones through PKCS#11 ``C_SetPIN``. Needs no other handle open.
    """
    doing = f"setting the PINs of token {token_label!r}"
    with _PKCS11_LOCK:
        if _RUNTIME.refs:
            raise HSMError(f"{doing}: close other token handles first")
        lib = _RUNTIME.load(lib_path, softhsm_conf)
        try:
            token = lib.get_token(token_label=token_label)
            with token.open(rw=True, so_pin=so_pin) as session:
                session.set_pin(so_pin, new_so_pin)
            with token.open(rw=True, user_pin=user_pin) as session:
                session.set_pin(user_pin, new_user_pin)
        except p11e.PKCS11Error as exc:
            raise _hsm_error(exc, doing) from exc
        finally:
            _RUNTIME._finalize()
