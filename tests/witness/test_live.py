"""The witness as it ships: `clawql-secrets audit witness serve` in a subprocess on loopback.

Driven with ``WitnessClient`` and real checkpoints of an ``AuditLog``; then
killed with SIGKILL in the middle of a stream of requests and restarted, to
show the state on disk is the last one acknowledged (or the one in flight,
persisted but not yet answered), never older and never corrupt.
"""

from __future__ import annotations

import json
import selectors
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from clawql_secrets.audit import verify
from clawql_secrets.audit.checkpoint import Ed25519Signer
from clawql_secrets.audit.cosignature import (
    WitnessKey,
    WitnessSigner,
    add_cosignatures,
    check_witnesses,
)
from clawql_secrets.audit.log import AuditLog, latest_note
from clawql_secrets.audit.store import LocalWormStore, MemoryWormStore
from clawql_secrets.audit.witnessing import WitnessSubmitter
from clawql_secrets.cli import main
from clawql_secrets.errors import BackendError, InputError, IntegrityError
from clawql_secrets.witness.client import InconsistentCheckpoint, WitnessClient, WitnessConflict
from clawql_secrets.witness.config import witness_command
from tests.witness.conftest import ORIGIN, Log

STARTUP_TIMEOUT = 20.0


class Served:
    """One witness process; its URL is read from the readiness line it prints."""

    def __init__(self, config: Path, log_file: Path) -> None:
        self.log_file = log_file
        with log_file.open("ab") as err:
            self.proc = subprocess.Popen(
                witness_command(config),
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        self.url = self._ready()

    def _ready(self) -> str:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(STARTUP_TIMEOUT):
                self.stop()
                raise AssertionError(f"witness did not start: {self.log_file.read_text()}")
        line = self.proc.stdout.readline().decode()
        if " listening on " not in line:
            self.stop()
            raise AssertionError(f"witness failed: {line!r} {self.log_file.read_text()}")
        return line.rsplit(" ", 1)[1].strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def setup(tmp_path: Path, log_signer: Ed25519Signer) -> tuple[Path, WitnessKey]:
    config = tmp_path / "witness.json"
    config.write_text(
        json.dumps(
            {
                "name": "witness.test/live",
                "key_file": "witness.key",
                "state_dir": "state",
                "port": 0,
                "read_timeout_seconds": 1,
                "logs": [{"origin": ORIGIN, "verifier_keys": [str(log_signer.verifier_key())]}],
            }
        )
    )
    assert main(["audit", "witness", "init", "--config", str(config)]) == 0
    return config, WitnessSigner.from_file(tmp_path / "witness.key").witness_key()


@pytest.fixture
def served(setup: tuple[Path, WitnessKey], tmp_path: Path) -> Iterator[Served]:
    witness = Served(setup[0], tmp_path / "witness.log")
    try:
        yield witness
    finally:
        witness.stop()


def entry(i: int) -> dict[str, object]:
    return {"type": "response", "request": {"path": f"kv/data/a/{i}"}, "seq": i}


def test_live_witness_cosigns_the_audit_log(
    served: Served, setup: tuple[Path, WitnessKey], log_signer: Ed25519Signer
) -> None:
    key = setup[1]
    store = MemoryWormStore()
    audit = AuditLog(store, log_signer)
    for i in range(10):
        audit.append("n1", entry(i))
    first = audit.checkpoint("n1")
    assert first is not None and first.origin == ORIGIN
    note1 = latest_note(store, "n1")
    assert note1 is not None
    with WitnessClient(served.url, key, timeout=5) as client:
        # 1. First contact: old size 0, no proof.
        line = client.add_checkpoint(0, [], note1)
        assert check_witnesses(add_cosignatures(note1, [line]), [key], 1) == {
            key.name: key.verify(first.body(), line)
        }
        # 2. Growth with the log's own consistency proof.
        for i in range(10, 37):
            audit.append("n1", entry(i))
        second = audit.checkpoint("n1")
        assert second is not None
        note2 = latest_note(store, "n1")
        assert note2 is not None
        proof = verify.consistency(store, "n1", first.size, second.size, log_signer.verifier_key())
        line2 = client.add_checkpoint(first.size, proof.path, note2)
        check_witnesses(add_cosignatures(note2, [line2]), [key], 1)
        # 3. A stale old size: 409 with the size the witness holds.
        with pytest.raises(WitnessConflict) as stale:
            client.add_checkpoint(0, [], note2)
        assert stale.value.known_size == second.size
        # 4. A bad proof: 422, an IntegrityError.
        for i in range(37, 50):
            audit.append("n1", entry(i))
        third = audit.checkpoint("n1")
        assert third is not None
        note3 = latest_note(store, "n1")
        assert note3 is not None
        good = verify.consistency(store, "n1", second.size, third.size, log_signer.verifier_key())
        with pytest.raises(InconsistentCheckpoint):
            client.add_checkpoint(second.size, list(reversed(good.path)), note3)
        assert issubclass(InconsistentCheckpoint, IntegrityError)
        # 5. Rolling back to an older checkpoint signed by the log: refused (400).
        with pytest.raises(InputError):
            client.add_checkpoint(second.size, [], note1)
        # 6. The witness still holds the second checkpoint and accepts the third.
        client.add_checkpoint(second.size, good.path, note3)
    # Limits over a real socket: 413 on a large body, 408 on a body that never ends.
    big = httpx.post(served.url + "/add-checkpoint", content=b"old 0\n\n" + b"x" * 70_000)
    assert big.status_code == 413
    assert _slow_body_status(served.url) == 408


def _slow_body_status(url: str) -> int:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /add-checkpoint HTTP/1.1\r\nHost: w\r\nContent-Length: 500\r\n\r\nold 0\n"
        )
        answer = sock.recv(4096)
    return int(answer.split(b" ", 2)[1])


