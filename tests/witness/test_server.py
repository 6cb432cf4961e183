"""POST /add-checkpoint over HTTP (in process): statuses, bodies and content types per spec."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from clawql_secrets.audit.checkpoint import Ed25519Signer, SignedNote
from clawql_secrets.audit.cosignature import add_cosignatures, cosignature_timestamp
from clawql_secrets.witness.server import Witness, build_app
from tests.witness.conftest import NOW, ORIGIN, Log

LIMIT = 4096


@pytest.fixture
def http(witness: Witness) -> Iterator[TestClient]:
    with TestClient(build_app(witness, max_body_bytes=LIMIT, read_timeout=5)) as client:
        yield client


def post(http: TestClient, body: bytes) -> tuple[int, str, bytes]:
    r = http.post("/add-checkpoint", content=body)
    return r.status_code, r.headers.get("content-type", ""), r.content


def test_200_is_one_signature_line(http: TestClient, witness: Witness, log: Log) -> None:
    note = log.grow(3).note()
    status, ctype, body = post(http, log.request(0))
    assert status == 200 and ctype == "text/plain; charset=utf-8"
    assert body.startswith("\u2014 witness.test/w1 ".encode()) and body.count(b"\n") == 1
    # tlog-witness: the client may concatenate the answer to the checkpoint and verify.
    joined = SignedNote.parse(note).text + b"\n" + body
    assert cosignature_timestamp(joined, witness.key) == NOW
    lines = SignedNote.parse(joined).signatures
    assert cosignature_timestamp(add_cosignatures(note, lines), witness.key) == NOW


def test_409_body_and_content_type(http: TestClient, log: Log) -> None:
    assert post(http, log.grow(3).request(0))[0] == 200
    status, ctype, body = post(http, log.grow(2).request(0))
    assert (status, ctype, body) == (409, "text/x.tlog.size", b"3\n")


def test_refusal_statuses(http: TestClient, witness: Witness, log: Log) -> None:
    assert post(http, log.grow(4).request(0))[0] == 200
    stranger = Log(Ed25519Signer.generate(ORIGIN)).grow(2)
    elsewhere = Log(log.signer, "clawql.local/audit/n7").grow(2)
    log.grow(4)
    bad_proof = log.request(4).replace(log.request(4).split(b"\n")[1], b"A" * 43 + b"=")
    cases = {
        "garbage": (b"hello", 400),
        "old-beyond-size": (b"old 9\n\n" + log.note(size=4), 400),
        "unknown-origin": (elsewhere.request(0), 404),
        "untrusted-key": (stranger.request(0), 403),
        "bad-proof": (bad_proof, 422),
    }
    for name, (body, want) in cases.items():
        status, ctype, text = post(http, body)
        assert status == want, (name, text)
        assert ctype.startswith("text/plain") and text.endswith(b"\n"), name
    assert witness.store.get(ORIGIN) is not None
    assert witness.store.get(ORIGIN).size == 4  # type: ignore[union-attr]


def test_413_before_and_while_reading(http: TestClient, witness: Witness, log: Log) -> None:
    body = b"old 0\n\n" + b"x" * (LIMIT + 1)
    assert post(http, body)[0] == 413  # Content-Length over the limit

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        yield b"old 0\n\n"
        for _ in range(LIMIT // 512 + 1):
            yield b"x" * 512

    assert http.post("/add-checkpoint", content=chunks()).status_code == 413
    assert witness.store.get(ORIGIN) is None


def test_bad_content_length_is_400(http: TestClient) -> None:
    r = http.post("/add-checkpoint", content=b"old 0\n\n", headers={"content-length": "-5"})
    assert r.status_code == 400


def test_other_methods_and_paths(http: TestClient) -> None:
    assert http.get("/add-checkpoint").status_code == 405
    assert http.post("/add-checkpoint/", content=b"").status_code == 404
    assert http.post("/checkpoint", content=b"").status_code == 404


def test_503_when_state_cannot_be_persisted(http: TestClient, witness: Witness, log: Log) -> None:
    shutil.rmtree(witness.store.directory)
    status, _, text = post(http, log.grow(2).request(0))
    assert status == 503 and b"nothing was cosigned" in text
    assert witness.store.get(ORIGIN) is None
