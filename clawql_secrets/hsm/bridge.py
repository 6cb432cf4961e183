"""The HSM bridge: OpenBao's transit-seal API served from a PKCS#11 token.

OpenBao 2.7 has no built-in PKCS#11 seal, but its ``seal "transit"`` talks to
any server answering two calls (all ``PUT``, JSON, no Content-Type)::

    PUT /v1/<mount>/encrypt/<key>  {"plaintext": b64}
        -> {"data": {"ciphertext": "clawql:v<N>:...", "key_version": N}}
    PUT /v1/<mount>/decrypt/<key>  {"ciphertext": "clawql:v<N>:..."}
        -> {"data": {"plaintext": b64}}

``POST`` is accepted as well. The plaintexts are OpenBao's root key and
recovery key in clear, so this service is inside the trust boundary and
authenticates every caller by **mutual TLS**:

* the TLS layer trusts ONE dedicated client CA (``client_ca``), not the CA of
  the nodes' listeners, with ``CERT_OPTIONAL``. A certificate from another CA
  fails the handshake itself (the client sees a reset; Python's ssl offers no
  hook to log it, so this case is the one refusal without a bridge log line);
* a caller without a certificate gets 401, one whose certificate carries no
  URI SAN starting with ``allowed_uri_prefix`` (``spiffe://clawql.local/openbao/``
  by convention, one URI per node: ``.../openbao/n1``) gets 403; both log why.

uvicorn does not hand the peer certificate to the application, so
:class:`ClientCertProtocol` (a small ``H11Protocol`` subclass installed with
``Config(http=...)``) reads it from the SSL object when the connection is made
and puts it in the ASGI scope as ``scope["extensions"]["tls"]["client_cert"]``.

``/v1/auth/token/renew-self`` answers 404 with an explanation: callers present
certificates, not tokens, and the seal stanza sets ``disable_renewal = "true"``.
``GET /v1/health`` needs no certificate and shows no secret.

Rotation needs no restart and no signal: every encrypt first looks for the key
label after the newest known one (one ``C_FindObjects``), and a decrypt for an
unknown version searches the token, so versions added by ``hsm rotate`` or a
restore in another process are used at once.

Errors are ``{"errors": ["..."]}`` like OpenBao's, with no stack trace and
never a plaintext; logs go to stderr, one line per refusal or error.

With ``metrics_port`` set, a second listener serves Prometheus metrics
(:class:`BridgeMetrics`) in plain HTTP on ``metrics_host``, loopback by
default. It is a separate socket on purpose: the mTLS listener serves only the
seal API (its ``/metrics`` is a 404), and a scraper needs no seal-client
certificate. The metrics carry counts, timings, the key version and node ids,
never a plaintext, ciphertext, key or PIN.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import json
import logging
import re
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from clawql_secrets.errors import (
    AuthenticationError,
    ClawQLError,
    ConfigError,
    HSMError,
    InputError,
)
from clawql_secrets.hsm import envelope
from clawql_secrets.hsm.token import (
    DEFAULT_LIB_PATH,
    DecryptionFailed,
    HSMToken,
    KeyVersionMissing,
    PinError,
)
from clawql_secrets.validation import describe_validation_error

log = logging.getLogger("clawql_secrets.hsm.bridge")

DEFAULT_URI_PREFIX = "spiffe://clawql.local/openbao/"
DEFAULT_MOUNT = "transit"
DEFAULT_KEY_NAME = "clawql-unseal"
DEFAULT_PORT = 18300
_MAX_HEADER_BYTES = 16 * 1024
_T = TypeVar("_T")


# -- settings ------------------------------------------------------------------


class BridgeSettings(BaseModel):
    """The bridge's JSON configuration file (``hsm serve --config FILE``).

    Relative paths are relative to the configuration file.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    lib_path: Path = DEFAULT_LIB_PATH
    softhsm_conf: Path | None = None
    token_label: str = Field(default="clawql", min_length=1, max_length=32)
    pin_file: Path
    key_name: str = DEFAULT_KEY_NAME
    mount: str = DEFAULT_MOUNT
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    tls_cert: Path
    tls_key: Path
    client_ca: Path
    allowed_uri_prefix: str = DEFAULT_URI_PREFIX
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    # Prometheus metrics, plain HTTP, on their own listener; off when unset.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=None, ge=0, le=65535)

    @field_validator("key_name")
    @classmethod
    def _key_name(cls, value: str) -> str:
        if not envelope.is_valid_key_name(value):
            raise ValueError("must be 1-64 letters, digits, '.', '-' or '_'")
        return value

    @field_validator("mount")
    @classmethod
    def _mount(cls, value: str) -> str:
        value = value.strip("/")
        if not envelope.is_valid_mount(value):
            raise ValueError("must be 1-8 '/'-separated segments of letters, digits, '-', '_'")
        return value

    @field_validator("allowed_uri_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        # The trailing '/' stops ".../openbao" from also admitting ".../openbao-evil".
        if "://" not in value or not value.endswith("/") or len(value) < 10:
            raise ValueError(
                "must be a URI prefix ending in '/', e.g. spiffe://clawql.local/openbao/"
            )
        return value

    @model_validator(mode="after")
    def _metrics_listener_is_separate(self) -> BridgeSettings:
        # The seal API listener serves only the seal API.
        if self.metrics_port and self.metrics_port == self.port:
            raise ValueError("metrics_port must differ from port (the mTLS seal API listener)")
        return self

    def resolved(self, base_dir: Path) -> BridgeSettings:
        """The same settings with relative paths anchored at ``base_dir``."""
        update: dict[str, Path] = {}
        for name in ("lib_path", "softhsm_conf", "pin_file", "tls_cert", "tls_key", "client_ca"):
            value = getattr(self, name)
            if isinstance(value, Path) and not value.is_absolute():
                update[name] = base_dir / value
        return self.model_copy(update=update)


def load_settings(path: Path) -> BridgeSettings:
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise ConfigError(f"the bridge configuration {path} does not exist") from exc
    except OSError as exc:
        raise ConfigError(
            f"the bridge configuration {path} cannot be read ({exc.strerror})"
        ) from exc
    except ValueError as exc:
        raise ConfigError(f"the bridge configuration {path} is not valid JSON") from exc
    try:
        settings = BridgeSettings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            f"the bridge configuration {path} is invalid: {describe_validation_error(exc)}"
        ) from exc
    return settings.resolved(path.resolve().parent)


