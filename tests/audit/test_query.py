"""Forensic queries with proofs, and the Prometheus record held against the log."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from clawql_secrets.audit import layout, verify
from clawql_secrets.audit.checkpoint import Ed25519Signer
from clawql_secrets.audit.errors import TamperError
from clawql_secrets.audit.log import AuditLog
from clawql_secrets.audit.metrics import RecordedHead, heads_from_labels, registry_for
from clawql_secrets.audit.query import (
    QueryFilter,
    parse_time,
    prometheus_heads,
    query,
)
from clawql_secrets.audit.redact import Redactor
from clawql_secrets.audit.shipper import Shipper, ShipperSettings, StreamSource
from clawql_secrets.audit.store import LocalWormStore
from clawql_secrets.cli import main
from clawql_secrets.errors import BackendError, InputError
from tests.audit.auditgen import AuditFile
from tests.audit.conftest import Tamper

SETTINGS = ShipperSettings(interval_seconds=60)


def login(i: int, agent: str, tenant: str) -> list[dict[str, Any]]:
    """A JWT login: the request carries no identity yet, the response does."""
    rid = f"00000000-0000-0000-0000-{i:012d}"
    request = {
        "id": rid,
        "operation": "update",
        "mount_type": "jwt",
        "path": "auth/jwt/login",
        "data": {"jwt": "hmac-sha256:" + "ab" * 32, "role": "hmac-sha256:" + "cd" * 32},
        "remote_address": "127.0.0.1",
    }
    t = f"2026-11-28T19:00:{i % 60:02d}.000000001Z"
    auth = {
        "client_token": "hmac-sha256:" + "ef" * 32,
        "display_name": f"jwt-{agent}",
        "metadata": {"tenant": tenant, "role": "agent-batch"},
        "entity_id": f"entity-{agent}",
        "policies": ["agent-tmpl"],
    }
    return [
        {"time": t, "type": "request", "auth": {"token_type": "default"}, "request": request},
        {"time": t, "type": "response", "auth": auth, "request": request, "response": {}},
    ]


@pytest.fixture(scope="module")
def signer() -> Ed25519Signer:
    return Ed25519Signer.generate("clawql.test/query")


class Built:
    def __init__(self, root: Path, store: LocalWormStore, heads: list[RecordedHead]) -> None:
        self.root = root
        self.store = store
        self.heads = heads


def _heads_of(shipper: Shipper) -> list[RecordedHead]:
    text = generate_latest(registry_for(shipper.metrics)).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return heads_from_labels(s.labels for s in families["clawql_audit_checkpoint_info"].samples)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, signer: Ed25519Signer) -> Built:
    root = tmp_path_factory.mktemp("query")
    srcs = [StreamSource(n, root / n / "audit.log", root / "cursors") for n in ("n1", "n2")]
    n1, n2 = AuditFile(srcs[0].audit_file, "n1"), AuditFile(srcs[1].audit_file, "n2")
    store = LocalWormStore(root / "worm")
    heads: list[RecordedHead] = []
    with Shipper(srcs, store, signer, SETTINGS, redactor=Redactor()) as shipper:
        n1.write(login(900, "agent-1", "acme"))
        n1.write_calls(0, 3, agent="agent-1", minute=1)
        n1.write_calls(
            3,
            1,
            agent="agent-1",
            minute=2,
            allowed=False,
            path="secret/data/tenants/globex/agents/agent-9/apikey",
        )
        n1.write_calls(4, 2, agent="agent-2", minute=1)
        shipper.drain()
        shipper.publish()
        heads += _heads_of(shipper)
        n2.write_calls(10, 1, agent="agent-1", minute=5)
        n2.write_calls(11, 1, agent="agent-3", tenant="globex", minute=5)
        n1.write_calls(12, 1, agent="agent-1", minute=7)
        shipper.drain()
        shipper.publish()
        heads += _heads_of(shipper)
    return Built(root, store, heads)


def ask(built: Built, signer: Ed25519Signer, **kw: Any) -> list[tuple[str, int, str, str]]:
    matches = query(built.store, signer.verifier_key(), QueryFilter(**kw))
    for m in matches:
        # Every match carries a proof a third party can check with the key alone.
        doc = json.loads(json.dumps(m.to_json()))
        proof = verify.InclusionProof.from_json(doc["proof"])
        verify.check_inclusion(proof, signer.verifier_key())
        assert json.loads(proof.entry)["entry"] == m.entry
    return [(m.stream, m.index, m.entry["type"], m.entry["request"]["path"]) for m in matches]


def test_agent_query_returns_requests_and_responses_allowed_and_denied(
    built: Built, signer: Ed25519Signer
) -> None:
    got = ask(built, signer, agent="agent-1")
    paths = [p for _, _, _, p in got]
    assert sum(1 for s, *_ in got if s == "n1") == 2 + 3 * 2 + 2 + 2
    assert sum(1 for s, *_ in got if s == "n2") == 2
    assert paths.count("auth/jwt/login") == 2  # the request is paired with its response
    assert "secret/data/tenants/globex/agents/agent-9/apikey" in paths  # the denied attempt
    assert {t for _, _, t, _ in got} == {"request", "response"}


def test_query_matches_entity_id_and_display_name(built: Built, signer: Ed25519Signer) -> None:
    by_name = ask(built, signer, agent="agent-1")
    assert ask(built, signer, agent="jwt-agent-1") == by_name
    login_only = ask(built, signer, agent="entity-agent-1")
    assert [p for *_, p in login_only] == ["auth/jwt/login", "auth/jwt/login"]


def test_tenant_path_and_time_filters(built: Built, signer: Ed25519Signer) -> None:
    assert ask(built, signer, agent="agent-1", tenant="globex") == []
    assert len(ask(built, signer, agent="agent-3", tenant="globex")) == 2
    denied = ask(built, signer, agent="agent-1", path="secret/data/tenants/globex/*")
    assert len(denied) == 2
    for stream, index, _, _ in denied:
        entry = json.loads(verify.prove(built.store, stream, index, signer.verifier_key()).entry)[
            "entry"
        ]
        assert entry["auth"]["policy_results"]["allowed"] is False
        assert "permission denied" in entry["error"]
    window = ask(
        built,
        signer,
        agent="agent-1",
        since=parse_time("2026-11-28T19:05:00Z"),
        until=parse_time("2026-11-28T19:08:00Z"),
    )
    assert [(s, t) for s, _, t, _ in window] == [
        ("n1", "request"),
        ("n1", "response"),
        ("n2", "request"),
        ("n2", "response"),
    ]


@pytest.mark.parametrize(
    "kw",
    [
        {"agent": ""},
        {"agent": "a", "since": dt.datetime(2026, 1, 1)},
        {
            "agent": "a",
            "since": parse_time("2026-01-02T00:00:00Z"),
            "until": parse_time("2026-01-01T00:00:00Z"),
        },
    ],
    ids=["empty-agent", "naive-time", "since-after-until"],
)
def test_bad_filters_are_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(InputError):
        QueryFilter(**kw)


def test_parse_time_accepts_openbao_nanoseconds() -> None:
    assert parse_time("2026-11-28T19:36:21.446810739Z") == dt.datetime(
        2026, 11, 28, 19, 36, 21, 446810, tzinfo=dt.UTC
    )
    with pytest.raises(InputError):
        parse_time("yesterday")


def test_query_refuses_a_tampered_log(built: Built, signer: Ed25519Signer, tmp_path: Path) -> None:
    copy = tmp_path / "worm"
    shutil.copytree(built.root / "worm", copy)
    tamper = Tamper(copy)
    seg = LocalWormStore(copy).list("segments/n1/")[0]
    lines = tamper.lines(seg)
    lines[1] = lines[1].replace(b"agent-1", b"agent-7")
    tamper.set_lines(seg, lines)
    with pytest.raises(TamperError, match="segments/n1"):
        query(LocalWormStore(copy), signer.verifier_key(), QueryFilter(agent="agent-1"))


def test_cli_query_prints_matches_with_proofs(
    built: Built, signer: Ed25519Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "audit",
        "query",
        "--store",
        str(built.root / "worm"),
        "--pubkey",
        str(signer.verifier_key()),
        "--agent",
        "agent-2",
        "--path",
        "secret/data/*",
    ]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["matches"]) == 4
    first = doc["matches"][0]
    assert first["allowed"] is True and first["proof"]["format"] == verify.PROOF_FORMAT


# -- the Prometheus record ---------------------------------------------------------


def _rewrite_and_resign(src: Path, dst: Path, signer: Ed25519Signer) -> None:
    """What an attacker holding the log key does: alter history, re-sign it all."""
    old = LocalWormStore(src)
    new = AuditLog(LocalWormStore(dst), signer)
    for stream in verify.streams(old):
        for name in old.list(f"segments/{stream}/"):
            for data in layout.decode_segment(old.get(name)):
                doc = json.loads(data)
                if doc.get("kind") == "entry" and doc["entry"]["type"] == "response":
                    doc["entry"].pop("error", None)  # hide the denial
                    doc["entry"]["auth"]["policy_results"] = {"allowed": True}
                new.append(stream, doc)
            new.checkpoint(stream)


def test_prometheus_heads_are_the_published_checkpoints(
    built: Built, signer: Ed25519Signer
) -> None:
    assert [(h.stream, h.checkpoint.size) for h in built.heads] == [
        ("n1", 14),
        ("n1", 16),
        ("n2", 4),
    ]
    verify.verify(built.store, signer.verifier_key(), known=[h.checkpoint for h in built.heads])


def _series(heads: list[RecordedHead]) -> list[dict[str, str]]:
    """The /api/v1/series answer a Prometheus scraping the shipper would give."""
    return [
        {
            "__name__": "clawql_audit_checkpoint_info",
            "instance": "127.0.0.1:9464",
            "job": "clawql-audit",
            "stream": h.stream,
            "origin": h.checkpoint.origin,
            "size": str(h.checkpoint.size),
            "root": h.checkpoint.root.hex(),
        }
        for h in heads
    ]


class FakePrometheusAPI:
    """Serves ``/api/v1/series`` from a fixed record, on loopback (the API's shape only)."""

    def __init__(self, series: list[dict[str, str]]) -> None:
        body = json.dumps({"status": "success", "data": series}).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                ok = self.path.startswith("/api/v1/series?")
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body if ok else b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever)

    def __enter__(self) -> FakePrometheusAPI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_prometheus_client_reads_series_strictly(built: Built) -> None:
    series = _series(built.heads)

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/series"
        assert request.url.params["match[]"] == "clawql_audit_checkpoint_info"
        return httpx.Response(200, json={"status": "success", "data": series + series})

    heads = prometheus_heads("http://prom", transport=httpx.MockTransport(answer))
    assert heads == built.heads  # de-duplicated, ordered

    bad = [
        httpx.Response(500),
        httpx.Response(200, text="not json"),
        httpx.Response(200, json={"status": "error"}),
        httpx.Response(200, json={"status": "success", "data": [{**series[0], "size": "014"}]}),
        httpx.Response(200, json={"status": "success", "data": [{**series[0], "root": "zz"}]}),
    ]
    for response in bad:
        with pytest.raises(BackendError):
            prometheus_heads("http://prom", transport=httpx.MockTransport(lambda _, r=response: r))


