"""The checkpoint ``Signer`` backed by an Ed25519 key in the HSM (PKCS#11 CKM_EDDSA).

The private key is generated inside the token, sensitive and never
extractable, and found again by its label on every start, so the log key
cannot be copied off the machine: stealing the shipper's disk gives the
ability to *ask* the token to sign while the PIN is known, never the key.

All PKCS#11 work goes through ``clawql_secrets.hsm.token.HSMToken`` (the only
module importing ``pkcs11``, which serialises every call behind its
process-wide lock, since SoftHSM is not thread-safe). ``sign_note`` checks
each signature against the advertised public key before it is used, so a
token that signs with another key is caught before anything is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from clawql_secrets.audit.checkpoint import VerifierKey
from clawql_secrets.errors import ConfigError
from clawql_secrets.hsm.token import DEFAULT_LIB_PATH, HSMToken

DEFAULT_KEY_LABEL = "clawql-audit-checkpoint"
# HSMToken handles a versioned AES key name; the signer uses none of its versions.
_TOKEN_KEY_NAME = "clawql-audit"


@dataclass(frozen=True)
class HSMSignerConfig:
    """How to reach the signing key: a token, its PIN file and the key's label."""

    token_label: str
    pin_file: Path
    note_key_name: str
    key_label: str = DEFAULT_KEY_LABEL
    lib_path: Path = DEFAULT_LIB_PATH
    softhsm_conf: Path | None = None
    generate: bool = True


class HSMSigner:
    """Signs checkpoint notes with an Ed25519 key that never leaves the token."""

    def __init__(self, token: HSMToken, key_label: str, note_key_name: str, public: bytes) -> None:
        # Use HSMSigner.open(); the verifier key checks the name's syntax.
        self._token = token
        self._label = key_label
        self._verifier = VerifierKey.from_public_key(note_key_name, public)

    @classmethod
    def open(cls, config: HSMSignerConfig) -> HSMSigner:
        """Log in to the token and find (or, if allowed, generate) the key pair."""
        if not config.key_label or len(config.key_label) > 64:
            raise ConfigError("the HSM signing key label must be 1-64 characters")
        token = HSMToken.from_pin_file(
            lib_path=config.lib_path,
            token_label=config.token_label,
            pin_file=config.pin_file,
            key_name=_TOKEN_KEY_NAME,
            softhsm_conf=config.softhsm_conf,
        )
        try:
            public = token.ed25519_public_key(config.key_label, generate=config.generate)
            return cls(token, config.key_label, config.note_key_name, public)
        except BaseException:
            token.close()
            raise

    @property
    def key_name(self) -> str:
        return self._verifier.name

    def public_key_bytes(self) -> bytes:
        return self._verifier.public_key

    def sign(self, message: bytes) -> bytes:
        return self._token.sign_ed25519(self._label, message)

    def verifier_key(self) -> VerifierKey:
        return self._verifier

    def close(self) -> None:
        self._token.close()

    def __enter__(self) -> HSMSigner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HSMSigner({self._verifier.name!r}, label={self._label!r})"
