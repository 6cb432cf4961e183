"""``http.request``: one outbound HTTPS request on the agent's behalf.

Two credentials can ride along, neither ever seen by the agent:

- ``client_cert``: a short-lived (5-minute) mTLS client certificate issued for
  the agent from its PKI role (``pki_int/issue/<tenant>-<role>``) with the
  agent's per-call token. The URI SAN is built from the verified claims, so the
  certificate names this agent; OpenBao's role (``allowed_uri_sans_template``)
  refuses any other name. The private key lives only in memory: it reaches
  OpenSSL through an anonymous memory file (``memfd``), never a disk path, and
  is dropped with the call.
- ``inject``: a field of one of the agent's own KV v2 secrets
  (``<kv>/data/tenants/<tenant>/agents/<agent>/<name>``, built from the claims:
  the agent names only the secret) put into a request header allowed for the
  role.

Destinations are an allow-list per agent role (``https://host[:port]``,
``*.suffix`` for subdomains); redirects are not followed; proxies and ``.netrc``
from the environment are ignored.

Validate first, touch secrets after: every argument (URL, headers, body,
injection) is checked before the KV secret is read or a certificate issued, so
bad input gets a 4xx and has no side effect.

What the agent may set, and how the answer comes back (issue 13):

- Never: the headers that frame the request or choose the answer's encoding
  (``_TRANSPORT``: ``Host``, ``Content-Length``, ``Transfer-Encoding``, ``TE``,
  ``Accept-Encoding``, ``Content-Encoding``, ``Connection``, ``Upgrade``, …). The
  gateway asks for ``Accept-Encoding: identity``.
- On a request that carries an injected secret: only the headers on an
  allow-list (``SAFE_WITH_SECRET``, plus the role's ``agent_headers``). An
  allow-list, because every header that asks for a part (``Range``,
  ``If-Range``), a charset (``Accept-Charset``) or an encoding of the answer lets
  a reflected secret come back in pieces or in a form redaction may not know,
  and a deny-list would have to know every such header. Those three may not be
  added to ``agent_headers`` either.
- The answer: a ``gzip``/``deflate`` body is decoded here with its decoded size
  bounded, and its compressed length is not returned (a BREACH-style oracle on
  the secret); any other content coding is refused (``502 http_bad_encoding``).
  The whole bounded body and every response header are redacted
  (``reflect.Redactor``: raw, URL/JSON/HTML-escaped, hex, base64 at every
  alignment, case-insensitively; and the certificate's private key); the cut at
  ``max_response_bytes`` is made after redaction, so a secret straddling it is
  not half-kept. The reason phrase is not returned. A destination that
  transforms the secret in some other way is the residual the allow-list
  controls (threat model).
"""

from __future__ import annotations

import base64
import ipaddress
import re
import ssl
import string
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from clawql_secrets.errors import ConfigError
from clawql_secrets.gateway.config import GatewayConfig
from clawql_secrets.gateway.errors import AccessDenied, BackendUnavailable, RequestRejected
from clawql_secrets.gateway.tools import ToolContext, quiet_loggers, tool_settings
from clawql_secrets.gateway.tools.content_coding import (
    BoundedDecoder,
    CorruptCoding,
    UnsupportedCoding,
    coding_of,
)
from clawql_secrets.gateway.tools.reflect import MIN_SECRET_BYTES, Redactor
from clawql_secrets.tlsca import NoMemoryFiles, load_chain_from_memory

NAME = "http.request"
REDACTED = "[redacted]"
ACCEPT_ENCODING = "identity"
MAX_HEADER_VALUE = 8192
_SECRET_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_FIELD_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
# RFC 9110 token (bounded) and field-value, ASCII only (no obs-text): visible
# characters, with spaces and tabs only between them; so no CR, LF or NUL.
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")
_FIELD_VALUE_RE = re.compile(r"(?:[!-~](?:[ \t]*[!-~])*)?")
# RFC 3986 characters; anything else must be percent-encoded by the agent.
_URL_CHARS = frozenset(string.ascii_letters + string.digits + "-._~:/?#[]@!$&'()*+,;=%")
_BAD_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_LABEL_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")

