"""Checkpoints signed by an Ed25519 key generated inside a real SoftHSM2 token."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from clawql_secrets.audit import verify
from clawql_secrets.audit.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from clawql_secrets.audit.errors import SignatureError
from clawql_secrets.audit.hsm_signer import HSMSigner, HSMSignerConfig
from clawql_secrets.audit.log import AuditLog
from clawql_secrets.audit.store import MemoryWormStore
from clawql_secrets.errors import HSMError
from clawql_secrets.hsm.softhsm import TokenSetup, ensure_token
from clawql_secrets.hsm.token import HSMToken, KeyVersionMissing
from tests.audit.conftest import entry


@pytest.fixture
def hsm(tmp_path: Path) -> TokenSetup:
    return ensure_token(tmp_path / "hsm")


def config(setup: TokenSetup, **kw: object) -> HSMSignerConfig:
    return HSMSignerConfig(
        token_label=setup.token_label,
        pin_file=setup.pin_file,
        note_key_name="clawql.test/hsm-audit",
        lib_path=setup.lib_path,
        softhsm_conf=setup.conf_path,
        **kw,  # type: ignore[arg-type]
    )


def test_checkpoints_signed_in_the_token_verify(hsm: TokenSetup) -> None:
    with HSMSigner.open(config(hsm)) as signer:
        store = MemoryWormStore()
        log = AuditLog(store, signer)
        for i in range(7):
            log.append("n1", entry("n1", i))
        cp = log.checkpoint("n1")
        verifier = signer.verifier_key()
    assert cp is not None and cp.size == 7
    verify.verify(store, verifier)
    note = store.get("checkpoints/n1/00000000000000000007.txt")
    assert open_checkpoint(note, verifier) == cp


def test_key_is_generated_once_and_found_again_by_label(hsm: TokenSetup) -> None:
    with HSMSigner.open(config(hsm)) as first:
        public = first.public_key_bytes()
    with HSMSigner.open(config(hsm, generate=False)) as again:
        assert again.public_key_bytes() == public
    with HSMSigner.open(config(hsm, key_label="another")) as other:
        assert other.public_key_bytes() != public


def test_missing_key_without_generate_is_refused(hsm: TokenSetup) -> None:
    with pytest.raises(KeyVersionMissing, match="no complete Ed25519 key pair"):
        HSMSigner.open(config(hsm, generate=False))


def test_signing_key_is_sensitive_and_never_extractable(hsm: TokenSetup) -> None:
    import pkcs11
    from pkcs11 import Attribute, KeyType, ObjectClass

    with HSMSigner.open(config(hsm)):
        pass
    # Inspect the stored object directly, as an auditor of the token would.
    token = HSMToken.from_pin_file(
        lib_path=hsm.lib_path,
        token_label=hsm.token_label,
        pin_file=hsm.pin_file,
        key_name="inspect",
        softhsm_conf=hsm.conf_path,
    )
    try:
        priv = token._ed25519_object("clawql-audit-checkpoint", ObjectClass.PRIVATE_KEY)
        assert priv is not None
        assert priv[Attribute.KEY_TYPE] == KeyType.EC_EDWARDS
        assert priv[Attribute.SENSITIVE] and not priv[Attribute.EXTRACTABLE]
        assert priv[Attribute.NEVER_EXTRACTABLE] and priv[Attribute.LOCAL]
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            priv[Attribute.VALUE]
    finally:
        token.close()


def test_a_note_signed_by_another_key_fails(hsm: TokenSetup) -> None:
    from clawql_secrets.audit.checkpoint import Ed25519Signer

    cp = Checkpoint("clawql.local/audit/n1", 1, bytes(32))
    with HSMSigner.open(config(hsm)) as signer:
        verifier = signer.verifier_key()
    impostor = Ed25519Signer.generate("clawql.test/hsm-audit")
    with pytest.raises(SignatureError):
        open_checkpoint(sign_checkpoint(cp, [impostor]), verifier)


def test_signing_is_serialised_across_threads(hsm: TokenSetup) -> None:
    """SoftHSM is not thread-safe: concurrent signs must go through the token lock."""
    errors: list[BaseException] = []
    with HSMSigner.open(config(hsm)) as signer:
        verifier = signer.verifier_key()

        def work(n: int) -> None:
            try:
                for i in range(30):
                    cp = Checkpoint("clawql.local/audit/n1", n * 100 + i, bytes(32))
                    open_checkpoint(sign_checkpoint(cp, [signer]), verifier)
            except BaseException as exc:  # collected for the main thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def test_closed_signer_refuses_to_sign(hsm: TokenSetup) -> None:
    signer = HSMSigner.open(config(hsm))
    signer.close()
    with pytest.raises(HSMError):
        signer.sign(b"x\n")
