"""Break-glass: ceremony, loss of the HSM, restore from M of N shares."""

from __future__ import annotations

import argparse
import base64
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pyrage
import pytest

from clawql_secrets.errors import InputError, IntegrityError
from clawql_secrets.hsm import ceremony, commands, envelope
from clawql_secrets.hsm.softhsm import TokenSetup, ensure_token
from clawql_secrets.hsm.token import HSMToken
from tests.hsm.conftest import KEY_NAME, open_handle, token_files


def aad(version: int) -> bytes:
    return envelope.aad_for("transit", KEY_NAME, version)


class Holders:
    def __init__(self, n: int) -> None:
        self.identities = [pyrage.x25519.Identity.generate() for _ in range(n)]
        self.public = [str(i.to_public()) for i in self.identities]

    def open_all(self, out: Path) -> list[tuple[str, bytes]]:
        return [
            (f"share-{i}.age", ceremony.decrypt_share((out / f"share-{i}.age").read_bytes(), ident))
            for i, ident in enumerate(self.identities, start=1)
        ]


@pytest.fixture
def holders() -> Holders:
    return Holders(5)


@pytest.fixture
def escrowed(
    token: HSMToken, holders: Holders, tmp_path: Path
) -> tuple[Path, list[tuple[str, bytes]]]:
    """A 3-of-5 ceremony on the test token; returns the output dir and opened shares."""
    out = tmp_path / "ceremony"
    result = ceremony.ceremony(token, holders.public, out, threshold=3)
    assert result.manifest["key_version"] == 2
    return out, holders.open_all(out)


def fresh_token(setup: TokenSetup) -> HSMToken:
    """Lose the HSM: wipe the token directory and make a new, empty token."""
    shutil.rmtree(setup.conf_path.parent / "tokens")
    ensure_token(setup.conf_path.parent)
    return open_handle(setup)


def test_ceremony_then_loss_then_restore_from_three_shares(
    hsm_setup: TokenSetup, token: HSMToken, escrowed: tuple[Path, list[tuple[str, bytes]]]
) -> None:
    out, shares = escrowed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["threshold"] == 3 and len(manifest["holders"]) == 5
    info = token.key_info(2)
    assert info.sensitive and not info.extractable and not info.generated_in_token
    version, blob = token.encrypt(b"root key", aad)
    assert version == 2
    token.close()

    old_pin = hsm_setup.pin_file.read_bytes()
    with fresh_token(hsm_setup) as new:
        assert new.versions() == ()
        assert hsm_setup.pin_file.read_bytes() != old_pin  # a new token, a new PIN
        restored = ceremony.restore(
            [shares[4], shares[0], shares[2]], new, pin=ceremony.load_pin(out / "manifest.json")
        )
        assert restored == 2
        assert new.decrypt(2, blob, aad(2)) == b"root key"
        assert not new.key_info(2).extractable


def _restore_refused(
    hsm_setup: TokenSetup, token: HSMToken, shares: list[tuple[str, bytes]]
) -> Exception:
    """Restore into a fresh token must fail and write nothing."""
    token.close()
    with fresh_token(hsm_setup) as new:
        before = token_files(hsm_setup)
        with pytest.raises((InputError, IntegrityError)) as err:
            ceremony.restore(shares, new)
        assert new.versions() == ()
        assert token_files(hsm_setup) == before
    return err.value


def test_two_shares_are_refused_and_nothing_written(
    hsm_setup: TokenSetup, token: HSMToken, escrowed: tuple[Path, list[tuple[str, bytes]]]
) -> None:
    _, shares = escrowed
    err = _restore_refused(hsm_setup, token, shares[:2])
    assert isinstance(err, InputError) and "needs 3" in str(err)


def _tamper_share_value(data: bytes) -> bytes:
    doc = json.loads(data)
    raw = bytearray(base64.b64decode(doc["share"]))
    raw[0] ^= 1
    doc["share"] = base64.b64encode(bytes(raw)).decode()
    return json.dumps(doc).encode()


def _tamper_threshold(data: bytes) -> bytes:
    doc = json.loads(data)
    doc["threshold"] = 2
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("tamper", "fragment"),
    [
        pytest.param(_tamper_share_value, "signature does not verify", id="altered_share_value"),
        pytest.param(_tamper_threshold, "signature does not verify", id="altered_threshold"),
        pytest.param(lambda d: d[:-5], "not a JSON share", id="truncated"),
        pytest.param(
            lambda d: d.replace(b'"share": "', b'"share": "!'), "base64", id="bad_encoding"
        ),
    ],
)
def test_tampered_share_is_named(
    hsm_setup: TokenSetup,
    token: HSMToken,
    escrowed: tuple[Path, list[tuple[str, bytes]]],
    tamper: Callable[[bytes], bytes],
    fragment: str,
) -> None:
    _, shares = escrowed
    name, data = shares[1]
    bad = [shares[0], (name, tamper(data)), shares[2], shares[3]]
    err = _restore_refused(hsm_setup, token, bad)
    assert isinstance(err, IntegrityError)
    assert f"share {name}" in str(err) and fragment in str(err)