# Never from the agent: how the request is framed, and which encodings come back.
_TRANSPORT = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "te",
        "trailer",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "upgrade",
        "expect",
        "http2-settings",
        "accept-encoding",
        "content-encoding",
    }
)
# Ask for a part, a charset or an encoding of the answer: never with a secret.
_SHAPING = frozenset({"range", "if-range", "accept-charset"})
SAFE_WITH_SECRET = frozenset(
    {
        "accept",
        "accept-language",
        "content-type",
        "content-language",
        "user-agent",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
        "idempotency-key",
        "x-request-id",
    }
)
"""What an agent may set on a request that carries an injected secret (with the
role's ``agent_headers``): none of them asks for a part or an encoding of the answer."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HTTPRolePolicy(_Strict):
    """What one agent role may reach, and with which credentials."""

    allow: list[str] = Field(min_length=1)
    client_cert: bool = False
    inject_headers: list[str] = []
    # Headers the agent may set, beyond SAFE_WITH_SECRET, when a secret is injected.
    agent_headers: list[str] = []


class HTTPSettings(_Strict):
    roles: dict[str, HTTPRolePolicy] = {}
    ca_file: Path | None = None  # trust for destinations; the system store when unset
    timeout: float = Field(default=10.0, gt=0, le=120)  # connect, and each read
    deadline: float = Field(default=30.0, gt=0, le=600)  # the whole answer
    max_response_bytes: int = Field(default=1_000_000, ge=1024, le=64_000_000)
    max_request_bytes: int = Field(default=1_000_000, ge=0, le=16_000_000)
    max_headers: int = Field(default=32, ge=1, le=100)
    max_header_bytes: int = Field(default=16_384, ge=256, le=65_536)
    pki_mount: str = "pki_int"
    pki_role_template: str = "{tenant}-{agent_role}"
    uri_san_template: str = "spiffe://clawql/tenant/{tenant}/agent/{agent}"
    cert_ttl: str = "5m"
    kv_mount: str = "secret"
    kv_path_template: str = "tenants/{tenant}/agents/{agent}/{name}"


class Injection(_Strict):
    secret: str = Field(min_length=1, max_length=128)
    field: str = Field(default="value", min_length=1, max_length=128)
    header: str = Field(default="Authorization", min_length=1, max_length=64)
    format: str = Field(default="{value}", max_length=256)


class HTTPArgs(_Strict):
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: str = Field(min_length=8, max_length=4096)
    headers: dict[str, str] = Field(default={}, max_length=100)
    body: str | None = Field(default=None, max_length=16_000_000)
    client_cert: bool = False
    inject: Injection | None = None

    @field_validator("body")
    @classmethod
    def _utf8(cls, body: str | None) -> str | None:
        if body is not None and not body.isascii():
            try:
                body.encode()
            except UnicodeEncodeError:
                raise ValueError("the body must be text that UTF-8 can encode") from None
        return body


# -- pure checks ------------------------------------------------------------------------
def _bad_url(why: str) -> RequestRejected:
    return RequestRejected("bad_url", f"the URL is not accepted: {why}")


@dataclass(frozen=True)
class Destination:
    host: str
    port: int
    url: httpx.URL


def parse_url(url: str) -> Destination:
    """The URL, parsed strictly, or ``bad_url``: RFC 3986 characters only (no spaces,
    controls or non-ASCII), well-formed escapes, ``https``, a host name or IP literal,
    no user info, and httpx must read the same host and port from it."""
    # 1. Our own reading.
    if not set(url) <= _URL_CHARS:
        raise _bad_url("use RFC 3986 characters only, percent-encode the rest")
    if _BAD_PERCENT_RE.search(url):
        raise _bad_url("a '%' must start a %XX escape")
    try:
        parts = urlsplit(url)
        port = 443 if parts.port is None else parts.port
    except ValueError:
        raise _bad_url("it cannot be parsed") from None
    if parts.scheme != "https":
        raise _bad_url("only https:// URLs are allowed")
    if "@" in parts.netloc or not parts.hostname or port == 0:
        raise _bad_url("it must name a host (and a port, if any, above 0) and no user info")
    rest = parts.path + parts.query + parts.fragment
    if "[" in rest or "]" in rest:
        raise _bad_url("'[' and ']' belong in an IPv6 host only")
    bracketed = parts.netloc.startswith("[")
    host = _host(parts.hostname, bracketed=bracketed)
    # 2. httpx, which sends the request, must read the same destination.
    try:
        parsed = httpx.URL(url)
        seen = _host(parsed.raw_host.decode("ascii"), bracketed=bracketed)  # IDNA: A-labels
    except (httpx.InvalidURL, RequestRejected, ValueError):
        raise _bad_url("it cannot be parsed") from None
    if (parsed.scheme, seen, 443 if parsed.port is None else parsed.port) != ("https", host, port):
        raise _bad_url("it is ambiguous")
    return Destination(host, port, parsed.copy_with(fragment=None))


def _host(name: str, *, bracketed: bool) -> str:
    if bracketed:
        try:
            if "%" in name:  # a zone (scope) id names an interface, not a destination
                raise ValueError(name)
            return str(ipaddress.IPv6Address(name))
        except ValueError:
            raise _bad_url("not an IPv6 address (without a zone)") from None
    name = name.rstrip(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL_RE.fullmatch(x) for x in labels):
        raise _bad_url("not a host name")
    # A numeric last label makes resolvers read an IPv4 address (127.1, 0x7f.1):
    # only the dotted-quad form is taken.
    last = labels[-1]
    if last.isdigit() or last.startswith("0x"):
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise _bad_url("write IPv4 addresses as four decimal numbers") from None
    return name


def _destination(url: str) -> tuple[str, int]:
    d = parse_url(url)
    return d.host, d.port


def _pattern(pat: str) -> tuple[str, int]:
    """An allow-list entry: ``https://host[:port]`` or ``[https://]*.suffix[:port]``."""
    text = pat if "://" in pat else f"https://{pat}"
    wild = text.startswith("https://*.")
    if wild:
        text = "https://" + text[len("https://*.") :]
    dest = parse_url(text)
    if urlsplit(text).path not in ("", "/"):
        raise _bad_url("an allow-list entry names a host and port only")
    return ("*." + dest.host if wild else dest.host), dest.port