def open_token(settings: BridgeSettings) -> HSMToken:
    """The token handle the settings describe (PIN from ``pin_file``)."""
    return HSMToken.from_pin_file(
        lib_path=settings.lib_path,
        token_label=settings.token_label,
        pin_file=settings.pin_file,
        key_name=settings.key_name,
        softhsm_conf=settings.softhsm_conf,
    )


# -- caller identity (pure) ------------------------------------------------------


def client_identity(peercert: Mapping[str, Any] | None, prefix: str) -> str:
    """The caller's URI SAN under ``prefix``, or AuthenticationError saying why not.

    ``peercert`` is ``SSLSocket.getpeercert()`` of a verified connection: the
    chain to the client CA was checked by the handshake.
    """
    if not peercert:
        raise AuthenticationError("no client certificate presented")
    sans = peercert.get("subjectAltName", ())
    uris = [str(value) for kind, value in sans if kind == "URI"]
    for uri in uris:
        if uri.startswith(prefix) and len(uri) > len(prefix):
            return uri
    shown = ", ".join(repr(u[:120]) for u in uris[:4]) or "none"
    raise AuthenticationError(
        f"client certificate carries no URI SAN under {prefix!r} (URI SANs: {shown})"
    )


# -- metrics ---------------------------------------------------------------------