def test_share_from_another_ceremony_is_named(
    hsm_setup: TokenSetup,
    token: HSMToken,
    holders: Holders,
    escrowed: tuple[Path, list[tuple[str, bytes]]],
    tmp_path: Path,
) -> None:
    out, shares = escrowed
    other_out = tmp_path / "other-ceremony"
    ceremony.ceremony(token, holders.public, other_out, threshold=3)
    foreign = holders.open_all(other_out)[3]
    foreign = ("foreign-share-4.age", foreign[1])
    mixed = [shares[0], shares[1], foreign, shares[2]]
    # Without a pin the majority decides; with one, the manifest does.
    for pin in (None, ceremony.load_pin(out / "manifest.json")):
        with pytest.raises(
            IntegrityError, match=r"foreign-share-4\.age belongs to another ceremony"
        ):
            ceremony.restore(mixed, token, pin=pin)
    assert token.versions() == (1, 2, 3)


def test_duplicate_share_does_not_count_twice(
    hsm_setup: TokenSetup, token: HSMToken, escrowed: tuple[Path, list[tuple[str, bytes]]]
) -> None:
    _, shares = escrowed
    dup = [shares[0], shares[1], ("copy.age", shares[1][1])]
    err = _restore_refused(hsm_setup, token, dup)
    assert "same share" in str(err)


def test_altered_encrypted_share_and_wrong_holder_are_refused(
    holders: Holders, escrowed: tuple[Path, list[tuple[str, bytes]]]
) -> None:
    out, _ = escrowed
    blob = bytearray((out / "share-1.age").read_bytes())
    blob[-3] ^= 1
    with pytest.raises(IntegrityError, match=r"share-1\.age cannot be decrypted"):
        ceremony.decrypt_share(bytes(blob), holders.identities[0], "share-1.age")
    with pytest.raises(IntegrityError, match="cannot be decrypted"):
        ceremony.decrypt_share((out / "share-1.age").read_bytes(), holders.identities[1])


@pytest.mark.parametrize(
    ("pick", "threshold", "fragment"),
    [
        pytest.param(
            lambda pub: ["age1notakey", *pub[:2]], 2, "not an age X25519", id="bad_public_key"
        ),
        pytest.param(lambda pub: pub, 6, "threshold", id="threshold_above_holders"),
        pytest.param(lambda pub: pub, 1, "threshold", id="threshold_one"),
        pytest.param(
            lambda pub: [pub[0], pub[0], pub[1]], 2, "listed twice", id="duplicate_holder"
        ),
    ],
)
def test_ceremony_input_errors_write_nothing(
    token: HSMToken,
    holders: Holders,
    tmp_path: Path,
    pick: Callable[[list[str]], list[str]],
    threshold: int,
    fragment: str,
) -> None:
    out = tmp_path / "out"
    with pytest.raises(InputError, match=fragment):
        ceremony.ceremony(token, pick(holders.public), out, threshold=threshold)
    assert token.versions() == (1,)
    assert not out.exists() or not any(out.iterdir())


def test_cli_ceremony_share_decrypt_restore(
    hsm_setup: TokenSetup, token: HSMToken, holders: Holders, config_file: Path, tmp_path: Path
) -> None:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())

    def run(*argv: str) -> int:
        args = parser.parse_args(["hsm", *argv])
        result: int = args.func(args)
        return result

    token.close()
    out = tmp_path / "shares"
    holders_file = tmp_path / "holders.txt"
    holders_file.write_text("# key holders\n" + "\n".join(holders.public) + "\n")
    assert (
        run(
            "ceremony",
            "--config",
            str(config_file),
            "--holders-file",
            str(holders_file),
            "--threshold",
            "3",
            "--out",
            str(out),
        )
        == 0
    )
    opened = []
    for i in (2, 3, 5):
        ident = tmp_path / f"holder{i}.key"
        ident.write_text(f"# holder {i}\n{holders.identities[i - 1]}\n")
        dest = tmp_path / f"share-{i}.json"
        assert (
            run(
                "share-decrypt",
                "--identity",
                str(ident),
                str(out / f"share-{i}.age"),
                "--out",
                str(dest),
            )
            == 0
        )
        assert dest.stat().st_mode & 0o777 == 0o600
        opened.append(dest)
    shutil.rmtree(hsm_setup.conf_path.parent / "tokens")
    ensure_token(hsm_setup.conf_path.parent)
    argv = ["restore", "--config", str(config_file), "--manifest", str(out / "manifest.json")]
    for path in opened:
        argv += ["--share", str(path)]
    assert run(*argv) == 0
    with open_handle(hsm_setup) as new:
        assert new.versions() == (2,)