def _allowed(host: str, port: int, patterns: list[str]) -> bool:
    return _matches(host, port, [_pattern(p) for p in patterns])


def _matches(host: str, port: int, patterns: list[tuple[str, int]]) -> bool:
    for p_host, p_port in patterns:
        if p_port != port:
            continue
        if p_host.startswith("*."):
            if host.endswith(p_host[1:]) and len(host) > len(p_host) - 1:
                return True
        elif host == p_host:
            return True
    return False


def field_value_ok(value: str) -> bool:
    return len(value) <= MAX_HEADER_VALUE and _FIELD_VALUE_RE.fullmatch(value) is not None


def check_headers(
    headers: Mapping[str, str],
    *,
    secret_header: str | None,
    allowed: frozenset[str],
    max_count: int,
    max_bytes: int,
) -> dict[str, str]:
    """The agent's headers, or ``bad_header``. With a secret injected into
    ``secret_header``, only ``allowed`` (lower-case) names may be set."""
    if len(headers) > max_count:
        raise RequestRejected("bad_header", f"at most {max_count} headers may be set")
    seen: set[str] = set()
    total = 0
    for name, value in headers.items():
        if not _TOKEN_RE.fullmatch(name):
            raise RequestRejected(
                "bad_header", "header names are RFC 9110 tokens of at most 64 characters"
            )
        low = name.lower()
        if low in seen:
            raise RequestRejected("bad_header", f"header {name!r} is set twice")
        seen.add(low)
        if low in _TRANSPORT:
            raise RequestRejected("bad_header", f"header {name!r} may not be set")
        if secret_header is not None and low == secret_header.lower():
            raise RequestRejected("bad_header", f"header {name!r} carries the injected secret")
        if secret_header is not None and low not in allowed:
            raise RequestRejected(
                "bad_header",
                f"header {name!r} may not be set on a request that carries a secret "
                f"(allowed: {', '.join(sorted(allowed))})",
            )
        if not field_value_ok(value):
            raise RequestRejected(
                "bad_header",
                f"header {name!r}: values are visible ASCII with spaces or tabs inside, "
                f"at most {MAX_HEADER_VALUE} characters",
            )
        total += len(name) + len(value) + 4
    if total > max_bytes:
        raise RequestRejected("bad_header", f"the headers exceed {max_bytes} bytes")
    return dict(headers)


