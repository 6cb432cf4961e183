"""Issue 14 (2): a stalled or failing shipper is loud.

The states and the document (pure), the bounded backlog measurement, the
shipper's status under real failures (a store outage, a checkpoint key that no
longer matches the store: the incident), its metrics, and a real ``audit ship``
process refusing every stream while its audit file grows.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from clawql_secrets.audit.checkpoint import Ed25519Signer
from clawql_secrets.audit.metrics import ShipperMetrics, registry_for
from clawql_secrets.audit.redact import Redactor
from clawql_secrets.audit.ship_config import ShipConfig, shipper_command, write_config
from clawql_secrets.audit.shipper import Shipper, ShipperSettings, StreamSource
from clawql_secrets.audit.store import LocalWormStore, MemoryWormStore, WormStore
from clawql_secrets.audit.stream_status import (
    Backlog,
    LastError,
    State,
    StreamStatus,
    classify,
    observe,
    read_status,
    write_status,
)
from clawql_secrets.audit.tail import Cursor, TailConfig
from clawql_secrets.errors import InputError
from tests.audit.auditgen import AuditFile
from tests.audit.conftest import DownStore

I = 10.0  # the checkpoint interval of these tests  # noqa: E741
SETTINGS = ShipperSettings(interval_seconds=I, poll_seconds=0.02, retry_seconds=0.01)
_REDACTOR: list[Redactor] = []


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def shipper_for(
    tmp: Path,
    store: WormStore,
    signer: Ed25519Signer,
    clock: Clock,
    settings: ShipperSettings = SETTINGS,
) -> Shipper:
    if not _REDACTOR:
        _REDACTOR.append(Redactor())
    src = StreamSource("n1", tmp / "nodes" / "n1" / "audit.log", tmp / "cursors")
    return Shipper(
        [src],
        store,
        signer,
        settings,
        redactor=_REDACTOR[0],
        metrics=ShipperMetrics(clock),
        clock=clock,
    )


def samples(shipper: Shipper) -> dict[str, float]:
    """``name{labels}`` -> value of the shipper's exposition."""
    text = generate_latest(registry_for(shipper.metrics)).decode()
    return _parse(text)


def _parse(text: str) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


# -- classify: one row per situation -------------------------------------------------

CASES = [
    # name, lag, progress_age, loop_age, error, behind, expected
    ("idle", 0.0, None, 0.0, False, False, State.OK),
    ("healthy_between_checkpoints", I, 0.5 * I, 0.1, False, False, State.OK),
    ("late_checkpoint", 1.3 * I, 0.2 * I, 0.1, False, False, State.CATCHING_UP),
    ("reading_behind", 0.1, 0.1, 0.1, False, True, State.CATCHING_UP),
    ("long_backlog_still_publishing", 5 * I, 0.4 * I, 0.1, False, True, State.CATCHING_UP),
    ("error_just_now", 0.2 * I, 0.5 * I, 0.1, True, False, State.FAILING),
    ("error_with_nothing_waiting", 0.0, None, 0.1, True, False, State.FAILING),
    ("nothing_published_for_1_5_intervals", 1.6 * I, 1.6 * I, 0.1, False, False, State.STALLED),
    ("never_published_and_waiting", 1.6 * I, None, 0.1, True, True, State.STALLED),
    ("error_while_waiting_long", 1.6 * I, 0.1, 0.1, True, False, State.STALLED),
    ("loop_not_running", 0.0, 0.1, 1.6 * I, False, False, State.STALLED),
]