def test_kill_9_keeps_the_last_acknowledged_state(
    setup: tuple[Path, WitnessKey], tmp_path: Path, log_signer: Ed25519Signer
) -> None:
    config, key = setup
    log = Log(log_signer).grow(400)
    acked = [0]
    attempted: list[int] = []
    errors: list[Exception] = []
    first = Served(config, tmp_path / "witness.log")
    try:

        def submit(url: str) -> None:
            with WitnessClient(url, key, timeout=5) as client:
                size = 0
                while size < 399:
                    size += 1
                    attempted.append(size)
                    try:
                        client.add_checkpoint(acked[0], log.proof(acked[0], size), log.note(size))
                    except BackendError as exc:  # the witness died under us
                        errors.append(exc)
                        return
                    acked[0] = size

        thread = threading.Thread(target=submit, args=(first.url,))
        thread.start()
        deadline = time.monotonic() + 20
        while acked[0] < 25 and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        first.kill9()  # SIGKILL: no cleanup, possibly mid-write
        thread.join(10)
        assert not thread.is_alive() and errors, "the requests should fail once the witness died"
    finally:
        first.stop()

    last_acked, in_flight = acked[0], attempted[-1]
    assert last_acked >= 25
    second = Served(config, tmp_path / "witness.log")
    try:
        with WitnessClient(second.url, key, timeout=5) as client:
            with pytest.raises(WitnessConflict) as held:
                client.add_checkpoint(0, [], log.note(1))
            known = held.value.known_size
            # Never older than what was acknowledged; at most the request in flight.
            assert known in (last_acked, in_flight)
            client.add_checkpoint(known, log.proof(known, 399), log.note(399))
        leftovers = [p.name for p in (tmp_path / "state").iterdir() if p.name.endswith(".tmp")]
        assert leftovers == []
    finally:
        second.stop()


def test_verify_holds_the_store_to_what_the_witness_cosigned(
    served: Served, setup: tuple[Path, WitnessKey], log_signer: Ed25519Signer, tmp_path: Path
) -> None:
    """Red team (issue 14): a tail cut back to an earlier *cosigned* checkpoint, or a whole
    stream deleted, passed `verify --witness-key`: the stored cosignatures that remain all
    hold. `--witness-url` asks the witness for every head it cosigned; the store must still
    hold each one."""
    key = setup[1]
    store = LocalWormStore(tmp_path / "store")
    audit = AuditLog(store, log_signer)
    with WitnessClient(served.url, key, timeout=5) as client:
        sub = WitnessSubmitter([client], store)
        for lo, hi in ((0, 10), (10, 25)):
            for i in range(lo, hi):
                audit.append("n1", entry(i))
            cp = audit.checkpoint("n1")
            assert cp is not None
            note = latest_note(store, "n1")
            assert note is not None
            assert sub.submit("n1", audit.stream("n1").tree, cp, note) == 1
        assert [c.size for c in client.checkpoints()] == [25]
    pub = tmp_path / "verifier.txt"
    pub.write_text(str(log_signer.verifier_key()) + "\n")
    base = ["audit", "verify", "--store", str(tmp_path / "store"), "--pubkey-file", str(pub)]
    witness = ["--witness-key", str(key), "--witness-url", served.url]
    assert main([*base, *witness]) == 0
    # `prove` holds its proof to a witness policy too, and names who cosigned.
    prove = ["audit", "prove", "--store", str(tmp_path / "store"), "--pubkey-file", str(pub)]
    prove += ["--stream", "n1", "--index", "3", "--witness-key", str(key)]
    assert main(prove) == 0
    stranger = WitnessSigner.generate("witness.test/other").witness_key()
    assert main([*prove, "--witness-key", str(stranger), "--witness-threshold", "2"]) != 0
    # The log's operator cuts the tail back to the cosigned size 10, cosignatures included.
    root = tmp_path / "store"
    (root / "checkpoints/n1/00000000000000000025.txt").unlink()
    (root / "segments/n1/00000000000000000010-00000000000000000024.jsonl").unlink()
    shutil.rmtree(root / "cosignatures/n1/00000000000000000025")
    assert main([*base, "--witness-key", str(key)]) == 0  # what the red team saw
    assert main([*base, *witness]) == 1  # held to the witness: NOT verified
    # and a stream deleted whole is missed by the store alone, not by the witness
    for sub_dir in ("checkpoints", "segments", "cosignatures"):
        shutil.rmtree(root / sub_dir / "n1")
    (root / "segments/n2").mkdir(parents=True)
    other = AuditLog(store, log_signer)
    other.append("n2", entry(0))
    other.checkpoint("n2")
    with WitnessClient(served.url, key) as client:
        held = client.checkpoints()
    with pytest.raises(IntegrityError, match="missing from the store"):
        verify.verify(store, log_signer.verifier_key(), known=held)
