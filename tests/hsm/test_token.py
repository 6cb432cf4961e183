"""The PKCS#11 adapter against a real SoftHSM2 token.

Negative cases are table-driven and named after the failure they check.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from clawql_secrets.errors import ConfigError, HSMError, InputError
from clawql_secrets.hsm import envelope, pinguard
from clawql_secrets.hsm.softhsm import TokenSetup
from clawql_secrets.hsm.token import (
    DecryptionFailed,
    HSMToken,
    KeyVersionExists,
    KeyVersionMissing,
    PinError,
)
from tests.hsm.conftest import KEY_NAME, open_handle, token_files


def aad(version: int) -> bytes:
    return envelope.aad_for("transit", KEY_NAME, version)


def test_round_trip_inside_the_token(token: HSMToken) -> None:
    version, blob = token.encrypt(b"root key", aad)
    assert version == 1
    assert len(blob) == envelope.NONCE_BYTES + len(b"root key") + envelope.TAG_BYTES
    assert token.decrypt(version, blob, aad(version)) == b"root key"


def test_nonces_are_fresh(token: HSMToken) -> None:
    blobs = {token.encrypt(b"same", aad)[1][: envelope.NONCE_BYTES] for _ in range(50)}
    assert len(blobs) == 50


def test_generated_key_is_sensitive_and_never_extractable(token: HSMToken) -> None:
    info = token.key_info(1)
    assert info.sensitive and not info.extractable and info.generated_in_token


def test_info_reveals_no_secret(token: HSMToken, hsm_setup: TokenSetup) -> None:
    info = token.info()
    assert (info.token_label, info.key_name, info.current_version) == ("clawql", KEY_NAME, 1)
    assert hsm_setup.pin_file.read_text().strip() not in repr(info)


def test_rotation_keeps_old_versions(token: HSMToken) -> None:
    _, old = token.encrypt(b"before", aad)
    assert token.generate_version() == 2
    version, new = token.encrypt(b"after", aad)
    assert version == 2
    assert token.decrypt(1, old, aad(1)) == b"before"
    assert token.decrypt(2, new, aad(2)) == b"after"
    assert token.versions() == (1, 2)


def test_import_is_non_extractable_and_refuses_existing_version(token: HSMToken) -> None:
    version = token.import_version(bytearray(range(32)))
    info = token.key_info(version)
    assert info.sensitive and not info.extractable and not info.generated_in_token
    with pytest.raises(KeyVersionExists):
        token.import_version(bytes(32), version)
    with pytest.raises(InputError):
        token.import_version(bytes(16))


def test_a_second_handle_in_the_process_sees_new_versions(
    token: HSMToken, hsm_setup: TokenSetup
) -> None:
    with open_handle(hsm_setup) as other:
        other.generate_version()
    assert token.current_version() == 2


def test_pkcs11_calls_are_serialised_across_threads(token: HSMToken) -> None:
    """Regression: unserialised SoftHSM calls from two threads crashed the process."""
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(100):
                v, blob = token.encrypt(b"x" * 64, aad)
                assert token.decrypt(v, blob, aad(v)) == b"x" * 64
        except BaseException as exc:  # collected for the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# -- negatives ---------------------------------------------------------------


def _wrong_pin(setup: TokenSetup) -> HSMToken:
    return HSMToken.open(
        lib_path=setup.lib_path,
        token_label=setup.token_label,
        pin="not-the-pin",
        key_name=KEY_NAME,
        state_dir=setup.pin_file.parent,
        softhsm_conf=setup.conf_path,
        pin_file=setup.pin_file,
    )


def _missing_token_label(setup: TokenSetup) -> HSMToken:
    return HSMToken.from_pin_file(
        lib_path=setup.lib_path,
        token_label="no-such-token",
        pin_file=setup.pin_file,
        key_name=KEY_NAME,
        softhsm_conf=setup.conf_path,
    )


def _missing_library(setup: TokenSetup) -> HSMToken:
    return HSMToken.from_pin_file(
        lib_path=Path("/nonexistent/libpkcs11.so"),
        token_label=setup.token_label,
        pin_file=setup.pin_file,
        key_name=KEY_NAME,
        softhsm_conf=setup.conf_path,
    )


def _unloadable_library(setup: TokenSetup) -> HSMToken:
    return HSMToken.from_pin_file(
        lib_path=setup.conf_path,  # a file, but not a shared object
        token_label=setup.token_label,
        pin_file=setup.pin_file,
        key_name=KEY_NAME,
        softhsm_conf=setup.conf_path,
    )


def _missing_tokendir(setup: TokenSetup) -> HSMToken:
    conf = setup.conf_path.with_name("broken.conf")
    conf.write_text("directories.tokendir = /nonexistent/tokens\nobjectstore.backend = file\n")
    return HSMToken.from_pin_file(
        lib_path=setup.lib_path,
        token_label=setup.token_label,
        pin_file=setup.pin_file,
        key_name=KEY_NAME,
        softhsm_conf=conf,
    )


def _pin_file_readable_by_others(setup: TokenSetup) -> HSMToken:
    setup.pin_file.chmod(0o644)
    return open_handle(setup)


@pytest.mark.parametrize(
    ("opener", "error", "message"),
    [
        pytest.param(_wrong_pin, PinError, "wrong PIN", id="wrong_pin"),
        pytest.param(_missing_token_label, HSMError, "not present", id="missing_token_label"),
        pytest.param(_missing_library, HSMError, "does not exist", id="missing_library_path"),
        pytest.param(_unloadable_library, HSMError, "cannot be loaded", id="unloadable_library"),
        pytest.param(_missing_tokendir, HSMError, "failed to initialise", id="missing_tokendir"),
        pytest.param(_pin_file_readable_by_others, ConfigError, "chmod 600", id="pin_file_mode"),
    ],
)
def test_open_failures_are_clear_and_change_nothing(
    hsm_setup: TokenSetup,
    opener: Callable[[TokenSetup], HSMToken],
    error: type[Exception],
    message: str,
) -> None:
    before = token_files(hsm_setup)
    with pytest.raises(error) as err:
        opener(hsm_setup)
    assert message in str(err.value) + str(getattr(err.value, "fix", ""))
    assert token_files(hsm_setup) == before
    # The process is left usable: the right configuration still opens.
    hsm_setup.pin_file.chmod(0o600)
    open_handle(hsm_setup).close()


def test_wrong_pin_without_verifier_is_refused_by_the_token(hsm_setup: TokenSetup) -> None:
    pinguard.verifier_path(hsm_setup.pin_file).unlink()
    with pytest.raises(PinError, match="token refused it"):
        _wrong_pin(hsm_setup)


def test_wrong_pin_while_logged_in_is_still_wrong(token: HSMToken, hsm_setup: TokenSetup) -> None:
    """C_Login answers UserAlreadyLoggedIn for any PIN once the process is logged in."""
    pinguard.verifier_path(hsm_setup.pin_file).unlink()
    with pytest.raises(PinError, match="wrong PIN"):
        _wrong_pin(hsm_setup)


def test_pin_failures_are_rate_limited_across_handles(hsm_setup: TokenSetup) -> None:
    for _ in range(pinguard.PinPolicy().free_attempts):
        with pytest.raises(PinError, match="wrong PIN"):
            _wrong_pin(hsm_setup)
    # Even the right PIN is now refused, with a time to retry.
    with pytest.raises(PinError, match="refused after 3 consecutive failures; retry after") as err:
        open_handle(hsm_setup)
    assert "check pin_file" in err.value.diagnostics()
    assert (hsm_setup.pin_file.parent / "pin-failures.json").exists()


def test_corrupted_failure_record_fails_closed(hsm_setup: TokenSetup) -> None:
    (hsm_setup.pin_file.parent / "pin-failures.json").write_text("{not json")
    with pytest.raises(ConfigError, match="corrupted"):
        open_handle(hsm_setup)


def test_success_resets_the_failure_count(hsm_setup: TokenSetup) -> None:
    with pytest.raises(PinError):
        _wrong_pin(hsm_setup)
    open_handle(hsm_setup).close()
    record = (hsm_setup.pin_file.parent / "pin-failures.json").read_text()
    assert '"failures": 0' in record


@pytest.mark.parametrize(
    ("failures", "allowed"),
    [(0, True), (2, True), (3, False), (10, False)],
)
def test_pin_policy_window(failures: int, allowed: bool) -> None:
    policy = pinguard.PinPolicy(free_attempts=3, base_delay_seconds=30, max_delay_seconds=3600)
    until = policy.refused_until(failures, last_failure=1000.0)
    assert (until is None or until <= 1000.0) == allowed
    if failures == 10:
        assert until == 1000.0 + 3600


def test_unknown_key_version(token: HSMToken) -> None:
    _, blob = token.encrypt(b"x", aad)
    with pytest.raises(KeyVersionMissing, match="v7"):
        token.decrypt(7, blob, aad(7))


def test_no_version_yet_names_the_fix(hsm_setup: TokenSetup) -> None:
    with open_handle(hsm_setup, "empty-key") as handle, pytest.raises(KeyVersionMissing) as err:
        handle.current_version()
    assert "hsm rotate" in err.value.diagnostics()


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(
            lambda v, b: (v, b, envelope.aad_for("other-mount", KEY_NAME, v)), id="wrong_aad_mount"
        ),
        pytest.param(
            lambda v, b: (v, b, envelope.aad_for("transit", "other-key", v)),
            id="wrong_aad_key_name",
        ),
        pytest.param(lambda v, b: (v, b[:-1] + bytes([b[-1] ^ 1]), aad(v)), id="flipped_tag_bit"),
        pytest.param(
            lambda v, b: (v, b[:12] + bytes([b[12] ^ 1]) + b[13:], aad(v)),
            id="flipped_ciphertext_bit",
        ),
        pytest.param(lambda v, b: (v, bytes(12) + b[12:], aad(v)), id="replaced_nonce"),
    ],
)
def test_decrypt_failures(
    token: HSMToken, tamper: Callable[[int, bytes], tuple[int, bytes, bytes]]
) -> None:
    version, blob = token.encrypt(b"secret", aad)
    v, b, a = tamper(version, blob)
    with pytest.raises(DecryptionFailed, match="does not authenticate"):
        token.decrypt(v, b, a)


def test_other_key_name_does_not_decrypt(token: HSMToken, hsm_setup: TokenSetup) -> None:
    version, blob = token.encrypt(b"secret", aad)
    with open_handle(hsm_setup, "other-key") as other:
        other.generate_version()
        with pytest.raises(DecryptionFailed):
            other.decrypt(version, blob, aad(version))


def test_closed_handle_refuses_work(hsm_setup: TokenSetup) -> None:
    handle = open_handle(hsm_setup)
    handle.close()
    with pytest.raises(HSMError, match="closed"):
        handle.generate_version()