# Label vocabularies: fixed, so that no request can add a series.
SEAL_OUTCOMES = (
    "ok",
    "invalid_request",  # the body's field, base64 or ciphertext format is wrong
    "not_authentic",  # the ciphertext does not authenticate: altered, or another key/mount
    "unknown_version",  # the ciphertext names a key version the token does not hold
    "hsm_error",  # the token failed (clawql_bridge_hsm_errors_total says how)
    "internal_error",  # a bug in the bridge
)
REFUSAL_REASONS = (
    "no_client_cert",
    "identity_not_allowed",
    "not_found",
    "token_renewal",
    "method_not_allowed",
    "body_too_large",
    "bad_request",
    "internal_error",
)
HSM_ERROR_KINDS = ("pin", "key_missing", "token", "internal")
OTHER_CALLER = "other"
MAX_CALLERS = 32
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_REASON_BY_STATUS = {
    400: "bad_request",
    401: "no_client_cert",
    403: "identity_not_allowed",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}
_OUTCOME_BY_STATUS = {400: "invalid_request", 503: "hsm_error"}
# SoftHSM answers in well under a millisecond; a network HSM in tens of them.
_PKCS11_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def caller_label(identity: str | None, prefix: str) -> str:
    """The ``caller`` label for a client certificate's URI SAN: its node id, or "other".

    Only a SAN under ``prefix`` whose remainder is one short path segment
    (``.../openbao/n1`` -> ``n1``) becomes a label; anything else, or no
    certificate, is ``other``.
    """
    if identity is None or not identity.startswith(prefix):
        return OTHER_CALLER
    node = identity[len(prefix) :]
    return node if _NODE_ID.fullmatch(node) else OTHER_CALLER


def hsm_error_kind(exc: BaseException) -> str:
    """The ``kind`` label for a failure of the token: a fixed word, never the message."""
    if isinstance(exc, PinError):
        return "pin"
    if isinstance(exc, KeyVersionMissing):
        return "key_missing"
    if isinstance(exc, HSMError):
        return "token"
    return "internal"


class BridgeMetrics:
    """What an operator alerts on, for one bridge process (thread-safe).

    Exported (``start_http_server`` on ``metrics_host:metrics_port``)::

        clawql_bridge_seal_operations_total{operation,outcome,caller}
            encrypt/decrypt calls that reached the key; outcome in SEAL_OUTCOMES,
            caller the node id of the certificate's URI SAN (caller_label)
        clawql_bridge_refused_requests_total{reason,caller}
            requests refused before any seal operation (REFUSAL_REASONS); a
            certificate from another CA fails the TLS handshake and is not counted
        clawql_bridge_pkcs11_seconds{operation}
            histogram of PKCS#11 calls (encrypt, decrypt, current_version),
            waiting for the process-wide PKCS#11 lock included
        clawql_bridge_hsm_errors_total{kind}
            token failures: pin, key_missing, token (absent, logged out,
            device error...), internal
        clawql_bridge_token_available
            1 when the token answered this scrape's key-version lookup, else 0
        clawql_bridge_key_version
            the version new encryptions use (absent while the token fails)

    The last two are measured at each scrape (one ``C_FindObjects``), so a
    token lost between two seal operations, which are rare (a node's start),
    shows at once. Callers beyond ``MAX_CALLERS`` distinct node ids count as
    ``other``, so the series stay bounded even if the seal-client CA signs
    many certificates.
    """

    def __init__(self, allowed_uri_prefix: str, probe: Callable[[], int] | None = None) -> None:
        self._prefix = allowed_uri_prefix
        self._lock = threading.Lock()
        self._callers: set[str] = set()
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        if probe is not None:
            # Registered first: errors it counts are in the same scrape's counters.
            r.register(_TokenProbe(self, probe))
        self.seal_operations = Counter(
            "clawql_bridge_seal_operations",
            "Transit encrypt/decrypt calls by operation, outcome and calling node",
            ["operation", "outcome", "caller"],
            registry=r,
        )
        self.refused = Counter(
            "clawql_bridge_refused_requests",
            "Requests refused before any seal operation, by reason and calling node",
            ["reason", "caller"],
            registry=r,
        )
        self.pkcs11_seconds = Histogram(
            "clawql_bridge_pkcs11_seconds",
            "PKCS#11 call latency (lock wait included) by operation",
            ["operation"],
            buckets=_PKCS11_BUCKETS,
            registry=r,
        )
        self.hsm_errors = Counter(
            "clawql_bridge_hsm_errors",
            "Token failures by kind (pin, key_missing, token, internal)",
            ["kind"],
            registry=r,
        )
        # Present at 0 from the start, so that increase() sees the first one.
        for kind in HSM_ERROR_KINDS:
            self.hsm_errors.labels(kind)
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason, OTHER_CALLER)

    def caller(self, identity: str | None) -> str:
        label = caller_label(identity, self._prefix)
        with self._lock:
            if label in self._callers or label == OTHER_CALLER:
                return label
            if len(self._callers) >= MAX_CALLERS:
                return OTHER_CALLER
            self._callers.add(label)
            return label

    def sealed(self, operation: str, outcome: str, caller: str) -> None:
        self.seal_operations.labels(operation, outcome, caller).inc()

    def refusal(self, reason: str, caller: str) -> None:
        self.refused.labels(reason, caller).inc()

    def hsm_error(self, exc: BaseException) -> None:
        self.hsm_errors.labels(hsm_error_kind(exc)).inc()

    def timed(self, operation: str, call: Callable[[], _T]) -> _T:
        """``call()``, its duration observed as a PKCS#11 operation whatever it raises."""
        start = time.perf_counter()
        try:
            return call()
        finally:
            self.pkcs11_seconds.labels(operation).observe(time.perf_counter() - start)


