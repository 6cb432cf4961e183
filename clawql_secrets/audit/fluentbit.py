"""Fluent Bit as a transport: an HTTPS endpoint for its ``http`` output (see ADR 0009).

``clawql-secrets audit ingest --config ingest.yaml`` serves
``POST <path>`` for Fluent Bit's ``http`` output (``json_lines``, ``json`` or
``msgpack``, optionally gzip; see ``fluentbit_format``) and ships what it
receives with the guarantees of tailing the file device:

- **Authentication by mTLS.** The TLS server requires a client certificate
  from ``client_ca_file``; its URI SAN (e.g. ``spiffe://clawql.internal/audit/n1``)
  must be one configured source, whose name is the log stream. One stream per
  source; a stream is never shared with a tailed one (separate processes).
- **Redaction before storage** by ``leaf.make_leaf`` exactly as for tailed
  lines; the entry id is ``tail.entry_id(stream, line)``, the very id the
  tailer would give the same line in that stream.
- **Accepted means stored.** A request is answered 200 only once the WORM
  store holds a segment and a signed checkpoint covering every entry of the
  batch (or the entries were already stored). There is no local spool:
  Fluent Bit's own buffer (filesystem storage) is the durable buffer, as the
  audit files are for the tailer (ADR 0008).
- **At-least-once, de-duplicated.** A retried batch (the answer was lost, or
  it was refused with 503) is appended again only for ids not seen: ids of
  the latest ``recent_ids`` stored entries are loaded when a stream resumes.
- **Back-pressure, not loss.** While ``max_pending_entries`` of a source are
  appended but not yet stored (store slow or down), new batches get 503 with
  ``Retry-After``; Fluent Bit retries 5xx (it drops chunks answered with a 4xx
  other than 408/429, so 4xx is kept for bodies that can never succeed).
- **Size limits.** ``Content-Length`` above ``max_body_bytes`` -> 413 before
  reading; decompressed size and record count are bounded too.

One worker thread owns the log (the Merkle trees and the signer are not
thread-safe); request threads only decode, queue and wait.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final

from cryptography import x509
from pydantic import BaseModel, ConfigDict, Field

from clawql_secrets.audit import layout
from clawql_secrets.audit.checkpoint import Signer
from clawql_secrets.audit.fluentbit_format import BodyError, BodyLimits, Record, decode_body
from clawql_secrets.audit.layout import DEFAULT_LIMITS, AuditLimits
from clawql_secrets.audit.leaf import make_leaf, notice
from clawql_secrets.audit.log import AuditLog
from clawql_secrets.audit.metrics import ShipperMetrics
from clawql_secrets.audit.redact import Redactor
from clawql_secrets.audit.ship_config import (
    FileSignerConfig,
    HSMSignerModel,
    LocalStoreConfig,
    S3StoreConfig,
    resolve_store_and_signer,
)
from clawql_secrets.audit.shipper import RecentIds, stored_ids
from clawql_secrets.audit.store import WormStore
from clawql_secrets.audit.tail import Cursor, EntryKind, RawEntry, entry_id, line_hasher
from clawql_secrets.errors import ClawQLError, ConfigError, IntegrityError
from clawql_secrets.validation import load_model

log = logging.getLogger(__name__)

KIND_NO_LOG_KEY: Final = "fluent_record_without_log"
_NO_CURSOR: Final = Cursor(stream="-", device=0, inode=0, offset=0)
_RECORD_DOMAIN: Final = b"fluent-bit-record\x00"


@dataclass(frozen=True)
class IngestSettings:
    """Limits and timing of the endpoint; defaults are the production ones."""

    max_body_bytes: int = 16 << 20
    body: BodyLimits = field(default_factory=BodyLimits)
    log_key: str = "log"
    max_pending_entries: int = 100_000
    recent_ids: int = 200_000
    ack_timeout_seconds: float = 30.0
    retry_after_seconds: int = 5
    retry_seconds: float = 5.0
    origin_prefix: str = layout.DEFAULT_ORIGIN_PREFIX
    limits: AuditLimits = DEFAULT_LIMITS

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1 or self.max_pending_entries < 1 or self.recent_ids < 1:
            raise ConfigError("ingest limits must be positive")
        if not (self.ack_timeout_seconds > 0 and self.retry_seconds > 0):
            raise ConfigError("ingest timeouts must be positive")


@dataclass(frozen=True)
class Answer:
    """What a request thread answers: status, a short message (never content), headers."""

    status: int
    message: str
    headers: Mapping[str, str] = field(default_factory=dict)
    stored: int = 0
    duplicates: int = 0


class _Batch:
    def __init__(self, stream: str, records: list[Record]) -> None:
        self.stream = stream
        self.records = records
        self.need = -1  # tree size that must be stored before answering 2xx
        self.new = 0
        self.duplicates = 0
        self.failed: str | None = None
        self.done = threading.Event()


class _Stream:
    def __init__(self, name: str, recent: int) -> None:
        self.name = name
        self.seen = RecentIds(recent)
        self.ready = False
        self.queued = 0  # records queued, not yet appended (request threads add)
        self.unpublished = 0  # appended, not yet stored
        self.stored_size = 0
        self.waiting: list[_Batch] = []
        self.retry_at = 0.0


def record_id(stream: str, record: Record) -> str:
    """The entry id: ``tail.entry_id`` of the audit line (a record without one: of its bytes)."""
    if record.line is not None:
        return entry_id(stream, record.line)
    h = line_hasher(stream)
    h.update(_RECORD_DOMAIN)
    h.update(record.raw)
    return str(h.hexdigest())


class FluentBitIngest:
    """Queue batches from request threads; one worker appends, publishes and answers them."""

    def __init__(
        self,
        streams: Sequence[str],
        store: WormStore,
        signer: Signer,
        settings: IngestSettings | None = None,
        *,
        redactor: Redactor | None = None,
        metrics: ShipperMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not streams:
            raise ConfigError("the Fluent Bit ingest needs at least one source")
        names = [layout.check_stream(s) for s in streams]
        if len(set(names)) != len(names):
            raise ConfigError("source names must be unique")
        self.settings = settings or IngestSettings()
        self.store = store
        self.log = AuditLog(
            store, signer, origin_prefix=self.settings.origin_prefix, limits=self.settings.limits
        )
        self.redactor = redactor or Redactor()
        self.metrics = metrics or ShipperMetrics()
        self._clock = clock
        self._lock = threading.Condition()
        self._queue: list[_Batch] = []
        self._streams = {n: _Stream(n, self.settings.recent_ids) for n in names}

    @property
    def streams(self) -> list[str]:
        return sorted(self._streams)

    # -- request threads ----------------------------------------------------

    def submit(self, stream: str, records: list[Record], timeout: float | None = None) -> Answer:
        """Queue a decoded batch and wait until it is stored (200) or refused (503)."""
        st = self._streams.get(stream)
        if st is None:
            return Answer(403, "unknown source")
        batch = _Batch(stream, records)
        with self._lock:
            if st.unpublished + st.queued + len(records) > self.settings.max_pending_entries:
                self.metrics.error(stream, "backpressure")
                return self._busy("the store is behind: retry later")
            st.queued += len(records)
            self._queue.append(batch)
            self._lock.notify_all()
        if not batch.done.wait(self.settings.ack_timeout_seconds if timeout is None else timeout):
            # Still queued or unpublished: Fluent Bit retries and the retry is de-duplicated.
            return self._busy("not stored in time: retry later")
        if batch.failed is not None:
            return self._busy(batch.failed)
        return Answer(200, "stored", stored=batch.new, duplicates=batch.duplicates)

    def _busy(self, message: str) -> Answer:
        return Answer(503, message, {"Retry-After": str(self.settings.retry_after_seconds)})

    # -- the worker -----------------------------------------------------------

    def run(self, stop: threading.Event, poll_seconds: float = 0.2) -> None:
        """Process batches until ``stop`` is set, then publish a last time."""
        while not stop.is_set():
            with self._lock:
                if not self._queue:
                    self._lock.wait(poll_seconds)
            self.step()
        self.step()
        with self._lock:
            left, self._queue = self._queue, []
        for batch in left:
            self._finish(batch, "shutting down: retry later")
        for st in self._streams.values():
            for batch in st.waiting:
                self._finish(batch, "shutting down: retry later")
            st.waiting = []

    def wake(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def step(self) -> None:
        """Append every queued batch, then publish the streams that need it (worker only)."""
        with self._lock:
            batches, self._queue = self._queue, []
        touched: set[str] = set()
        for batch in batches:
            st = self._streams[batch.stream]
            try:
                self._append(st, batch)
            except ClawQLError as exc:
                self._failed(st, exc)
                self._finish(batch, "the store cannot be read: retry later")
            finally:
                with self._lock:
                    st.queued -= len(batch.records)
            touched.add(st.name)
        now = self._clock()
        for st in self._streams.values():
            due = st.unpublished > 0 and 0 < st.retry_at <= now
            if st.name in touched or due:
                self._publish(st)

    def _append(self, st: _Stream, batch: _Batch) -> None:
        self._ensure_ready(st)
        stream_log = self.log.stream(st.name)
        for record in batch.records:
            rid = record_id(st.name, record)
            if rid in st.seen:
                batch.duplicates += 1
                self.metrics.duplicate(st.name)
                continue
            raw = RawEntry(
                st.name, EntryKind.ENTRY, rid, record.line or b"", len(record.raw), _NO_CURSOR
            )
            if record.line is None:
                leaf = notice(raw, KIND_NO_LOG_KEY, "record without the log key")
            else:
                leaf = make_leaf(raw, self.redactor, self.settings.limits)
            stream_log.append_canonical(leaf.data)
            st.seen.add(rid)
            batch.new += 1
            with self._lock:
                st.unpublished += 1
            self.metrics.appended(
                st.name, stream_log.size, kind=leaf.kind, redactions=(f.type for f in leaf.findings)
            )
        batch.need = stream_log.size
        if batch.need <= st.stored_size:
            self._finish(batch, None)
        else:
            st.waiting.append(batch)

    def _publish(self, st: _Stream) -> None:
        if not st.ready:
            return
        try:
            checkpoint = self.log.checkpoint(st.name)
        except ClawQLError as exc:
            self._failed(st, exc)
            st.retry_at = self._clock() + self.settings.retry_seconds
            for batch in st.waiting:
                self._finish(batch, "the store is unavailable: retry later")
            st.waiting = []
            return
        size = self.log.stream(st.name).size
        st.retry_at = 0.0
        with self._lock:
            st.stored_size = size
            st.unpublished = 0
        self.metrics.published(st.name, checkpoint or self.log.stream(st.name).published, size)
        for batch in st.waiting:
            self._finish(batch, None)
        st.waiting = []
        if checkpoint is not None:
            log.info(
                "fluent-bit stream %s: checkpoint %d %s",
                st.name,
                checkpoint.size,
                checkpoint.root.hex(),
            )

    def _ensure_ready(self, st: _Stream) -> None:
        if st.ready:
            return
        stream_log = self.log.stream(st.name)
        size = stream_log.size
        st.seen.pin(stored_ids(self.store, st.name, max(0, size - self.settings.recent_ids)))
        st.stored_size = size
        st.ready = True
        self.metrics.resumed(st.name, size, stream_log.published)

    def _finish(self, batch: _Batch, failed: str | None) -> None:
        batch.failed = failed
        batch.done.set()

    def _failed(self, st: _Stream, exc: ClawQLError) -> None:
        self.metrics.error(st.name, "integrity" if isinstance(exc, IntegrityError) else "store")
        # Our errors never carry secrets (see clawql_secrets.errors).
        log.warning("fluent-bit stream %s: store failed: %s", st.name, exc.diagnostics())


# -- authentication ------------------------------------------------------------------


def uri_sans(der: bytes) -> list[str]:
    """The URI subject alternative names of a DER certificate (none if unparseable)."""
    try:
        cert = x509.load_der_x509_certificate(der)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return []
    return [str(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)]


def source_of(der: bytes | None, sources: Mapping[str, str]) -> str | None:
    """The source whose URI is a URI SAN of the (already verified) client certificate."""
    if not der:
        return None
    by_uri = {uri: name for name, uri in sources.items()}
    found = {by_uri[u] for u in uri_sans(der) if u in by_uri}
    return found.pop() if len(found) == 1 else None


def server_context(cert_file: Path, key_file: Path, client_ca_file: Path) -> ssl.SSLContext:
    """TLS 1.2+ server context that requires a client certificate from ``client_ca_file``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_cert_chain(cert_file, key_file)
        ctx.load_verify_locations(cafile=str(client_ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the ingest TLS files ({type(exc).__name__})") from exc
    return ctx


# -- the HTTP server -----------------------------------------------------------------


class IngestServer(http.server.ThreadingHTTPServer):
    """A TLS ``ThreadingHTTPServer``; the handshake (client cert) runs in the request thread."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        ingest: FluentBitIngest,
        sources: Mapping[str, str],
        context: ssl.SSLContext,
        path: str = "/",
        handshake_timeout: float = 10.0,
    ) -> None:
        self.ingest = ingest
        self.sources = dict(sources)
        self.context = context
        self.ingest_path = path
        self.handshake_timeout = handshake_timeout
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        sock: socket.socket = request
        sock.settimeout(self.handshake_timeout)
        try:
            tls = self.context.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError):
            return  # no or untrusted client certificate: refused at the handshake
        try:
            tls.settimeout(self.ingest.settings.ack_timeout_seconds + 30)
            _Handler(tls, client_address, self)
        finally:
            with contextlib.suppress(OSError):
                tls.close()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Handler(http.server.BaseHTTPRequestHandler):
    server: IngestServer
    protocol_version = "HTTP/1.1"
    server_version = "clawql-audit-ingest"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("ingest %s", format % args)

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/healthz":
            self._answer(Answer(200, "ok"))
        else:
            self._answer(Answer(404, "not found"))

    def do_POST(self) -> None:
        srv = self.server
        der = self.connection.getpeercert(binary_form=True)
        source = source_of(der, srv.sources)
        if source is None:
            self._drain_body()
            self._answer(Answer(403, "client certificate names no configured source"))
            return
        if self.path.split("?", 1)[0] != srv.ingest_path:
            self._drain_body()
            self._answer(Answer(404, "not found"))
            return
        length_text = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length_text is None:
            self._answer(Answer(411, "Content-Length required"), close=True)
            return
        try:
            length = int(length_text)
        except ValueError:
            self._answer(Answer(400, "bad Content-Length"), close=True)
            return
        settings = srv.ingest.settings
        if length < 0 or length > settings.max_body_bytes:
            # Discard (bounded, not kept) so the client reads the answer, not a reset.
            self._discard(length, 4 * settings.max_body_bytes)
            self._answer(Answer(413, f"body over {settings.max_body_bytes} bytes"), close=True)
            return
        body = self.rfile.read(length)
        if len(body) != length:
            self._answer(Answer(400, "body shorter than Content-Length"), close=True)
            return
        try:
            records = decode_body(
                body,
                self.headers.get("Content-Type"),
                self.headers.get("Content-Encoding"),
                log_key=settings.log_key,
                limits=settings.body,
            )
        except BodyError as exc:
            self._answer(Answer(exc.status, exc.message))
            return
        self._answer(srv.ingest.submit(source, records))

    def _discard(self, length: int, cap: int) -> None:
        left = min(max(length, 0), cap)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                return
            left -= len(chunk)

    def _drain_body(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = 0
        if 0 < length <= self.server.ingest.settings.max_body_bytes:
            self.rfile.read(length)
        elif length:
            self.close_connection = True

    def _answer(self, answer: Answer, *, close: bool = False) -> None:
        doc: dict[str, object] = {"status": answer.status, "message": answer.message}
        if answer.status == 200:
            doc.update(stored=answer.stored, duplicates=answer.duplicates)
        data = json.dumps(doc).encode() + b"\n"
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in answer.headers.items():
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)


# -- configuration -------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    uri: str = Field(min_length=1, max_length=2048)
    """The URI SAN its client certificate carries, e.g. spiffe://clawql.internal/audit/n1."""


class ListenConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=9880, ge=0, le=65535)
    path: str = Field(default="/v1/audit/fluent-bit", pattern=r"^/[A-Za-z0-9._~/-]*$")
    cert_file: Path
    key_file: Path
    client_ca_file: Path


class IngestConfig(_Strict):
    """``audit ingest`` configuration (JSON or YAML); names files, never a credential."""

    listen: ListenConfig
    sources: dict[str, SourceConfig] = Field(min_length=1)
    store: Annotated[LocalStoreConfig | S3StoreConfig, Field(discriminator="kind")]
    signer: Annotated[FileSignerConfig | HSMSignerModel, Field(discriminator="kind")]
    origin_prefix: str = layout.DEFAULT_ORIGIN_PREFIX
    log_key: str = Field(default="log", min_length=1, max_length=256)
    max_body_bytes: int = Field(default=16 << 20, ge=1024, le=1 << 30)
    max_decoded_bytes: int = Field(default=64 << 20, ge=1024, le=1 << 31)
    max_records: int = Field(default=100_000, ge=1)
    max_pending_entries: int = Field(default=100_000, ge=1)
    ack_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    retry_after_seconds: int = Field(default=5, ge=1, le=3600)

    def resolved(self, base: Path) -> IngestConfig:
        def fix(p: Path) -> Path:
            return p if p.is_absolute() else base / p

        listen = self.listen.model_copy(
            update={
                "cert_file": fix(self.listen.cert_file),
                "key_file": fix(self.listen.key_file),
                "client_ca_file": fix(self.listen.client_ca_file),
            }
        )
        store, signer = resolve_store_and_signer(self.store, self.signer, fix)
        return self.model_copy(update={"listen": listen, "store": store, "signer": signer})

    def source_uris(self) -> dict[str, str]:
        for name in self.sources:
            layout.check_stream(name)
        uris = [s.uri for s in self.sources.values()]
        if len(set(uris)) != len(uris):
            raise ConfigError("each source needs its own URI")
        return {name: s.uri for name, s in sorted(self.sources.items())}

    def settings(self) -> IngestSettings:
        return IngestSettings(
            max_body_bytes=self.max_body_bytes,
            body=BodyLimits(max_decoded_bytes=self.max_decoded_bytes, max_records=self.max_records),
            log_key=self.log_key,
            max_pending_entries=self.max_pending_entries,
            ack_timeout_seconds=self.ack_timeout_seconds,
            retry_after_seconds=self.retry_after_seconds,
            origin_prefix=self.origin_prefix,
        )


def load_ingest_config(path: Path) -> IngestConfig:
    return load_model(path, IngestConfig, "ingest configuration").resolved(path.resolve().parent)


def serve(config: IngestConfig, store: WormStore, signer: Signer, stop: threading.Event) -> None:
    """Run the endpoint until ``stop`` is set (``audit ingest``)."""
    uris = config.source_uris()
    ingest = FluentBitIngest(list(uris), store, signer, config.settings())
    context = server_context(
        config.listen.cert_file, config.listen.key_file, config.listen.client_ca_file
    )
    try:
        server = IngestServer(
            (config.listen.host, config.listen.port), ingest, uris, context, config.listen.path
        )
    except OSError as exc:
        raise ConfigError(f"cannot listen on {config.listen.host}:{config.listen.port}") from exc
    thread = threading.Thread(target=server.serve_forever, name="ingest-http", daemon=True)
    thread.start()
    print(
        f"fluent-bit ingest on https://{config.listen.host}:{server.port}{config.listen.path} "
        f"for {', '.join(ingest.streams)}",
        flush=True,
    )
    try:
        ingest.run(stop)
    finally:
        server.shutdown()
        server.server_close()