def _check_injection(inj: Injection, policy: HTTPRolePolicy) -> tuple[str, str]:
    """``(prefix, suffix)`` around the value, or a 4xx."""
    if not _SECRET_NAME_RE.fullmatch(inj.secret) or ".." in inj.secret:
        raise RequestRejected("bad_secret_name", "secret names are [A-Za-z0-9_.-], no '/'")
    if not _FIELD_NAME_RE.fullmatch(inj.field):
        raise RequestRejected("bad_secret_name", "secret field names are [A-Za-z0-9_.-]")
    allowed = {h.lower() for h in policy.inject_headers}
    if inj.header.lower() not in allowed:
        raise AccessDenied(
            "inject_header_not_allowed", f"header {inj.header[:64]!r} may not carry a secret"
        )
    prefix, found, suffix = inj.format.partition("{value}")
    if not found or "{value}" in suffix or not field_value_ok(f"{prefix}x{suffix}"):
        raise RequestRejected(
            "bad_inject_format",
            "format must contain '{value}' once, in visible ASCII (spaces inside only)",
        )
    return prefix, suffix


# -- the tool ---------------------------------------------------------------------------
class HTTPRequestTool:
    name = NAME
    args_model = HTTPArgs

    def __init__(self, settings: HTTPSettings) -> None:
        self.settings = settings
        self._with_secret: dict[str, frozenset[str]] = {}
        self._trust: ssl.SSLContext | None = None  # without a client cert: built once
        self._allow: dict[str, list[tuple[str, int]]] = {}
        for role, pol in settings.roles.items():
            where = f"tools.{NAME}.roles.{role}"
            self._allow[role] = []
            for pat in pol.allow:
                try:
                    self._allow[role].append(_pattern(pat))
                except RequestRejected:
                    raise ConfigError(
                        f"{where}: destination {pat!r} is not https://host[:port]"
                    ) from None
            inject = {h.lower() for h in pol.inject_headers}
            for h in pol.inject_headers:
                if not _TOKEN_RE.fullmatch(h) or h.lower() in _TRANSPORT | _SHAPING:
                    raise ConfigError(f"{where}: bad inject header {h!r}")
            for h in pol.agent_headers:
                low = h.lower()
                if not _TOKEN_RE.fullmatch(h) or low in _TRANSPORT | _SHAPING | inject:
                    raise ConfigError(
                        f"{where}: agent header {h!r} may not be set next to a secret",
                        fix="agent_headers may not frame the request, ask for a part, a "
                        "charset or an encoding of the answer, or carry a secret",
                    )
            agent = {h.lower() for h in pol.agent_headers}
            self._with_secret[role] = frozenset((SAFE_WITH_SECRET | agent) - inject)

    # -- the call --------------------------------------------------------------------
    def run(self, ctx: ToolContext, args: HTTPArgs) -> dict[str, Any]:
        s = self.settings
        c = ctx.claims
        policy = s.roles.get(c.agent_role)
        if policy is None:
            raise AccessDenied("http_not_allowed", "this agent role may not make HTTP requests")
        # 1. Every argument, before anything is read or issued.
        dest = parse_url(args.url)
        if not _matches(dest.host, dest.port, self._allow[c.agent_role]):
            raise AccessDenied(
                "destination_not_allowed", f"{dest.host}:{dest.port} is not an allowed destination"
            )
        body = (args.body or "").encode()
        if len(body) > s.max_request_bytes:
            raise RequestRejected(
                "body_too_large",
                f"the request body exceeds {s.max_request_bytes} bytes",
                status=413,
            )
        inj = args.inject
        headers = check_headers(
            args.headers,
            secret_header=inj.header if inj is not None else None,
            allowed=self._with_secret.get(c.agent_role, SAFE_WITH_SECRET),
            max_count=s.max_headers,
            max_bytes=s.max_header_bytes,
        )
        write = None
        if args.client_cert:
            if not policy.client_cert:
                raise AccessDenied("client_cert_not_allowed", "this agent role has no client cert")
            write = getattr(ctx, "write_secret", None)
            if write is None:
                raise BackendUnavailable(
                    "client_cert_unsupported",
                    "this gateway cannot issue certificates (no ToolContext.write_secret)",
                    status=501,
                )
        prefix, suffix = _check_injection(inj, policy) if inj is not None else ("", "")

        # 2. The credentials.
        secrets_out: list[bytes] = []
        key_pem = b""
        try:
            if inj is not None:
                value = self._read_injected(ctx, inj)
                headers[inj.header] = prefix + value + suffix
                secrets_out.append(value.encode())
            cert_pem = b""
            if write is not None:
                cert_pem, key_pem = self._issue_cert(ctx, write)
            verify = self._ssl_context(cert_pem, key_pem)
            redactor = Redactor(secrets_out, private_keys=[key_pem] if key_pem else [])
            return self._send(args.method, dest, headers, body, verify, redactor)
        finally:
            key_pem = b""
            secrets_out.clear()
            headers.clear()

    def _read_injected(self, ctx: ToolContext, inj: Injection) -> str:
        c = ctx.claims
        rel = self.settings.kv_path_template.format(tenant=c.tenant, agent=c.agent, name=inj.secret)
        lease = ctx.read_secret(f"{self.settings.kv_mount}/data/{rel}")
        data = lease.data.get("data")
        value = data.get(inj.field) if isinstance(data, Mapping) else None
        if not isinstance(value, str) or not value:
            raise RequestRejected(
                "secret_field_missing", f"the secret has no string field {inj.field[:64]!r}"
            )
        if not field_value_ok(value):
            raise RequestRejected(
                "secret_not_a_header",
                "the secret cannot go in a header (visible ASCII, spaces inside only)",
            )
        if len(value) < MIN_SECRET_BYTES:
            raise RequestRejected(
                "secret_too_short",
                f"secrets shorter than {MIN_SECRET_BYTES} characters are not injected: "
                "they could not be told apart from ordinary text in the answer",
            )
        return value

    def _issue_cert(self, ctx: ToolContext, write: Any) -> tuple[bytes, bytes]:
        s, c = self.settings, ctx.claims
        role = s.pki_role_template.format(tenant=c.tenant, agent_role=c.agent_role)
        san = s.uri_san_template.format(tenant=c.tenant, agent=c.agent, agent_role=c.agent_role)
        lease = write(
            f"{s.pki_mount}/issue/{role}",
            {"uri_sans": san, "ttl": s.cert_ttl, "format": "pem", "private_key_format": "pkcs8"},
        )
        data = dict(lease.data)
        cert = str(data.pop("certificate", ""))
        key = str(data.pop("private_key", ""))
        chain = data.pop("ca_chain", None) or [data.pop("issuing_ca", "")]
        data.clear()
        if not cert or not key:
            raise BackendUnavailable("openbao_error", "OpenBao returned no certificate")
        full = "\n".join([cert, *(str(x) for x in chain if x and str(x) not in cert)])
        return full.encode(), key.encode()

    def _ssl_context(self, cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
        """The trust store alone is read once and shared; a client cert needs its own."""
        if not cert_pem and self._trust is not None:
            return self._trust
        s = self.settings
        ctx = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if not cert_pem:
            self._trust = ctx
        else:
            try:
                load_chain_from_memory(ctx, cert_pem, key_pem)
            except NoMemoryFiles:
                raise BackendUnavailable(
                    "client_cert_unsupported", "client certificates need Linux memfd", status=501
                ) from None
            except ssl.SSLError:
                raise BackendUnavailable(
                    "openbao_error", "OpenBao returned an unusable certificate", status=502
                ) from None
        return ctx

    def _send(
        self,
        method: str,
        dest: Destination,
        headers: dict[str, str],
        body: bytes,
        verify: ssl.SSLContext,
        redactor: Redactor,
    ) -> dict[str, Any]:
        s = self.settings
        limit = s.max_response_bytes
        # Decode past the limit by the longest possible match, so that a reflected
        # secret straddling the limit is whole when it is looked for.
        want = limit + (redactor.max_match if redactor else 0)
        raw_cap = want + 65_536
        deadline = time.monotonic() + s.deadline
        sent = {**headers, "Accept-Encoding": ACCEPT_ENCODING}
        try:
            with (
                httpx.Client(
                    verify=verify, timeout=s.timeout, follow_redirects=False, trust_env=False
                ) as client,
                client.stream(method, dest.url, headers=sent, content=body) as resp,
            ):
                coding = coding_of(resp.headers.get_list("content-encoding"))
                decoder = BoundedDecoder(coding, want)
                raw_read = 0
                for chunk in resp.iter_raw():
                    raw_read += len(chunk)
                    decoder.feed(chunk)
                    if decoder.more or raw_read > raw_cap:
                        break
                    if time.monotonic() > deadline:
                        raise BackendUnavailable(
                            "http_timeout", "the destination did not answer in time", status=504
                        )
                status = resp.status_code
                raw_headers = list(resp.headers.raw)
        except httpx.TimeoutException:
            raise BackendUnavailable(
                "http_timeout", "the destination did not answer in time", status=504
            ) from None
        except (UnsupportedCoding, CorruptCoding):
            raise BackendUnavailable(
                "http_bad_encoding",
                f"the destination answered in a content coding the gateway does not decode "
                f"(it asks for {ACCEPT_ENCODING}; gzip and deflate are decoded)",
                status=502,
            ) from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise BackendUnavailable(
                "http_unavailable",
                f"the request failed ({type(exc).__name__}; TLS or connection)",
                status=502,
            ) from None
        data = bytes(decoder.output)
        truncated = decoder.more or raw_read > raw_cap or len(data) > limit
        out = redactor.redact(data, limit) if redactor else data[:limit]
        try:
            text, encoding = out.decode(), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(out).decode(), "base64"
        # A compressed answer's length says how well the secret compressed next to
        # what the agent had reflected with it (BREACH): it is not returned.
        dropped = {b"set-cookie"} | ({b"content-length", b"content-encoding"} if coding else set())
        out_headers = [
            [_header_text(redactor, k).lower(), _header_text(redactor, v)]
            for k, v in raw_headers
            if k.lower() not in dropped
        ]
        return {
            "status": status,
            "headers": out_headers,
            "body": text,
            "body_encoding": encoding,
            "truncated": truncated,
        }


def _header_text(redactor: Redactor, raw: bytes) -> str:
    if redactor:
        raw = redactor.redact(raw)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def quiet_wire_loggers() -> None:
    """Stop httpcore's DEBUG wire traces: they print response headers verbatim, and a
    destination may echo an injected secret in one (the body is redacted, the trace
    would not be). Raising the parent logger silences every ``httpcore.*`` child."""
    quiet_loggers("httpcore", "hpack")


def factory(config: GatewayConfig) -> HTTPRequestTool:
    quiet_wire_loggers()
    return HTTPRequestTool(tool_settings(config, NAME, HTTPSettings))