class _TokenProbe(Collector):
    """The token's state at scrape time: available or not, and the current key version."""

    def __init__(self, metrics: BridgeMetrics, probe: Callable[[], int]) -> None:
        self._metrics = metrics
        self._probe = probe
        self._was_available: bool | None = None

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families()

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "clawql_bridge_token_available",
                "1 when the token answered this scrape's key-version lookup, else 0",
            ),
            GaugeMetricFamily("clawql_bridge_key_version", "The key version new encryptions use"),
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        available, version = self._families()
        try:
            current = self._metrics.timed("current_version", self._probe)
        except Exception as exc:  # any failure is "unavailable"; the kind says which
            self._metrics.hsm_error(exc)
            available.add_metric([], 0)
            if self._was_available is not False:  # one log line per outage, not per scrape
                why = exc.message if isinstance(exc, ClawQLError) else type(exc).__name__
                log.error("metrics: the token is unavailable: %s", why)
            self._was_available = False
        else:
            available.add_metric([], 1)
            version.add_metric([], current)
            if self._was_available is False:
                log.info("metrics: the token is available again (key version %d)", current)
            self._was_available = True
        yield available
        yield version


# -- the ASGI app ---------------------------------------------------------------


class _Refusal(Exception):
    """An HTTP error answer; the message is safe to show and to log.

    ``label`` overrides the metrics label its status implies (a refusal
    reason before a seal operation, an outcome during one).
    """

    def __init__(self, status: int, message: str, *, label: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.label = label


@dataclass
class _Call:
    """What one request turned out to be, for its metrics."""

    caller: str = OTHER_CALLER
    operation: str | None = None  # set once a seal operation is underway


def _errors(status: int, *messages: str) -> JSONResponse:
    return JSONResponse({"errors": list(messages)}, status_code=status)


def _where(request: Request) -> str:
    client = request.client
    who = f"{client.host}:{client.port}" if client else "unknown"
    path = request.url.path[:200].encode("unicode_escape").decode("ascii")
    return f"{who} {request.method} {path}"


class BridgeApp:
    """Request handling for one mount and key name over one token handle."""

    def __init__(
        self, settings: BridgeSettings, token: HSMToken, metrics: BridgeMetrics | None = None
    ) -> None:
        self.settings = settings
        self.token = token
        self.metrics = metrics or BridgeMetrics(settings.allowed_uri_prefix)

    def build(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/health", self.health, methods=["GET"]),
                Route(
                    "/v1/{rest:path}",
                    self.dispatch,
                    methods=["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"],
                ),
            ],
            exception_handlers={HTTPException: self._http_exception},
        )

    async def _http_exception(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = "no such endpoint" if status == 404 else f"HTTP {status}"
        if status == 405:
            message = "method not allowed"
        log.warning("error %s: %d %s", _where(request), status, message)
        self.metrics.refusal(_REASON_BY_STATUS.get(status, "internal_error"), OTHER_CALLER)
        return _errors(status, message)

    async def health(self, request: Request) -> Response:
        body: dict[str, Any] = {
            "status": "ok",
            "token_label": self.settings.token_label,
            "key_name": self.settings.key_name,
            "key_version": None,
        }
        try:
            body["key_version"] = await run_in_threadpool(
                self.metrics.timed, "current_version", self.token.current_version
            )
        except ClawQLError as exc:
            self.metrics.hsm_error(exc)
            log.error("health %s: %s", _where(request), exc.message)
            body["status"] = "unavailable"
            return JSONResponse(body, status_code=503)
        return JSONResponse(body)

    async def dispatch(self, request: Request) -> Response:
        call = _Call()
        try:
            identity = self._authenticate(request)
            call.caller = self.metrics.caller(identity)
            response = await self._route(request, identity, call)
        except _Refusal as exc:
            level = logging.WARNING if exc.status < 500 else logging.ERROR
            log.log(level, "refused %s: %d %s", _where(request), exc.status, exc.message)
            self._count(call, exc.status, exc.label)
            return _errors(exc.status, exc.message)
        except Exception as exc:  # a bug: answer without detail, log the type only
            log.error("error %s: 500 internal error (%s)", _where(request), type(exc).__name__)
            self._count(call, 500, "internal_error")
            return _errors(500, "internal error")
        self._count(call, 200, "ok")
        return response

    def _count(self, call: _Call, status: int, label: str | None) -> None:
        if call.operation is not None:
            outcome = label or _OUTCOME_BY_STATUS.get(status, "internal_error")
            self.metrics.sealed(call.operation, outcome, call.caller)
        else:
            reason = label or _REASON_BY_STATUS.get(status, "internal_error")
            self.metrics.refusal(reason, call.caller)

    def _authenticate(self, request: Request) -> str:
        tls = request.scope.get("extensions", {}).get("tls", {})
        peercert = tls.get("client_cert")
        try:
            return client_identity(peercert, self.settings.allowed_uri_prefix)
        except AuthenticationError as exc:
            raise _Refusal(401 if not peercert else 403, exc.message) from exc

    async def _route(self, request: Request, identity: str, call: _Call) -> Response:
        rest = request.path_params["rest"]
        if rest == "auth/token/renew-self":
            raise _Refusal(
                404,
                "token renewal is not supported: callers authenticate with client "
                'certificates; set disable_renewal = "true" in the seal stanza',
                label="token_renewal",
            )
        parts = rest.rsplit("/", 2)
        if len(parts) != 3 or parts[1] not in ("encrypt", "decrypt"):
            raise _Refusal(404, "no such endpoint")
        mount, operation, key = parts
        if mount != self.settings.mount:
            raise _Refusal(404, f"no transit mount {mount[:64]!r} on this bridge")
        if key != self.settings.key_name:
            raise _Refusal(404, f"no key {key[:64]!r} on mount {mount!r}")
        if request.method not in ("PUT", "POST"):
            raise _Refusal(405, f"{operation} takes PUT or POST")
        body = await self._read_json(request)
        call.operation = operation
        if operation == "encrypt":
            return await self._encrypt(body, identity)
        return await self._decrypt(body, identity)

    async def _read_json(self, request: Request) -> dict[str, Any]:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise _Refusal(400, "invalid Content-Length")
            if int(declared) > limit:
                raise _Refusal(413, f"request body exceeds {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _Refusal(413, f"request body exceeds {limit} bytes")
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks))
        except (ValueError, RecursionError) as exc:
            raise _Refusal(400, "request body is not valid JSON") from exc
        if not isinstance(body, dict):
            raise _Refusal(400, "request body must be a JSON object")
        return body

    @staticmethod
    def _field(body: dict[str, Any], name: str) -> str:
        unknown = sorted(set(body) - {name})
        if unknown:
            shown = ", ".join(repr(k[:40]) for k in unknown[:5])
            raise _Refusal(400, f"unexpected field(s) {shown}; expected {name!r}")
        value = body.get(name)
        if not isinstance(value, str):
            raise _Refusal(400, f"field {name!r} must be a string")
        return value

    async def _encrypt(self, body: dict[str, Any], identity: str) -> Response:
        encoded = self._field(body, "plaintext")
        try:
            plaintext = base64.b64decode(encoded.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise _Refusal(400, "field 'plaintext' must be base64") from exc
        aad = partial(envelope.aad_for, self.settings.mount, self.settings.key_name)
        try:
            version, blob = await run_in_threadpool(
                self.metrics.timed, "encrypt", partial(self.token.encrypt, plaintext, aad)
            )
        except HSMError as exc:
            self.metrics.hsm_error(exc)
            raise _Refusal(503, f"HSM failure: {exc.message}") from exc
        log.info("encrypt by %s with %s v%d", identity, self.settings.key_name, version)
        ciphertext = envelope.format_ciphertext(version, blob)
        return JSONResponse({"data": {"ciphertext": ciphertext, "key_version": version}})

    async def _decrypt(self, body: dict[str, Any], identity: str) -> Response:
        text = self._field(body, "ciphertext")
        try:
            env = envelope.parse_ciphertext(text)
        except InputError as exc:
            raise _Refusal(400, f"invalid ciphertext: {exc.message}") from exc
        aad = envelope.aad_for(self.settings.mount, self.settings.key_name, env.version)
        try:
            plaintext = await run_in_threadpool(
                self.metrics.timed,
                "decrypt",
                partial(self.token.decrypt, env.version, env.blob, aad),
            )
        except DecryptionFailed as exc:
            raise _Refusal(400, exc.message, label="not_authentic") from exc
        except KeyVersionMissing as exc:
            raise _Refusal(400, exc.message, label="unknown_version") from exc
        except HSMError as exc:
            self.metrics.hsm_error(exc)
            raise _Refusal(503, f"HSM failure: {exc.message}") from exc
        log.info("decrypt by %s with %s v%d", identity, self.settings.key_name, env.version)
        encoded = base64.b64encode(plaintext).decode("ascii")
        return JSONResponse({"data": {"plaintext": encoded}})


# -- transport: TLS, the peer certificate, the socket ----------------------------


class ClientCertProtocol(H11Protocol):
    """uvicorn's h11 protocol, plus the verified peer certificate in the ASGI scope.

    uvicorn builds one protocol object per connection and calls ``self.app``
    for each request on it, so wrapping ``self.app`` when the connection is
    made attaches this connection's certificate to every request it carries.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        peercert = ssl_object.getpeercert() if ssl_object is not None else None
        tls = {"client_cert": peercert or None}
        inner = self.app

        async def app(scope: Any, receive: Any, send: Any) -> None:
            extensions = scope.setdefault("extensions", {})
            extensions["tls"] = tls
            await inner(scope, receive, send)

        self.app = app


def build_ssl_context(settings: BridgeSettings) -> ssl.SSLContext:
    """Server TLS that requests a client certificate and trusts only ``client_ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the bridge certificate {settings.tls_cert} / key {settings.tls_key}",
            fix="check tls_cert and tls_key exist and match",
        ) from exc
    try:
        ctx.load_verify_locations(cafile=settings.client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the client CA {settings.client_ca}") from exc
    # OPTIONAL, not REQUIRED: a caller without a certificate then reaches the
    # app and gets a 401 and a log line instead of a silent reset.
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket, or ConfigError naming the port if it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only
    # when it sees that proto, and without it Nagle plus delayed ACKs cost ~40 ms
    # per response (measured: 23 requests/s instead of hundreds).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is already in use",
                fix="stop whatever listens there, or set another port in the bridge config",
            ) from exc
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror})") from exc
    return sock