@pytest.mark.parametrize(
    ("lag", "progress", "loop", "error", "behind", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_classify(
    lag: float, progress: float | None, loop: float, error: bool, behind: bool, expected: State
) -> None:
    got = classify(
        lag_seconds=lag,
        interval=I,
        progress_age=progress,
        loop_age=loop,
        error_active=error,
        reading_behind=behind,
    )
    assert got is expected


# -- the document --------------------------------------------------------------------


def _status(**over: Any) -> StreamStatus:
    values: dict[str, Any] = {
        "stream": "n1",
        "pid": 42,
        "now": 100.0,
        "interval_seconds": I,
        "tree_size": 7,
        "published_size": 5,
        "pending_entries": 2,
        "unread_lines": 3,
        "unread_exact": True,
        "waiting_since": 95.0,
        "reading_behind": False,
        "error_active": True,
        "last_error": LastError("store", "cannot write 'x' to the audit store at /s", 99.0),
        "last_checkpoint_at": 90.0,
        "last_progress_at": 90.0,
    }
    values.update(over)
    return StreamStatus.measured(**values)


def test_document_round_trip_is_atomic_and_private(tmp_path: Path) -> None:
    status = _status()
    assert status.state is State.FAILING and status.lag_entries == 5 and status.lag_seconds == 5
    path = tmp_path / "n1.status.json"
    write_status(path, status)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["n1.status.json"]  # no temporary file left
    doc = json.loads(path.read_text())
    assert doc["state"] == "failing" and doc["lag_entries"] == 5
    assert doc["last_error"] == {"kind": "store", "message": status.last_error.message, "at": 99.0}  # type: ignore[union-attr]
    assert read_status(path) == status
    assert read_status(tmp_path / "missing.status.json") is None


BAD_DOCUMENTS = [
    ("not_an_object", []),
    ("unknown_version", {"v": 2}),
    ("missing_fields", {"v": 1, "stream": "n1"}),
    ("unknown_state", {**_status().to_json(), "state": "fine"}),
    ("negative_count", {**_status().to_json(), "unread_lines": -1}),
    ("zero_interval", {**_status().to_json(), "interval_seconds": 0}),
    ("error_without_time", {**_status().to_json(), "last_error": {"kind": "x", "message": "y"}}),
]


@pytest.mark.parametrize("doc", [d for _, d in BAD_DOCUMENTS], ids=[n for n, _ in BAD_DOCUMENTS])
def test_malformed_documents_are_refused(doc: object) -> None:
    with pytest.raises(InputError):
        StreamStatus.from_json(doc)


def test_status_seen_later_ages_and_stalls() -> None:
    status = _status(error_active=False, last_error=None, waiting_since=100.0)
    assert status.state is State.OK
    assert status.at(100.0 + 1.3 * I).state is State.CATCHING_UP
    later = status.at(100.0 + 1.6 * I)
    assert later.state is State.STALLED and later.lag_seconds == pytest.approx(1.6 * I)


def test_observe_makes_old_documents_and_dead_shippers_stalled(tmp_path: Path) -> None:
    path = tmp_path / "n1.status.json"
    ok = _status(error_active=False, last_error=None, waiting_since=None)
    write_status(path, ok)

    def seen(now: float, alive: bool = True) -> dict[str, Any]:
        return observe(path, stream="n1", interval=I, shipper_alive=alive, now=now)

    assert seen(101.0)["state"] == "ok" and seen(101.0)["document_age_seconds"] == 1.0
    # The loop stopped writing: stalled from 1.5 intervals (the document's own verdict)...
    assert seen(100.0 + 1.6 * I)["state"] == "stalled"
    # ...and a document older than two intervals is stalled whatever it says.
    assert "not updated" in seen(100.0 + 2.1 * I)["note"]
    dead = seen(101.0, alive=False)
    assert dead["state"] == "stalled" and dead["note"] == "the shipper is not running"
    path.write_text("{")
    assert seen(101.0)["state"] == "stalled"
    path.unlink()
    assert seen(101.0)["state"] == "catching_up"  # starting: no document yet
    assert seen(101.0, alive=False)["state"] == "stalled"


# -- the backlog ---------------------------------------------------------------------


def _cursor(path: Path, offset: int) -> Cursor:
    st = path.stat()
    return Cursor("n1", st.st_dev, st.st_ino, offset)


def test_backlog_counts_complete_lines_after_the_read_position(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(b"a\nbb\nccc\npartial")
    backlog = Backlog(path)
    assert backlog.measure(None, 1.0) == (3, True)
    assert backlog.measure(_cursor(path, 2), 2.0) == (2, True)
    assert backlog.measure(_cursor(path, 9), 3.0) == (0, True)
    with path.open("ab") as f:
        f.write(b" line\nnext\n")
    assert backlog.measure(_cursor(path, 9), 4.0) == (2, True)
    assert Backlog(tmp_path / "missing.log").measure(None, 1.0) == (0, False)


def test_backlog_is_bounded_per_call_and_catches_up(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(b"x" * 99 + b"\n" * 1 + (b"y" * 99 + b"\n") * 99)  # 100 lines, 10 000 B
    backlog = Backlog(path, budget_bytes=2_500)
    counts = [backlog.measure(None, float(t)) for t in range(5)]
    assert counts[0] == (25, False)  # a lower bound, said so
    assert counts[3] == (100, True) and counts[4] == (100, True)


def test_backlog_remembers_when_lines_were_first_seen(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(b"1\n2\n")
    backlog = Backlog(path)
    backlog.measure(None, 10.0)
    assert backlog.waiting_since(None) == 10.0
    with path.open("ab") as f:
        f.write(b"3\n")
    backlog.measure(_cursor(path, 4), 20.0)  # lines 1-2 read, not yet published
    assert backlog.waiting_since(None) == 10.0
    assert backlog.waiting_since(_cursor(path, 4)) == 20.0  # 1-2 published: 3 waits since 20
    assert backlog.waiting_since(_cursor(path, 6)) is None
    # A rotation: the committed cursor is in the old file, new lines in the new one.
    old = _cursor(path, 6)
    path.rename(tmp_path / "audit.log.1")
    path.write_bytes(b"4\n")
    assert backlog.measure(old, 30.0) == (1, False)  # the old file's rest is not counted
    assert backlog.waiting_since(old) == 30.0
    assert backlog.waiting_since(_cursor(path, 2)) is None


# -- the shipper under failure ---------------------------------------------------------


def test_a_healthy_stream_is_ok_and_writes_its_document(tmp_path: Path) -> None:
    clock, signer = Clock(), Ed25519Signer.generate("clawql.test/ship")
    audit = AuditFile(tmp_path / "nodes" / "n1" / "audit.log", "n1")
    audit.write_calls(0, 3)
    with shipper_for(tmp_path, MemoryWormStore(), signer, clock) as shipper:
        shipper.drain()
        shipper.publish()
        (status,) = shipper.record_status()
    assert status.state is State.OK
    assert (status.tree_size, status.published_size, status.lag_entries) == (6, 6, 0)
    assert status.last_checkpoint_at == clock.now and status.last_error is None
    doc = tmp_path / "cursors" / "n1.status.json"
    assert read_status(doc) == status
    assert stat.S_IMODE(doc.stat().st_mode) == 0o600
    m = samples(shipper)
    assert m['clawql_audit_stream_state{state="ok",stream="n1"}'] == 1
    assert m['clawql_audit_stream_stalled{stream="n1"}'] == 0
    assert m['clawql_audit_checkpoint_interval_seconds{stream="n1"}'] == I


def test_store_outage_is_failing_then_stalled_then_ok(tmp_path: Path) -> None:
    clock, signer = Clock(), Ed25519Signer.generate("clawql.test/ship")
    store = DownStore()
    audit = AuditFile(tmp_path / "nodes" / "n1" / "audit.log", "n1")
    audit.write_calls(0, 1)
    with shipper_for(tmp_path, store, signer, clock) as shipper:
        shipper.drain()
        shipper.publish()
        store.down = True
        audit.write_calls(1, 2)
        clock.now += 1
        shipper.record_status()  # the new lines are seen (unread)
        shipper.drain()
        shipper.publish()
        (failing,) = shipper.record_status()
        assert failing.state is State.FAILING
        assert (failing.pending_entries, failing.unread_lines) == (4, 0)
        assert failing.last_error is not None and failing.last_error.kind == "store"
        assert failing.last_error.message == "down"  # the store's diagnostics()
        clock.now += 1.6 * I
        shipper.publish()
        (stalled,) = shipper.record_status()
        assert stalled.state is State.STALLED and stalled.lag_seconds == pytest.approx(1.6 * I)
        m = samples(shipper)
        assert m['clawql_audit_stream_stalled{stream="n1"}'] == 1
        assert m['clawql_audit_lag_entries{stream="n1"}'] == 4
        assert m['clawql_audit_last_error_timestamp_seconds{stream="n1"}'] == clock.now
        store.down = False
        shipper.publish()
        (ok,) = shipper.record_status()
    assert ok.state is State.OK and ok.lag_entries == 0 and ok.lag_seconds == 0
    assert ok.last_error == stalled.last_error  # kept for the operator, no longer active


def test_a_new_checkpoint_key_makes_the_stream_stalled_not_up(tmp_path: Path) -> None:
    """The incident: an HSM restored into a new token gave the shipper a new key."""
    clock = Clock()
    store = LocalWormStore(tmp_path / "worm")
    audit = AuditFile(tmp_path / "nodes" / "n1" / "audit.log", "n1")
    audit.write_calls(0, 2)
    with shipper_for(tmp_path, store, Ed25519Signer.generate("clawql.test/ship"), clock) as old:
        old.drain()
        old.publish()
    new_key = Ed25519Signer.generate("clawql.test/ship")
    with shipper_for(tmp_path, store, new_key, clock) as shipper:
        audit.write_calls(2, 3)
        shipper.drain()
        shipper.publish()
        (failing,) = shipper.record_status()
        assert failing.state is State.FAILING
        assert failing.tree_size is None and failing.published_size == 4
        assert (failing.pending_entries, failing.unread_lines, failing.unread_exact) == (0, 6, True)
        assert failing.last_error is not None and failing.last_error.kind == "integrity"
        assert "no signature by key" in failing.last_error.message
        audit.write_calls(5, 1)
        clock.now += 1.6 * I
        shipper.pump()
        (stalled,) = shipper.record_status()
        assert stalled.state is State.STALLED and stalled.lag_entries == 8
        m = samples(shipper)
        assert m['clawql_audit_stream_stalled{stream="n1"}'] == 1
        assert m['clawql_audit_errors_total{kind="integrity",stream="n1"}'] >= 2
        assert m.get('clawql_audit_entries_total{stream="n1"}', 0) == 0


def test_catching_up_while_publishing_is_not_stalled(tmp_path: Path) -> None:
    clock, signer = Clock(), Ed25519Signer.generate("clawql.test/ship")
    settings = ShipperSettings(
        interval_seconds=I,
        poll_seconds=0.02,
        tail=TailConfig(max_entries_per_poll=4, read_chunk_bytes=512),
    )
    audit = AuditFile(tmp_path / "nodes" / "n1" / "audit.log", "n1")
    audit.write_calls(0, 20)  # 40 lines, read 4 per poll
    with shipper_for(tmp_path, MemoryWormStore(), signer, clock, settings) as shipper:
        shipper.record_status()
        for _ in range(4):
            shipper.pump()
            shipper.publish()
            clock.now += 0.6 * I
            (status,) = shipper.record_status()
            assert status.state is State.CATCHING_UP, status
        assert status.lag_seconds > 1.5 * I  # behind, but progressing: not stalled
        shipper.drain()
        shipper.publish()
        (done,) = shipper.record_status()
    assert done.state is State.OK and done.lag_entries == 0


def test_a_stuck_loop_shows_as_stalled_at_scrape_time(tmp_path: Path) -> None:
    clock, signer = Clock(), Ed25519Signer.generate("clawql.test/ship")
    AuditFile(tmp_path / "nodes" / "n1" / "audit.log", "n1").write_calls(0, 1)
    with shipper_for(tmp_path, MemoryWormStore(), signer, clock) as shipper:
        shipper.drain()
        shipper.record_status()
        assert samples(shipper)['clawql_audit_stream_stalled{stream="n1"}'] == 0
        clock.now += 1.6 * I  # no loop iteration meanwhile
        m = samples(shipper)
    assert m['clawql_audit_stream_stalled{stream="n1"}'] == 1
    assert m['clawql_audit_lag_seconds{stream="n1"}'] == pytest.approx(1.6 * I)


# -- a real shipper process ----------------------------------------------------------------


def test_shipper_process_with_a_new_key_is_loud_while_its_file_grows(tmp_path: Path) -> None:
    audit = AuditFile(tmp_path / "nodes" / "n1" / "audit.log", "n1")
    store = LocalWormStore(tmp_path / "worm")
    audit.write_calls(0, 2)
    clock = Clock()
    with shipper_for(tmp_path, store, Ed25519Signer.generate("clawql.test/ship"), clock) as old:
        old.drain()
        old.publish()
    key_file = tmp_path / "restored.key"
    key_file.write_text(Ed25519Signer.generate("clawql.test/ship").key_string())
    key_file.chmod(0o600)
    config = ShipConfig.model_validate(
        {
            "streams": {"n1": {"audit_file": "nodes/n1/audit.log", "cursor_dir": "cursors"}},
            "store": {"kind": "local", "path": "worm"},
            "signer": {"kind": "file", "key_file": "restored.key"},
            "interval_seconds": 1.0,
            "poll_seconds": 0.05,
            "retry_seconds": 0.2,
            "metrics": {"port": 0},
        }
    )
    write_config(config, tmp_path / "ship.json")
    proc = subprocess.Popen(
        shipper_command(tmp_path / "ship.json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        assert proc.stdout is not None
        metrics_url = ""
        for _ in range(200):
            line = proc.stdout.readline().decode()
            if line.startswith("metrics on "):
                metrics_url = line.split()[-1]
            if not line or line.startswith("shipping "):
                break
        assert metrics_url, "the shipper did not report its metrics endpoint"
        doc = tmp_path / "cursors" / "n1.status.json"
        written = 0
        deadline = time.monotonic() + 30
        status = read_status(doc)
        while time.monotonic() < deadline:
            audit.write_calls(100 + written, 1)  # the audit file keeps growing
            written += 1
            status = read_status(doc)
            if status is not None and status.state is State.STALLED and written >= 3:
                break
            time.sleep(0.2)
        assert status is not None and status.state is State.STALLED, status
        assert status.last_error is not None and status.last_error.kind == "integrity"
        assert "no signature by key" in status.last_error.message
        assert status.tree_size is None and status.lag_entries >= 2 * 3
        m = _parse(httpx.get(metrics_url, timeout=5, trust_env=False).text)
        assert m['clawql_audit_stream_stalled{stream="n1"}'] == 1
        assert m['clawql_audit_lag_entries{stream="n1"}'] >= 2 * 3
        assert m['clawql_audit_checkpoint_interval_seconds{stream="n1"}'] == 1.0
        assert m.get('clawql_audit_entries_total{stream="n1"}', 0) == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out.decode(errors="replace")
    assert store.list("checkpoints/n1/") == ["checkpoints/n1/00000000000000000004.txt"]
