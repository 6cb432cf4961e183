"""The shipper: tail -> redact -> Merkle log -> WORM, crash-safe, de-duplicated, observable."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families

from clawql_secrets.audit import layout, verify
from clawql_secrets.audit.checkpoint import Checkpoint, Ed25519Signer
from clawql_secrets.audit.errors import StoreError
from clawql_secrets.audit.leaf import canonical
from clawql_secrets.audit.metrics import heads_from_labels, registry_for
from clawql_secrets.audit.redact import Redactor
from clawql_secrets.audit.s3store import S3Location, S3WormStore, make_client
from clawql_secrets.audit.ship_config import (
    ShipConfig,
    load_config,
    shipper_command,
    stack_config,
    write_config,
)
from clawql_secrets.audit.shipper import Shipper, ShipperSettings, StreamSource
from clawql_secrets.audit.store import LocalWormStore, MemoryWormStore, WormStore
from clawql_secrets.audit.tail import CursorFile, TailConfig
from clawql_secrets.errors import ConfigError
from tests.audit.auditgen import AuditFile, pair
from tests.audit.conftest import DownStore, all_bytes, stored_ids
from tests.audit.moto_server import ENV, MotoS3

FAST = ShipperSettings(interval_seconds=0.2, poll_seconds=0.02, retry_seconds=0.05)


@pytest.fixture
def signer() -> Ed25519Signer:
    return Ed25519Signer.generate("clawql.test/ship")


_REDACTOR: list[Redactor] = []  # one Presidio set-up (~1 s) for the whole module


def make_shipper(
    srcs: list[StreamSource],
    store: WormStore,
    signer: Ed25519Signer,
    settings: ShipperSettings = FAST,
) -> Shipper:
    if not _REDACTOR:
        _REDACTOR.append(Redactor())
    return Shipper(srcs, store, signer, settings, redactor=_REDACTOR[0])


def sources(tmp: Path, names: tuple[str, ...] = ("n1",)) -> list[StreamSource]:
    return [StreamSource(n, tmp / "nodes" / n / "audit.log", tmp / "cursors") for n in names]


def files(srcs: list[StreamSource]) -> dict[str, AuditFile]:
    return {s.name: AuditFile(s.audit_file, s.name) for s in srcs}


def ship(shipper: Shipper) -> None:
    shipper.drain()
    shipper.publish()


# -- the pipeline ---------------------------------------------------------------


def test_entries_of_each_node_land_in_their_own_verified_stream(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    srcs = sources(tmp_path, ("n1", "n2"))
    audit = files(srcs)
    store = LocalWormStore(tmp_path / "worm")
    audit["n1"].write_calls(0, 5)
    audit["n2"].write_calls(100, 3)
    with make_shipper(srcs, store, signer, FAST) as shipper:
        ship(shipper)
        audit["n1"].write_calls(5, 2)
        ship(shipper)
    verify.verify(store, signer.verifier_key())
    assert stored_ids(store, "n1") == audit["n1"].ids
    assert stored_ids(store, "n2") == audit["n2"].ids
    assert store.list("checkpoints/n1/") == [
        "checkpoints/n1/00000000000000000010.txt",
        "checkpoints/n1/00000000000000000014.txt",
    ]
    leaf = json.loads(layout.decode_segment(store.get(store.list("segments/n1/")[0]))[0])
    assert leaf["kind"] == "entry" and leaf["v"] == 1
    assert leaf["entry"]["request"]["path"] == "secret/data/tenants/acme/agents/agent-1/apikey"
    assert leaf["entry"]["redactions"] == []


def test_leaves_are_canonical_json(tmp_path: Path, signer: Ed25519Signer) -> None:
    srcs = sources(tmp_path)
    audit = files(srcs)
    audit["n1"].write([{"time": "t", "type": "request", "x": 1.5, "big": 2**60, "é": "ü"}])
    store = MemoryWormStore()
    with make_shipper(srcs, store, signer, FAST) as shipper:
        ship(shipper)
    data = layout.decode_segment(store.get(store.list("segments/")[0]))[0]
    import rfc8785

    assert data == rfc8785.dumps(json.loads(data))


def test_planted_secrets_never_reach_the_store(tmp_path: Path, signer: Ed25519Signer) -> None:
    srcs = sources(tmp_path)
    audit = files(srcs)
    planted = {
        "token": "s." + "Q7d9xK2mP4vL8nR3tY6wZ1aB",
        "password_url": "postgresql://app:Sup3rS3cretPw42@db.internal:5432/app",
        "aws": "AKIA" + "IOSFODNN7EXAMPLE",
        "kv": "kv-value-9f8e7d6c5b4a",
    }
    audit["n1"].write(pair(0, note=f"retry with {planted['token']} on {planted['password_url']}"))
    audit["n1"].write(pair(1, note=f"aws {planted['aws']}", kv_value=planted["kv"]))
    store = MemoryWormStore()
    with make_shipper(srcs, store, signer, FAST) as shipper:
        ship(shipper)
        exposition = _exposition(shipper)
    blob = all_bytes(store)
    for value in planted.values():
        assert value.encode() not in blob
        assert value not in exposition
    assert b"Sup3rS3cretPw42" not in blob
    entries = [json.loads(e) for e in layout.decode_segment(store.get(store.list("segments/")[0]))]
    kinds = {r["type"] for e in entries for r in e["entry"]["redactions"]}
    assert {"kv_value"} <= kinds and len(kinds) >= 3
    # The redaction record names where, not what.
    assert all(set(r) == {"type", "path"} for e in entries for r in e["entry"]["redactions"])


def test_unparseable_and_oversized_lines_are_notices_without_content(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    srcs = sources(tmp_path)
    srcs[0].audit_file.parent.mkdir(parents=True)
    secret = b"hunter2-password-in-a-broken-line"
    srcs[0].audit_file.write_bytes(b'{"broken": "' + secret + b"\n" + b"[1,2]\n")
    store = MemoryWormStore()
    with make_shipper(srcs, store, signer, FAST) as shipper:
        ship(shipper)
    entries = [json.loads(e) for e in layout.decode_segment(store.get(store.list("segments/")[0]))]
    assert [e["kind"] for e in entries] == ["unparseable", "unparseable"]
    assert secret not in all_bytes(store)
    assert entries[0]["size"] == len(b'{"broken": "' + secret)


# -- crash safety and de-duplication -------------------------------------------


class Crash(BaseException):
    """Stands for the process dying: not caught by the shipper's error handling."""


