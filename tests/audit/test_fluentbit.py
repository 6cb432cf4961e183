"""Fluent Bit ``http`` output -> mTLS ingest -> redact -> Merkle log -> WORM.

Fluent Bit is not installable here (not in Debian bookworm, not on PyPI), so
the requests are shaped exactly as its ``out_http`` plugin sends them
(``plugins/out_http/http.c``): ``Content-Type: application/x-ndjson`` with
one ``{"date": <double>, "log": "<line>"}`` per line for ``Format
json_lines``; ``application/msgpack`` with the raw chunk (``[[EventTime,
{}], record]`` entries one after another, Fluent Bit >= 2.1, or ``[EventTime,
record]`` before) for ``Format msgpack``; ``Content-Encoding: gzip`` with
``compress gzip``; ``User-Agent: Fluent-Bit``.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import re
import signal
import ssl
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clawql_secrets.audit import layout, verify
from clawql_secrets.audit.checkpoint import Ed25519Signer
from clawql_secrets.audit.fluentbit import (
    KIND_NO_LOG_KEY,
    FluentBitIngest,
    IngestConfig,
    IngestServer,
    IngestSettings,
    load_ingest_config,
    serve,
    server_context,
)
from clawql_secrets.audit.fluentbit_format import BodyError, BodyLimits, decode_body
from clawql_secrets.audit.redact import Redactor
from clawql_secrets.audit.store import LocalWormStore, MemoryWormStore, WormStore
from clawql_secrets.audit.tail import entry_id
from clawql_secrets.errors import ConfigError
from tests.audit.auditgen import line, pair
from tests.audit.conftest import DownStore, all_bytes, stored_ids

SOURCES = {"n1": "spiffe://clawql.test/audit/n1", "n2": "spiffe://clawql.test/audit/n2"}
PATH = "/v1/audit/fluent-bit"
FAST = IngestSettings(ack_timeout_seconds=10, retry_seconds=0.05, retry_after_seconds=1)
_REDACTOR: list[Redactor] = []


def redactor() -> Redactor:
    if not _REDACTOR:
        _REDACTOR.append(Redactor())
    return _REDACTOR[0]


# -- a PKI: one CA for the endpoint and its sources, one rogue CA ------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue(
    directory: Path,
    name: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    sans: list[x509.GeneralName],
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca[1], hashes.SHA256())
    )
    crt, kf = directory / f"{name}.crt", directory / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kf.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    kf.chmod(0o600)
    return crt, kf


@dataclass(frozen=True)
class PKI:
    ca_file: Path
    server: tuple[Path, Path]
    clients: dict[str, tuple[Path, Path]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("pki")
    ca = _ca("ingest test CA")
    rogue = _ca("rogue CA")
    (d / "ca.crt").write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    import ipaddress

    server = _issue(d, "ingest", ca, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    clients = {
        name: _issue(d, name, ca, [x509.UniformResourceIdentifier(uri)])
        for name, uri in SOURCES.items()
    }
    clients["stranger"] = _issue(
        d, "stranger", ca, [x509.UniformResourceIdentifier("spiffe://clawql.test/audit/evil")]
    )
    clients["rogue"] = _issue(d, "rogue", rogue, [x509.UniformResourceIdentifier(SOURCES["n1"])])
    return PKI(d / "ca.crt", server, clients)


class Endpoint:
    def __init__(
        self,
        pki: PKI,
        store: WormStore,
        settings: IngestSettings = FAST,
        signer: Ed25519Signer | None = None,
    ) -> None:
        self.pki = pki
        self.store = store
        self.signer = signer or Ed25519Signer.generate("clawql.test/ingest")
        self.ingest = FluentBitIngest(
            list(SOURCES), store, self.signer, settings, redactor=redactor()
        )
        self.server = IngestServer(
            ("127.0.0.1", 0),
            self.ingest,
            SOURCES,
            server_context(pki.server[0], pki.server[1], pki.ca_file),
            PATH,
        )
        self.stop = threading.Event()
        self._threads = [
            threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True),
            threading.Thread(target=self.ingest.run, args=(self.stop, 0.02), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.port}{PATH}"

    def client(self, who: str | None = "n1") -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_file))
        if who is not None:
            crt, key = self.pki.clients[who]
            ctx.load_cert_chain(crt, key)
        return httpx.Client(verify=ctx, timeout=20)

    def post(
        self, body: bytes, content_type: str, *, who: str | None = "n1", gzipped: bool = False
    ) -> httpx.Response:
        headers = {"Content-Type": content_type, "User-Agent": "Fluent-Bit"}
        if gzipped:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        with self.client(who) as c:
            return c.post(self.url, content=body, headers=headers)

    def close(self) -> None:
        self.stop.set()
        self.ingest.wake()
        self._threads[1].join(10)
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint(pki: PKI) -> Iterator[Endpoint]:
    ep = Endpoint(pki, MemoryWormStore())
    try:
        yield ep
    finally:
        ep.close()


# -- bodies exactly as Fluent Bit's http output builds them -----------------------------


def audit_lines(start: int, count: int, **kw: Any) -> list[bytes]:
    out: list[bytes] = []
    for i in range(start, start + count):
        out.extend(line(e) for e in pair(i, **kw))
    return out


def json_lines_body(lines: list[bytes], date_key: str = "date") -> bytes:
    """``Format json_lines``: the date key first, then the record; ``\\n`` after each."""
    out = b""
    for n, ln in enumerate(lines):
        record = {date_key: 1764366000.0 + n / 1000, "log": ln.decode()}
        out += json.dumps(record, separators=(",", ":")).encode() + b"\n"
    return out


def event_time(seconds: float) -> msgpack.ExtType:
    sec = int(seconds)
    return msgpack.ExtType(0, struct.pack(">II", sec, int((seconds - sec) * 1e9)))


def msgpack_body(lines: list[bytes], *, legacy: bool = False) -> bytes:
    """``Format msgpack``: the chunk as stored, one event after another."""
    out = b""
    for n, ln in enumerate(lines):
        ts = event_time(1764366000.0 + n / 1000)
        head: Any = ts if legacy else [ts, {}]
        out += msgpack.packb([head, {"log": ln.decode()}], use_bin_type=True)
    return out


# -- the format, pure ---------------------------------------------------------------------


def test_decode_every_shape_fluent_bit_sends() -> None:
    lines = audit_lines(0, 2)
    want = [ln for ln in lines]
    assert [r.line for r in decode_body(json_lines_body(lines), "application/x-ndjson")] == want
    array = json.dumps([json.loads(x) for x in json_lines_body(lines).splitlines()]).encode()
    assert [r.line for r in decode_body(array, "application/json")] == want
    assert [r.line for r in decode_body(msgpack_body(lines), "application/msgpack")] == want
    legacy = msgpack_body(lines, legacy=True)
    assert [r.line for r in decode_body(legacy, "application/msgpack")] == want
    gz = gzip.compress(msgpack_body(lines))
    assert [r.line for r in decode_body(gz, "application/msgpack", "gzip")] == want
    custom = json_lines_body(lines).replace(b'"log"', b'"msg"')
    assert [r.line for r in decode_body(custom, "application/x-ndjson", log_key="msg")] == want


@pytest.mark.parametrize(
    ("body", "content_type", "encoding", "status"),
    [
        (b'{"date":1.0,"log":"x"}\n{"date":', "application/x-ndjson", None, 400),
        (b"[1,2]\n", "application/x-ndjson", None, 400),
        (b"", "application/x-ndjson", None, 400),
        (b'{"log": NaN}', "application/x-ndjson", None, 400),
        (b"\xff\xfe", "application/x-ndjson", None, 400),
        (msgpack.packb([1, 2, 3]), "application/msgpack", None, 400),
        (msgpack.packb([1.0, {"log": "x"}])[:-2], "application/msgpack", None, 400),
        (msgpack.packb([1.0, {1: "x"}]), "application/msgpack", None, 400),
        (b'{"log":"x"}', "text/plain", None, 415),
        (b'{"log":"x"}', "application/x-ndjson", "br", 415),
        (b"not gzip", "application/x-ndjson", "gzip", 400),
        (gzip.compress(b" " * 5000), "application/x-ndjson", "gzip", 413),
    ],
    ids=[
        "truncated-json",
        "not-an-object",
        "empty",
        "nan",
        "not-utf8",
        "not-an-event",
        "truncated-msgpack",
        "non-string-key",
        "content-type",
        "encoding",
        "bad-gzip",
        "gzip-bomb",
    ],
)
def test_malformed_bodies_are_refused_whole(
    body: bytes, content_type: str, encoding: str | None, status: int
) -> None:
    with pytest.raises(BodyError) as err:
        decode_body(body, content_type, encoding, limits=BodyLimits(max_decoded_bytes=4096))
    assert err.value.status == status
    assert '"x"' not in err.value.message  # never quotes the body


def test_record_count_is_bounded() -> None:
    body = json_lines_body(audit_lines(0, 3))
    with pytest.raises(BodyError) as err:
        decode_body(body, "application/x-ndjson", limits=BodyLimits(max_records=5))
    assert err.value.status == 413


# -- the endpoint -------------------------------------------------------------------------


def test_json_lines_and_msgpack_land_in_one_verified_stream_per_source(
    endpoint: Endpoint,
) -> None:
    n1 = audit_lines(0, 3)
    n2 = audit_lines(100, 2)
    r = endpoint.post(json_lines_body(n1), "application/x-ndjson", who="n1")
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 6
    r = endpoint.post(msgpack_body(n2), "application/msgpack", who="n2", gzipped=True)
    assert r.status_code == 200, r.text
    more = audit_lines(3, 1)
    r = endpoint.post(msgpack_body(more, legacy=True), "application/msgpack", who="n1")
    assert r.status_code == 200, r.text
    store = endpoint.store
    verify.verify(store, endpoint.signer.verifier_key())
    # The same ids the tailer would give these lines in these streams.
    assert stored_ids(store, "n1") == [entry_id("n1", ln) for ln in n1 + more]
    assert stored_ids(store, "n2") == [entry_id("n2", ln) for ln in n2]
    leaf = json.loads(layout.decode_segment(store.get(store.list("segments/n1/")[0]))[0])
    assert leaf["kind"] == "entry"
    assert leaf["entry"]["request"]["path"] == "secret/data/tenants/acme/agents/agent-1/apikey"


def test_retried_batches_are_deduplicated_also_after_a_restart(pki: PKI, tmp_path: Path) -> None:
    store = LocalWormStore(tmp_path / "worm")
    lines = audit_lines(0, 4)
    body = json_lines_body(lines)
    ep = Endpoint(pki, store)
    try:
        assert ep.post(body, "application/x-ndjson").status_code == 200
        again = ep.post(body, "application/x-ndjson")
        assert again.status_code == 200
        assert again.json() == {
            "status": 200,
            "message": "stored",
            "stored": 0,
            "duplicates": 8,
        }
    finally:
        ep.close()
    signer = ep.signer
    # The answer was lost, the endpoint restarted: Fluent Bit sends the chunk again (as msgpack).
    ep2 = Endpoint(pki, store, signer=signer)
    try:
        lines2 = lines[4:] + audit_lines(4, 1)
        r = ep2.post(msgpack_body(lines2), "application/msgpack")
        assert r.status_code == 200, r.text
        assert r.json()["duplicates"] == 4 and r.json()["stored"] == 2
    finally:
        ep2.close()
    verify.verify(store, signer.verifier_key())
    assert stored_ids(store, "n1") == [entry_id("n1", ln) for ln in lines + audit_lines(4, 1)]


def test_unauthenticated_or_unknown_sources_are_refused(endpoint: Endpoint) -> None:
    body = json_lines_body(audit_lines(0, 1))
    for who in (None, "rogue"):
        with pytest.raises(httpx.TransportError):
            endpoint.post(body, "application/x-ndjson", who=who)
    r = endpoint.post(body, "application/x-ndjson", who="stranger")
    assert r.status_code == 403
    assert endpoint.store.list("") == []


def test_store_outage_is_answered_503_then_the_retry_succeeds(pki: PKI) -> None:
    store = DownStore()
    ep = Endpoint(pki, store)
    try:
        first = audit_lines(0, 1)
        assert ep.post(json_lines_body(first), "application/x-ndjson").status_code == 200
        store.down = True
        lines = audit_lines(1, 2)
        body = json_lines_body(lines)
        r = ep.post(body, "application/x-ndjson")
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert stored_ids(store, "n1") == [entry_id("n1", ln) for ln in first]
        r = ep.post(body, "application/x-ndjson")  # Fluent Bit's retry, still down
        assert r.status_code == 503
        store.down = False
        r = ep.post(body, "application/x-ndjson")
        assert r.status_code == 200, r.text
    finally:
        ep.close()
    verify.verify(store, ep.signer.verifier_key())
    assert stored_ids(store, "n1") == [entry_id("n1", ln) for ln in first + lines]


def test_backpressure_refuses_new_batches_while_the_store_is_behind(pki: PKI) -> None:
    store = DownStore()
    store.down = True
    settings = IngestSettings(
        max_pending_entries=4, ack_timeout_seconds=10, retry_seconds=0.05, retry_after_seconds=1
    )
    ep = Endpoint(pki, store, settings)
    try:
        a, b = audit_lines(0, 2), audit_lines(2, 2)
        assert ep.post(json_lines_body(a), "application/x-ndjson").status_code == 503
        r = ep.post(json_lines_body(b), "application/x-ndjson")
        assert r.status_code == 503 and "behind" in r.json()["message"]
        assert ep.ingest.log.stream("n1").size == 4  # memory stays bounded
        store.down = False
        for body in (json_lines_body(a), json_lines_body(b)):
            for _ in range(50):
                r = ep.post(body, "application/x-ndjson")
                if r.status_code == 200:
                    break
            assert r.status_code == 200, r.text
    finally:
        ep.close()
    assert stored_ids(store, "n1") == [entry_id("n1", ln) for ln in a + b]


def test_planted_canaries_are_redacted_before_storage(endpoint: Endpoint) -> None:
    planted = {
        "token": "s." + "Q7d9xK2mP4vL8nR3tY6wZ1aB",
        "password_url": "postgresql://app:Sup3rS3cretPw42@db.internal:5432/app",
        "aws": "AKIA" + "IOSFODNN7EXAMPLE",
        "kv": "kv-value-9f8e7d6c5b4a",
    }
    lines = [line(e) for e in pair(0, note=f"retry {planted['token']} {planted['password_url']}")]
    lines += [line(e) for e in pair(1, note=f"aws {planted['aws']}", kv_value=planted["kv"])]
    r1 = endpoint.post(json_lines_body(lines[:2]), "application/x-ndjson")
    r2 = endpoint.post(msgpack_body(lines[2:]), "application/msgpack", gzipped=True)
    assert r1.status_code == r2.status_code == 200
    blob = all_bytes(endpoint.store)
    for value in planted.values():
        assert value.encode() not in blob
        assert value not in r1.text + r2.text
    assert b"Sup3rS3cretPw42" not in blob
    entries = [
        json.loads(e)
        for n in endpoint.store.list("segments/")
        for e in layout.decode_segment(endpoint.store.get(n))
    ]
    kinds = {x["type"] for e in entries for x in e["entry"]["redactions"]}
    assert {"kv_value"} <= kinds and len(kinds) >= 3


def test_malformed_and_oversized_requests_store_nothing(pki: PKI) -> None:
    limit = len(json_lines_body(audit_lines(0, 1))) + 100
    settings = IngestSettings(
        max_body_bytes=limit, ack_timeout_seconds=10, retry_seconds=0.05, retry_after_seconds=1
    )
    ep = Endpoint(pki, MemoryWormStore(), settings)
    try:
        secret = "hunter2-password-in-a-broken-body"
        bad = b'{"date":1.0,"log":"' + secret.encode() + b'"}\n{"date":'
        r = ep.post(bad, "application/x-ndjson")
        assert r.status_code == 400 and secret not in r.text
        assert ep.post(b'{"log":"x"}', "text/plain").status_code == 415
        big = json_lines_body(audit_lines(0, 5))
        assert len(big) > limit
        assert ep.post(big, "application/x-ndjson").status_code == 413
        assert ep.store.list("") == []
        # The connection and the stream still work afterwards.
        ok = ep.post(json_lines_body(audit_lines(0, 1)), "application/x-ndjson")
        assert ok.status_code == 200, ok.text
    finally:
        ep.close()


def test_records_without_the_log_key_are_notices_without_content(endpoint: Endpoint) -> None:
    secret = "parsed-field-secret-123456"
    body = json.dumps({"date": 1.0, "message": secret}).encode() + b"\n"
    r = endpoint.post(body, "application/x-ndjson")
    assert r.status_code == 200
    store = endpoint.store
    (leaf,) = [
        json.loads(e) for n in store.list("segments/") for e in layout.decode_segment(store.get(n))
    ]
    assert leaf["kind"] == KIND_NO_LOG_KEY and "entry" not in leaf
    assert secret.encode() not in all_bytes(store)
    # Its retry is de-duplicated like any other.
    assert endpoint.post(body, "application/x-ndjson").json()["duplicates"] == 1


# -- configuration and serve() ----------------------------------------------------------------


def test_config_and_serve(pki: PKI, tmp_path: Path) -> None:
    key = tmp_path / "signing.key"
    signer = Ed25519Signer.generate("clawql.test/ingest")
    key.write_text(signer.key_string())
    key.chmod(0o600)
    doc = {
        "listen": {
            "host": "127.0.0.1",
            "port": 0,
            "cert_file": str(pki.server[0]),
            "key_file": str(pki.server[1]),
            "client_ca_file": str(pki.ca_file),
        },
        "sources": {n: {"uri": u} for n, u in SOURCES.items()},
        "store": {"kind": "local", "path": "worm"},
        "signer": {"kind": "file", "key_file": "signing.key"},
    }
    path = tmp_path / "ingest.json"
    path.write_text(json.dumps(doc))
    config = load_ingest_config(path)
    assert config.store.kind == "local" and config.store.path == tmp_path / "worm"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**doc, "sources": {"n1": {"uri": "u", "token": "hunter2"}}}))
    with pytest.raises(ConfigError) as err:
        load_ingest_config(bad)
    assert "hunter2" not in str(err.value)
    dup = IngestConfig.model_validate({**doc, "sources": {"a": {"uri": "u"}, "b": {"uri": "u"}}})
    with pytest.raises(ConfigError):
        dup.source_uris()
    (tmp_path / "worm").mkdir()
    stop = threading.Event()
    t = threading.Thread(
        target=serve, args=(config, LocalWormStore(tmp_path / "worm"), signer, stop)
    )
    t.start()
    stop.set()
    t.join(15)
    assert not t.is_alive()


def test_audit_ingest_command_serves_until_sigterm(pki: PKI, tmp_path: Path) -> None:
    signer = Ed25519Signer.generate("clawql.test/ingest")
    (tmp_path / "signing.key").write_text(signer.key_string())
    (tmp_path / "signing.key").chmod(0o600)
    doc = {
        "listen": {
            "port": 0,
            "cert_file": str(pki.server[0]),
            "key_file": str(pki.server[1]),
            "client_ca_file": str(pki.ca_file),
        },
        "sources": {n: {"uri": u} for n, u in SOURCES.items()},
        "store": {"kind": "local", "path": "worm"},
        "signer": {"kind": "file", "key_file": "signing.key"},
    }
    (tmp_path / "ingest.yaml").write_text(json.dumps(doc))
    proc = subprocess.Popen(
        [sys.executable, "-m", "clawql_secrets", "audit", "ingest", "--config", "ingest.yaml"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()
        found = re.search(r"https://127\.0\.0\.1:(\d+)(/\S+)", first)
        assert found, first
        url = f"https://127.0.0.1:{found.group(1)}{found.group(2)}"
        ctx = ssl.create_default_context(cafile=str(pki.ca_file))
        ctx.load_cert_chain(*pki.clients["n2"])
        lines = audit_lines(0, 2)
        with httpx.Client(verify=ctx, timeout=30) as c:
            r = c.post(
                url,
                content=json_lines_body(lines),
                headers={"Content-Type": "application/x-ndjson", "User-Agent": "Fluent-Bit"},
            )
        assert r.status_code == 200, r.text
        proc.send_signal(signal.SIGTERM)
        # Stopping at all, cleanly, is the assertion (communicate's timeout bounds the wait).
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    store = LocalWormStore(tmp_path / "worm")
    verify.verify(store, signer.verifier_key())
    assert stored_ids(store, "n2") == [entry_id("n2", ln) for ln in lines]