def make_server(
    settings: BridgeSettings, token: HSMToken, metrics: BridgeMetrics | None = None
) -> uvicorn.Server:
    ctx = build_ssl_context(settings)
    config = uvicorn.Config(
        BridgeApp(settings, token, metrics).build(),
        http=ClientCertProtocol,
        # The stdlib loop: ClientCertProtocol reads the peer certificate from its
        # SSL transport, which is what this protocol was written and tested against.
        loop="asyncio",
        ssl_context_factory=lambda _config, _default: ctx,
        lifespan="off",
        log_config=None,
        access_log=False,
        proxy_headers=False,  # X-Forwarded-For from a caller must not rename it in logs
        server_header=False,
        timeout_keep_alive=30,
        h11_max_incomplete_event_size=_MAX_HEADER_BYTES,
    )
    return uvicorn.Server(config)


@contextlib.contextmanager
def metrics_listener(metrics: BridgeMetrics, host: str, port: int) -> Iterator[str]:
    """Serve ``metrics`` over plain HTTP on ``host:port`` (0: a free port); yields the URL.

    prometheus-client's own server (a thread per scrape), stopped on exit.
    """
    try:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"metrics port {port} on {host} is already in use",
                fix="stop whatever listens there, or set another metrics_port in the bridge config",
            ) from exc
        raise ConfigError(f"cannot serve metrics on {host}:{port} ({exc.strerror})") from exc
    try:
        shown = host if ":" not in host else f"[{host}]"
        yield f"http://{shown}:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextlib.contextmanager