class CrashingStore:
    """Delegates to ``inner``, dying after ``after`` successful writes."""

    def __init__(self, inner: WormStore, after: int) -> None:
        self.inner = inner
        self.after = after

    def put_once(self, name: str, data: bytes) -> None:
        if self.after == 0:
            raise Crash
        self.inner.put_once(name, data)
        self.after -= 1

    def get(self, name: str) -> bytes:
        return self.inner.get(name)

    def list(self, prefix: str) -> list[str]:
        return self.inner.list(prefix)


@pytest.mark.parametrize(
    "writes_before_crash",
    [0, 1, 2],
    ids=["before-segment", "after-segment-before-checkpoint", "after-checkpoint-before-cursor"],
)
def test_crash_during_publish_then_restart_loses_and_duplicates_nothing(
    tmp_path: Path, signer: Ed25519Signer, writes_before_crash: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    srcs = sources(tmp_path)
    audit = files(srcs)
    store = LocalWormStore(tmp_path / "worm")
    audit["n1"].write_calls(0, 4)
    with make_shipper(srcs, store, signer, FAST) as shipper:
        ship(shipper)
    audit["n1"].write_calls(4, 3)
    if writes_before_crash == 2:
        # Both objects stored; the process dies before the cursor is saved.
        def die(*_: object) -> None:
            raise Crash

        monkeypatch.setattr(CursorFile, "save", die)
    with make_shipper(srcs, CrashingStore(store, writes_before_crash), signer, FAST) as crashing:
        crashing.drain()
        with pytest.raises(Crash):
            crashing.publish()
    monkeypatch.undo()
    audit["n1"].write_calls(7, 2)
    with make_shipper(srcs, store, signer, FAST) as restarted:
        ship(restarted)
    verify.verify(store, signer.verifier_key())
    assert stored_ids(store, "n1") == audit["n1"].ids


def test_lost_cursor_rereads_the_file_without_duplicates(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    srcs = sources(tmp_path)
    audit = files(srcs)
    store = LocalWormStore(tmp_path / "worm")
    audit["n1"].write_calls(0, 5)
    with make_shipper(srcs, store, signer, FAST) as shipper:
        ship(shipper)
    shutil.rmtree(tmp_path / "cursors")
    audit["n1"].write_calls(5, 2)
    with make_shipper(srcs, store, signer, FAST) as again:
        ship(again)
    verify.verify(store, signer.verifier_key())
    assert stored_ids(store, "n1") == audit["n1"].ids


def test_rotation_is_followed(tmp_path: Path, signer: Ed25519Signer) -> None:
    srcs = sources(tmp_path)
    audit = files(srcs)
    store = MemoryWormStore()
    with make_shipper(srcs, store, signer, FAST) as shipper:
        audit["n1"].write_calls(0, 3)
        shipper.drain()
        os.rename(srcs[0].audit_file, srcs[0].audit_file.with_name("audit.log.1"))
        rotated = AuditFile(srcs[0].audit_file, "n1")
        rotated.write_calls(3, 2)
        ship(shipper)
    assert stored_ids(store, "n1") == audit["n1"].ids + rotated.ids


def test_shipper_process_killed_mid_segment_and_restarted(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    key_file = tmp_path / "signing.key"
    key_file.write_text(signer.key_string())
    key_file.chmod(0o600)
    config = ShipConfig.model_validate(
        {
            "streams": {"n1": {"audit_file": "nodes/n1/audit.log", "cursor_dir": "cursors"}},
            "store": {"kind": "local", "path": "worm"},
            "signer": {"kind": "file", "key_file": "signing.key"},
            "interval_seconds": 2.0,
            "poll_seconds": 0.05,
        }
    )
    write_config(config, tmp_path / "ship.json")
    audit = AuditFile(tmp_path / "nodes" / "n1" / "audit.log", "n1")
    store = LocalWormStore(tmp_path / "worm")

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            shipper_command(tmp_path / "ship.json"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONWARNINGS": "error"},
        )
        # Ready (signal handlers installed) once it says what it ships; a loaded
        # machine can take seconds to import everything.
        assert proc.stdout is not None
        for _ in range(200):
            line = proc.stdout.readline()
            if not line or line.startswith(b"shipping "):
                break
        return proc

    def wait_for(size: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        name = layout.checkpoint_name("n1", size)
        while name not in store.list("checkpoints/n1/"):
            if time.monotonic() > deadline:
                raise AssertionError(f"no checkpoint of size {size}")
            time.sleep(0.05)

    proc = start()
    try:
        audit.write_calls(0, 10)
        wait_for(20)
        audit.write_calls(10, 15)
        time.sleep(0.6)  # read and appended, not yet published (interval 2 s)
        proc.kill()
        proc.communicate(timeout=10)
        audit.write_calls(25, 5)
        proc = start()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)  # drains and publishes at shutdown
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    verify.verify(store, signer.verifier_key())
    assert stored_ids(store, "n1") == audit.ids
    assert len(set(audit.ids)) == 60


# -- store outage --------------------------------------------------------------


@pytest.fixture
def moto() -> Iterator[MotoS3]:
    server = MotoS3()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_s3_outage_buffers_and_catches_up_without_loss(
    tmp_path: Path, signer: Ed25519Signer, moto: MotoS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    bucket = moto.new_bucket()
    client = make_client(
        endpoint_url=moto.endpoint, connect_timeout=0.3, read_timeout=1, max_attempts=1
    )
    store = S3WormStore(client, S3Location(bucket, "audit/"))
    srcs = sources(tmp_path)
    audit = files(srcs)
    audit["n1"].write_calls(0, 3)
    with make_shipper(srcs, store, signer, FAST) as shipper:
        ship(shipper)
        moto.stop()
        audit["n1"].write_calls(3, 4)
        shipper.drain()
        failed = shipper.publish()
        assert failed == {}
        assert "clawql_audit_errors_total" in _exposition(shipper)
    # The cursor did not move: a restart during the outage loses nothing either.
    with make_shipper(srcs, store, signer, FAST) as during:
        assert during.pump() == 0  # the store cannot be read: the stream waits
        with pytest.raises(StoreError):
            during.publish_stream("n1")
    audit["n1"].write_calls(7, 2)
    moto.start()
    with make_shipper(srcs, store, signer, FAST) as after:
        ship(after)
    verify.verify(store, signer.verifier_key())
    assert stored_ids(store, "n1") == audit["n1"].ids


def test_backpressure_pauses_reading_while_the_store_is_down(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    srcs = sources(tmp_path)
    audit = files(srcs)
    store = DownStore()
    settings = ShipperSettings(
        max_pending_entries=4,
        poll_seconds=0.01,
        tail=TailConfig(max_entries_per_poll=2, read_chunk_bytes=512),
    )
    with make_shipper(srcs, store, signer, settings) as shipper:
        store.down = True
        audit["n1"].write_calls(0, 10)
        shipper.drain()
        assert shipper.log.stream("n1").size <= 4 + 2
        shipper.publish()
        store.down = False
        for _ in range(20):
            ship(shipper)
    assert stored_ids(store, "n1") == audit["n1"].ids


# -- the run loop, metrics and config -----------------------------------------------


def _exposition(shipper: Shipper) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry_for(shipper.metrics)).decode()


def test_run_loop_checkpoints_on_interval_and_at_shutdown(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    srcs = sources(tmp_path)
    audit = files(srcs)
    store = MemoryWormStore()
    stop = threading.Event()
    with make_shipper(srcs, store, signer, FAST) as shipper:
        loop = threading.Thread(target=shipper.run, args=(stop,))
        loop.start()
        audit["n1"].write_calls(0, 3)
        deadline = time.monotonic() + 10
        while not store.list("checkpoints/n1/") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.list("checkpoints/n1/")
        audit["n1"].write_calls(3, 1)
        stop.set()
        loop.join(10)
    assert stored_ids(store, "n1") == audit["n1"].ids
    verify.verify(store, signer.verifier_key())


def test_metrics_endpoint_exposes_tree_heads_and_no_secret(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    srcs = sources(tmp_path, ("n1", "n2"))
    audit = files(srcs)
    store = MemoryWormStore()
    audit["n1"].write(
        pair(0, note="password=Hunter2Hunter2 token " + "s." + "AAAAbbbbCCCCddddEEEEffff")
    )
    audit["n2"].write_calls(1, 2)
    with make_shipper(srcs, store, signer, FAST) as shipper:
        ship(shipper)
        server, thread = start_http_server(
            0, addr="127.0.0.1", registry=registry_for(shipper.metrics)
        )
        try:
            text = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics").text
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
    assert "Hunter2Hunter2" not in text and "s.AAAAbbbb" not in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    sizes = {s.labels["stream"]: s.value for s in families["clawql_audit_tree_size"].samples}
    assert sizes == {"n1": 2, "n2": 4}
    info = [s.labels for s in families["clawql_audit_checkpoint_info"].samples]
    heads = heads_from_labels(info)
    for head in heads:
        note = store.get(layout.checkpoint_name(head.stream, head.checkpoint.size))
        stored = Checkpoint.parse(note.split(b"\n\n")[0] + b"\n")
        assert stored == head.checkpoint
    redacted = {
        (x.labels["stream"], x.labels["type"]): x.value
        for x in families["clawql_audit_redactions"].samples
        if x.name.endswith("_total")
    }
    assert redacted[("n1", "secret_assignment")] == 2  # request and response
    assert redacted[("n1", "openbao_token")] == 2
    assert not any(k[0] == "n2" for k in redacted)  # HMAC'd values are kept as they are
    for name in (
        "clawql_audit_checkpoint_timestamp_seconds",
        "clawql_audit_seconds_since_checkpoint",
        "clawql_audit_ingest_lag_seconds",
        "clawql_audit_errors",
    ):
        assert name in families


@pytest.mark.skipif(
    not Path("/usr/bin/prometheus").exists(),
    reason="Debian `prometheus` is not installed (/usr/bin/prometheus): the real-scrape test "
    "needs it; the exposition is still parsed by prometheus_client above",
)
def test_a_real_prometheus_scrapes_the_checkpoint_record(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    from tests.audit.prom import PrometheusServer

    srcs = sources(tmp_path)
    audit = files(srcs)
    store = MemoryWormStore()
    with make_shipper(srcs, store, signer, FAST) as shipper:
        server, thread = start_http_server(
            0, addr="127.0.0.1", registry=registry_for(shipper.metrics)
        )
        try:
            with PrometheusServer(tmp_path / "prom", server.server_port) as prom:
                audit["n1"].write_calls(0, 2)
                ship(shipper)
                prom.wait_for_series(1)
                audit["n1"].write_calls(2, 2)
                ship(shipper)
                prom.wait_for_series(2)
                from clawql_secrets.audit.query import prometheus_heads

                heads = prometheus_heads(prom.url)
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
    assert [h.checkpoint.size for h in heads] == [4, 8]
    verify.verify(store, signer.verifier_key(), known=[h.checkpoint for h in heads])


def test_config_file_round_trip_and_stack_layout(tmp_path: Path) -> None:
    config = stack_config(tmp_path / "stack", metrics_port=9464, interval_seconds=30)
    write_config(config, tmp_path / "ship.json")
    loaded = load_config(tmp_path / "ship.json")
    assert loaded == config
    assert [s.audit_file for s in loaded.sources()] == [
        tmp_path / "stack" / "nodes" / n / "audit" / "audit.log" for n in ("n1", "n2", "n3")
    ]
    assert loaded.signer.kind == "hsm"
    argv = shipper_command(tmp_path / "ship.json")
    assert argv[:3] == [sys.executable, "-m", "clawql_secrets"] and argv[-1].endswith("ship.json")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"streams": {}}, "streams"),
        (
            {"streams": {"n1": {"audit_file": "a", "cursor_dir": "c"}}, "store": {"kind": "ftp"}},
            "store",
        ),
        (
            {
                "streams": {"n1": {"audit_file": "a", "cursor_dir": "c"}},
                "store": {"kind": "local", "path": "w"},
                "signer": {"kind": "file", "key_file": "k"},
                "interval_seconds": 0,
            },
            "interval_seconds",
        ),
        (
            {
                "streams": {"n1": {"audit_file": "a", "cursor_dir": "c"}},
                "store": {"kind": "local", "path": "w"},
                "signer": {"kind": "file", "key_file": "k", "private_key": "PRIVATE+KEY+x"},
            },
            "signer",
        ),
    ],
    ids=["no-streams", "unknown-store", "zero-interval", "key-inline"],
)
def test_bad_config_is_refused_without_echoing_values(
    tmp_path: Path, doc: dict[str, Any], message: str
) -> None:
    path = tmp_path / "ship.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=message) as refused:
        load_config(path)
    assert "PRIVATE+KEY" not in refused.value.diagnostics()


def test_canonical_fast_path_matches_rfc8785() -> None:
    import rfc8785
    from hypothesis import given, settings
    from hypothesis import strategies as st

    text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
    scalar = st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | text
    doc = st.recursive(
        scalar,
        lambda c: st.lists(c, max_size=4) | st.dictionaries(text, c, max_size=4),
        max_leaves=20,
    )

    @settings(max_examples=300, deadline=None)
    @given(st.dictionaries(text, doc, max_size=5))
    def check(value: dict[str, Any]) -> None:
        assert canonical(value, exotic_numbers=False) == rfc8785.dumps(value)

    check()