def test_resigned_rewritten_history_is_caught_by_known_heads_and_prometheus(
    built: Built, signer: Ed25519Signer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forged = tmp_path / "forged"
    _rewrite_and_resign(built.root / "worm", forged, signer)
    key = str(signer.verifier_key())
    # The forged store is consistent with itself and signed by the log key...
    verify.verify(LocalWormStore(forged), signer.verifier_key())
    assert main(["audit", "verify", "--store", str(forged), "--pubkey", key]) == 0
    # ...but not with a checkpoint published earlier...
    earlier = built.heads[0].checkpoint
    with pytest.raises(TamperError, match="history was rewritten"):
        verify.verify(LocalWormStore(forged), signer.verifier_key(), known=[earlier])
    # ...nor with what Prometheus recorded.
    capsys.readouterr()
    with FakePrometheusAPI(_series(built.heads)) as prom:
        argv = ["audit", "verify", "--store", str(forged), "--pubkey", key, "--prometheus"]
        assert main([*argv, prom.url]) == 1
        out = capsys.readouterr().out
        assert "history was rewritten" in out and "FAIL n1" in out
        original = ["audit", "verify", "--store", str(built.root / "worm"), "--pubkey", key]
        assert main([*original, "--prometheus", prom.url]) == 0


def test_verify_with_an_empty_prometheus_record_fails_closed(
    built: Built, signer: Ed25519Signer
) -> None:
    with FakePrometheusAPI([]) as prom:
        argv = [
            "audit",
            "verify",
            "--store",
            str(built.root / "worm"),
            "--pubkey",
            str(signer.verifier_key()),
            "--prometheus",
            prom.url,
        ]
        assert main(argv) == 1
