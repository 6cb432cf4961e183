"""WitnessClient against a witness faked at the HTTP interface (httpx MockTransport)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from clawql_secrets.audit.checkpoint import NoteSignature, SignedNote
from clawql_secrets.audit.cosignature import WitnessSigner
from clawql_secrets.errors import BackendError, ConfigError, InputError, IntegrityError
from clawql_secrets.witness.client import InconsistentCheckpoint, WitnessClient, WitnessConflict
from clawql_secrets.witness.state import AddCheckpointRequest
from tests.witness.conftest import NOW, Log

URL = "http://witness.invalid/prefix/"
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def note(log: Log) -> bytes:
    return log.grow(6).note()


def client(witness_signer: WitnessSigner, handler: Handler) -> WitnessClient:
    return WitnessClient(URL, witness_signer.witness_key(), transport=httpx.MockTransport(handler))


def answer(status: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> Handler:
    return lambda _request: httpx.Response(status, content=body, headers={"content-type": ctype})


def test_sends_the_spec_body_and_returns_the_verified_line(
    witness_signer: WitnessSigner, log: Log, note: bytes
) -> None:
    seen: list[httpx.Request] = []
    line = witness_signer.cosign(SignedNote.parse(note).text, NOW)
    other = WitnessSigner.generate("other.witness/w9").cosign(SignedNote.parse(note).text, NOW)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=(other.line() + line.line()).encode())

    proof = log.proof(3)
    with client(witness_signer, handler) as c:
        assert c.add_checkpoint(3, proof, note) == line
    request = seen[0]
    assert request.method == "POST" and request.url.path == "/prefix/add-checkpoint"
    assert request.content == AddCheckpointRequest.build(3, proof, note).to_bytes()
    assert request.content.startswith(b"old 3\n")


def test_409_is_witness_conflict_with_the_size(witness_signer: WitnessSigner, note: bytes) -> None:
    with (
        client(witness_signer, answer(409, b"17\n", "text/x.tlog.size")) as c,
        pytest.raises(WitnessConflict) as conflict,
    ):
        c.add_checkpoint(0, [], note)
    assert conflict.value.known_size == 17


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"17\n", "text/plain"),
        (b"17", "text/x.tlog.size"),
        (b"017\n", "text/x.tlog.size"),
        (b"-1\n", "text/x.tlog.size"),
        (b"99999999999999999999\n", "text/x.tlog.size"),
        (b"", "text/x.tlog.size"),
    ],
)
def test_409_outside_the_spec_is_backend_error(
    witness_signer: WitnessSigner, note: bytes, body: bytes, ctype: str
) -> None:
    with (
        client(witness_signer, answer(409, body, ctype)) as c,
        pytest.raises(BackendError, match="409"),
    ):
        c.add_checkpoint(0, [], note)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (422, InconsistentCheckpoint),
        (400, InputError),
        (413, InputError),
        (403, ConfigError),
        (404, ConfigError),
        (500, BackendError),
        (503, BackendError),
        (302, BackendError),
    ],
)
def test_statuses_map_to_typed_errors(
    witness_signer: WitnessSigner, note: bytes, status: int, error: type[Exception]
) -> None:
    with (
        client(witness_signer, answer(status, b"reason\x00 given\n")) as c,
        pytest.raises(error) as refused,
    ):
        c.add_checkpoint(0, [], note)
    assert "\x00" not in str(refused.value)
    assert issubclass(InconsistentCheckpoint, IntegrityError)


def test_200_without_our_line_is_integrity_error(
    witness_signer: WitnessSigner, note: bytes
) -> None:
    other = WitnessSigner.generate(witness_signer.name)  # same name, another key
    line = other.cosign(SignedNote.parse(note).text, NOW).line().encode()
    with (
        client(witness_signer, answer(200, line)) as c,
        pytest.raises(IntegrityError, match="without a cosignature"),
    ):
        c.add_checkpoint(0, [], note)


def test_200_with_a_forged_line_is_integrity_error(
    witness_signer: WitnessSigner, note: bytes
) -> None:
    good = witness_signer.cosign(SignedNote.parse(note).text, NOW)
    forged = NoteSignature(
        good.key_name, good.key_hash, (NOW + 1).to_bytes(8, "big") + good.signature[8:]
    )
    with (
        client(witness_signer, answer(200, forged.line().encode())) as c,
        pytest.raises(IntegrityError, match="does not verify"),
    ):
        c.add_checkpoint(0, [], note)


def test_200_for_another_checkpoint_is_integrity_error(
    witness_signer: WitnessSigner, log: Log, note: bytes
) -> None:
    older = witness_signer.cosign(log.checkpoint(size=3).body(), NOW)
    with (
        client(witness_signer, answer(200, older.line().encode())) as c,
        pytest.raises(IntegrityError),
    ):
        c.add_checkpoint(0, [], note)


@pytest.mark.parametrize("body", [b"", b"ok\n", b"\xff\xfe\n", "\u2014 w\n".encode()])
def test_200_garbage_is_backend_error(
    witness_signer: WitnessSigner, note: bytes, body: bytes
) -> None:
    with (
        client(witness_signer, answer(200, body)) as c,
        pytest.raises(BackendError, match="without signature lines"),
    ):
        c.add_checkpoint(0, [], note)


def test_oversized_answer_is_backend_error(witness_signer: WitnessSigner, note: bytes) -> None:
    with (
        client(witness_signer, answer(200, b"x" * (65 * 1024))) as c,
        pytest.raises(BackendError, match="over"),
    ):
        c.add_checkpoint(0, [], note)


@pytest.mark.parametrize(
    "exc",
    [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("bad")],
)
def test_transport_errors_are_backend_errors(
    witness_signer: WitnessSigner, note: bytes, exc: httpx.HTTPError
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    with client(witness_signer, handler) as c, pytest.raises(BackendError) as failed:
        c.add_checkpoint(0, [], note)
    assert failed.value.__cause__ is exc


def test_bad_arguments_are_input_errors(witness_signer: WitnessSigner, note: bytes) -> None:
    with client(witness_signer, answer(500, b"")) as c:
        for old, proof, note_bytes in ((-1, [], note), (0, [b"short"], note), (0, [], b"x\n")):
            with pytest.raises(InputError):
                c.add_checkpoint(old, proof, note_bytes)
    with pytest.raises(ConfigError):
        WitnessClient("ftp://x", witness_signer.witness_key())
