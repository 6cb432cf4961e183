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
``*.suffix`` for subdomains); redirects are not followed. The response is cut
at a byte limit, and every occurrence of the injected value (raw, as sent, or
base64) in the response headers or body is replaced before it is returned.
"""

from __future__ import annotations

import base64
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field

from clawql_secrets.errors import ConfigError
from clawql_secrets.gateway.config import GatewayConfig
from clawql_secrets.gateway.errors import AccessDenied, BackendUnavailable, RequestRejected
from clawql_secrets.gateway.tools import ToolContext, quiet_loggers, tool_settings
from clawql_secrets.tlsca import NoMemoryFiles, load_chain_from_memory

NAME = "http.request"
REDACTED = "[redacted]"
_SECRET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_HEADER_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
# Headers the agent may not set: they belong to the transport or to injection.
_RESERVED = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer"}
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HTTPRolePolicy(_Strict):
    """What one agent role may reach, and with which credentials."""

    allow: list[str] = Field(min_length=1)
    client_cert: bool = False
    inject_headers: list[str] = []


class HTTPSettings(_Strict):
    roles: dict[str, HTTPRolePolicy] = {}
    ca_file: Path | None = None  # trust for destinations; the system store when unset
    timeout: float = Field(default=10.0, gt=0, le=120)
    max_response_bytes: int = Field(default=1_000_000, ge=1024, le=64_000_000)
    max_request_bytes: int = Field(default=1_000_000, ge=0, le=16_000_000)
    pki_mount: str = "pki_int"
    pki_role_template: str = "{tenant}-{agent_role}"
    uri_san_template: str = "spiffe://clawql/tenant/{tenant}/agent/{agent}"
    cert_ttl: str = "5m"
    kv_mount: str = "secret"
    kv_path_template: str = "tenants/{tenant}/agents/{agent}/{name}"


class Injection(_Strict):
    secret: str = Field(min_length=1, max_length=128)
    field: str = Field(default="value", min_length=1, max_length=128)
    header: str = "Authorization"
    format: str = Field(default="{value}", max_length=256)


class HTTPArgs(_Strict):
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: str = Field(min_length=8, max_length=4096)
    headers: dict[str, str] = {}
    body: str | None = None
    client_cert: bool = False
    inject: Injection | None = None


def _destination(url: str) -> tuple[str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError:
        raise RequestRejected("bad_url", "the URL cannot be parsed") from None
    if parts.scheme != "https":
        raise RequestRejected("bad_url", "only https:// URLs are allowed")
    if parts.username is not None or parts.password is not None or not parts.hostname:
        raise RequestRejected("bad_url", "the URL must name a host and carry no user info")
    return parts.hostname.lower().rstrip("."), port


def _allowed(host: str, port: int, patterns: list[str]) -> bool:
    for pat in patterns:
        p_host, p_port = _destination(pat if "://" in pat else f"https://{pat}")
        if p_port != port:
            continue
        if p_host.startswith("*."):
            if host.endswith(p_host[1:]) and len(host) > len(p_host) - 1:
                return True
        elif host == p_host:
            return True
    return False


class HTTPRequestTool:
    name = NAME
    args_model = HTTPArgs

    def __init__(self, settings: HTTPSettings) -> None:
        self.settings = settings
        for role, pol in settings.roles.items():
            for pat in pol.allow:
                try:
                    _destination(pat if "://" in pat else f"https://{pat}")
                except RequestRejected:
                    raise ConfigError(
                        f"tools.{NAME}.roles.{role}: destination {pat!r} is not https://host[:port]"
                    ) from None
            for h in pol.inject_headers:
                if not _HEADER_RE.fullmatch(h) or h.lower() in _RESERVED:
                    raise ConfigError(f"tools.{NAME}.roles.{role}: bad inject header {h!r}")

    # -- the call --------------------------------------------------------------
    def run(self, ctx: ToolContext, args: HTTPArgs) -> dict[str, Any]:
        s = self.settings
        c = ctx.claims
        policy = s.roles.get(c.agent_role)
        if policy is None:
            raise AccessDenied("http_not_allowed", "this agent role may not make HTTP requests")
        host, port = _destination(args.url)
        if not _allowed(host, port, policy.allow):
            raise AccessDenied(
                "destination_not_allowed", f"{host}:{port} is not an allowed destination"
            )
        body = (args.body or "").encode()
        if len(body) > s.max_request_bytes:
            raise RequestRejected(
                "body_too_large",
                f"the request body exceeds {s.max_request_bytes} bytes",
                status=413,
            )
        headers: dict[str, str] = {}
        for k, v in args.headers.items():
            if not _HEADER_RE.fullmatch(k) or k.lower() in _RESERVED or "\n" in v or "\r" in v:
                raise RequestRejected("bad_header", f"header {k[:64]!r} may not be set")
            headers[k] = v
        if args.client_cert and not policy.client_cert:
            raise AccessDenied("client_cert_not_allowed", "this agent role has no client cert")

        secrets_out: list[str] = []
        try:
            if args.inject is not None:
                secrets_out += self._inject(ctx, args.inject, policy, headers)
            cert_pem, key_pem = self._issue_cert(ctx) if args.client_cert else (b"", b"")
            try:
                verify = self._ssl_context(cert_pem, key_pem)
            finally:
                key_pem = b""
            return self._send(args, headers, body, verify, _needles(secrets_out))
        finally:
            secrets_out.clear()
            headers.clear()

    def _inject(
        self,
        ctx: ToolContext,
        inj: Injection,
        policy: HTTPRolePolicy,
        headers: dict[str, str],
    ) -> list[str]:
        if not _SECRET_NAME_RE.fullmatch(inj.secret) or ".." in inj.secret:
            raise RequestRejected("bad_secret_name", "secret names are [A-Za-z0-9_.-], no '/'")
        allowed = {h.lower() for h in policy.inject_headers}
        if inj.header.lower() not in allowed:
            raise AccessDenied(
                "inject_header_not_allowed", f"header {inj.header[:64]!r} may not carry a secret"
            )
        if inj.format.count("{value}") != 1 or "\n" in inj.format or "\r" in inj.format:
            raise RequestRejected("bad_inject_format", "format must contain '{value}' once")
        c = ctx.claims
        rel = self.settings.kv_path_template.format(tenant=c.tenant, agent=c.agent, name=inj.secret)
        lease = ctx.read_secret(f"{self.settings.kv_mount}/data/{rel}")
        data = lease.data.get("data")
        value = data.get(inj.field) if isinstance(data, Mapping) else None
        if not isinstance(value, str) or not value:
            raise RequestRejected(
                "secret_field_missing", f"the secret has no string field {inj.field[:64]!r}"
            )
        if "\n" in value or "\r" in value:
            raise RequestRejected("secret_not_a_header", "the secret cannot go in a header")
        sent = inj.format.replace("{value}", value)
        for k in [k for k in headers if k.lower() == inj.header.lower()]:
            del headers[k]
        headers[inj.header] = sent
        return [value, sent]

    def _issue_cert(self, ctx: ToolContext) -> tuple[bytes, bytes]:
        write = getattr(ctx, "write_secret", None)
        if write is None:
            raise BackendUnavailable(
                "client_cert_unsupported",
                "this gateway cannot issue certificates (no ToolContext.write_secret)",
                status=501,
            )
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
        s = self.settings
        ctx = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert_pem:
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
        args: HTTPArgs,
        headers: dict[str, str],
        body: bytes,
        verify: ssl.SSLContext,
        needles: list[bytes],
    ) -> dict[str, Any]:
        s = self.settings
        limit = s.max_response_bytes
        # Read past the limit by the longest needle, so that an echoed secret that
        # straddles the limit is still whole when it is redacted.
        pad = max((len(n) for n in needles), default=0)
        try:
            with (
                httpx.Client(verify=verify, timeout=s.timeout, follow_redirects=False) as client,
                client.stream(args.method, args.url, headers=headers, content=body) as resp,
            ):
                buf = bytearray()
                for chunk in resp.iter_bytes():
                    buf += chunk
                    if len(buf) > limit + pad:
                        break
                status = resp.status_code
                out_headers = [
                    [k, v] for k, v in resp.headers.multi_items() if k.lower() != "set-cookie"
                ]
        except httpx.TimeoutException:
            raise BackendUnavailable(
                "http_timeout", "the destination did not answer in time", status=504
            ) from None
        except httpx.HTTPError as exc:
            raise BackendUnavailable(
                "http_unavailable",
                f"the request failed ({type(exc).__name__}; TLS or connection)",
                status=502,
            ) from None
        raw = bytes(buf)
        for n in needles:
            raw = raw.replace(n, REDACTED.encode())
        truncated = len(raw) > limit
        raw = raw[:limit]
        try:
            text, encoding = raw.decode(), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(raw).decode(), "base64"
        for n in needles:
            needle = n.decode()
            out_headers = [
                [k.replace(needle, REDACTED), v.replace(needle, REDACTED)] for k, v in out_headers
            ]
        return {
            "status": status,
            "headers": out_headers,
            "body": text,
            "body_encoding": encoding,
            "truncated": truncated,
        }


def _needles(values: list[str]) -> list[bytes]:
    """Every form of an injected value a destination might echo back, longest first."""
    out: set[bytes] = set()
    for v in values:
        if len(v) >= 4:
            out.add(v.encode())
            out.add(base64.b64encode(v.encode()))
    return sorted(out, key=len, reverse=True)


def quiet_wire_loggers() -> None:
    """Stop httpcore's DEBUG wire traces: they print response headers verbatim, and a
    destination may echo an injected secret in one (the body is redacted, the trace
    would not be). Raising the parent logger silences every ``httpcore.*`` child."""
    quiet_loggers("httpcore", "hpack")


def factory(config: GatewayConfig) -> HTTPRequestTool:
    quiet_wire_loggers()
    return HTTPRequestTool(tool_settings(config, NAME, HTTPSettings))