def _metrics_if_configured(settings: BridgeSettings, metrics: BridgeMetrics) -> Iterator[None]:
    if settings.metrics_port is None:
        yield
        return
    with metrics_listener(metrics, settings.metrics_host, settings.metrics_port) as url:
        log.info("HSM bridge metrics on %s", url)
        yield


def serve(settings: BridgeSettings) -> None:
    """Open the token and serve until SIGINT/SIGTERM."""
    sock = bind_socket(settings.host, settings.port)
    try:
        with open_token(settings) as token:
            metrics = BridgeMetrics(settings.allowed_uri_prefix, probe=token.current_version)
            server = make_server(settings, token, metrics)
            version = token.current_version() if token.versions() else None
            log.info(
                "HSM bridge on https://%s:%d: mount %r, key %r (current version %s), token %r",
                settings.host,
                sock.getsockname()[1],
                settings.mount,
                settings.key_name,
                version,
                settings.token_label,
            )
            # The metrics listener stops before the token closes (its scrapes use it).
            with _metrics_if_configured(settings, metrics), _sigterm_exits_cleanly():
                server.run(sockets=[sock])
    finally:
        sock.close()


@contextlib.contextmanager
def _sigterm_exits_cleanly() -> Iterator[None]:
    """Let SIGTERM unwind the stack so the token is logged out and finalised.

    uvicorn drains connections on SIGTERM, restores the previous handler and
    re-raises the signal; with the default handler the process would die
    before the ``with open_token(...)`` block closes the session.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def running_in_thread(
    settings: BridgeSettings,
    token: HSMToken,
    *,
    metrics: BridgeMetrics | None = None,
    startup_timeout: float = 15.0,
) -> Iterator[str]:
    """Serve in a background thread (tests, benchmarks); yields the base URL.

    Waits until uvicorn is listening and always stops and joins the thread.
    Port 0 picks a free port. The metrics listener is not started here: pass
    ``metrics`` and serve them with :func:`metrics_listener` if wanted.
    """
    server = make_server(settings, token, metrics)
    sock = bind_socket(settings.host, settings.port)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="hsm-bridge", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError("the HSM bridge did not start")
            time.sleep(0.01)
        host = settings.host if ":" not in settings.host else f"[{settings.host}]"
        yield f"https://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
