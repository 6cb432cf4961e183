"""``http.request`` against a hostile destination (issue 13, items 7 and 8).

A real HTTPS echo server on loopback reflects the injected header (and, when
told, the client certificate's private key) in every form and framing a
destination can choose: re-encoded (URL, JSON, HTML, hex, base64 at each
alignment, case, UTF-16), compressed (gzip, x-gzip, deflate, and codings the
gateway refuses), chunked with the secret split across chunks, cut at the
response limit, in response headers and the reason phrase, and as a 206 answer
to a ``Range`` request. The secret must never reach the tool's result, bad input
must be refused before any secret is read or certificate issued, and the pure
parts (``reflect``, ``content_coding``, the URL and header grammar) are tested
on their own. The echo server and the recording context are shared with
``test_tools_fuzz.py``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import gzip
import html
import json
import re
import ssl
import threading
import tracemalloc
import urllib.parse
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from clawql_secrets.gateway.errors import AccessDenied, BackendUnavailable, RequestRejected
from clawql_secrets.gateway.jwt_check import SessionClaims
from clawql_secrets.gateway.tools import content_coding, http, reflect
from clawql_secrets.tlsca import LocalCA, load_chain_from_memory

_PEM = Encoding.PEM
SECRET = "Sk-9f8e/7d6c+5b4a_3210 z%41&<>'\"!*()~=Q"
INJECT = {"secret": "api-key", "header": "X-Api-Key"}
Coded = RequestRejected | AccessDenied | BackendUnavailable


# -- a recording ToolContext ----------------------------------------------------------
@dataclass
class Lease:
    lease_id: str = ""
    lease_duration: int = 0
    data: Mapping[str, Any] = field(default_factory=dict)


class RecordingContext:
    """Records every secret read, certificate issued and resource asked for."""

    def __init__(self, ca: LocalCA, role: str = "analyst", secret: str = SECRET) -> None:
        self.claims = SessionClaims("sid1", "acme", "bot", role, "acme/bot", 0, 0, "j")
        self.ca = ca
        self.secret = secret
        self.reads: list[str] = []
        self.writes: list[str] = []
        self.resources: list[str] = []
        self.keys: list[str] = []

    @property
    def touched(self) -> bool:
        return bool(self.reads or self.writes or self.resources)

    def read_secret(self, path: str) -> Lease:
        self.reads.append(path)
        fields = {"value": self.secret, "short": "abc", "crlf": "a\r\nb-long-value", "n": 5}
        return Lease(data={"data": fields})

    def write_secret(self, path: str, body: Mapping[str, Any]) -> Lease:
        self.writes.append(path)
        chain, key = self.ca.issue_pem(
            "agent", uris=(str(body["uri_sans"]),), client=True, lifetime=dt.timedelta(minutes=5)
        )
        self.keys.append(key.decode())
        ca_pem = self.ca.cert.public_bytes(_PEM).decode()
        return Lease(
            "pki/issue/x",
            300,
            {"certificate": chain.decode(), "private_key": key.decode(), "ca_chain": [ca_pem]},
        )

    def resource(self, key: str, create: Callable[[], Any]) -> Any:
        self.resources.append(key)
        return create()


# -- the echo server --------------------------------------------------------------------
def _b64(k: int, urlsafe: bool = False) -> Callable[[bytes], bytes]:
    enc = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    return lambda v: enc(b"x" * k + v + b"!")


FORMS: dict[str, Callable[[bytes], bytes]] = {
    "raw": lambda v: v,
    "upper": lambda v: v.upper(),
    "lower": lambda v: v.lower(),
    "url": lambda v: urllib.parse.quote_from_bytes(v, safe="").encode(),
    "url_lower": lambda v: re.sub(
        rb"%[0-9A-F]{2}",
        lambda m: m.group(0).lower(),
        urllib.parse.quote_from_bytes(v, safe="").encode(),
    ),
    "url_plus": lambda v: urllib.parse.quote_plus(v.decode()).encode(),
    "url_double": lambda v: urllib.parse.quote(
        urllib.parse.quote_from_bytes(v, safe=""), safe=""
    ).encode(),
    "json": lambda v: json.dumps(v.decode()).encode(),
    "json_slash": lambda v: json.dumps(v.decode()).replace("/", "\\/").encode(),
    "json_u": lambda v: "".join(f"\\u{c:04X}" for c in v).encode(),
    "html": lambda v: html.escape(v.decode()).encode(),
    "html_num": lambda v: "".join(f"&#{c};" for c in v).encode(),
    "html_hex": lambda v: "".join(f"&#x{c:x};" for c in v).encode(),
    "hex": lambda v: v.hex().encode(),
    "HEX": lambda v: v.hex().upper().encode(),
    "hex_colon": lambda v: v.hex(":").encode(),
    "hex_escaped": lambda v: "".join(f"\\x{c:02x}" for c in v).encode(),
    "hex_0x": lambda v: ", ".join(f"0x{c:02X}" for c in v).encode(),
    **{f"b64_{k}": _b64(k) for k in range(3)},
    **{f"b64url_{k}": _b64(k, urlsafe=True) for k in range(3)},
    "b64_url_escaped": lambda v: urllib.parse.quote(base64.b64encode(b"?" + v)).encode(),
    "json_of_url": lambda v: json.dumps(urllib.parse.quote(v.decode())).encode(),
}
# Forms with line breaks or NULs: the body only.
BODY_FORMS: dict[str, Callable[[bytes], bytes]] = {
    **FORMS,
    "b64_mime": lambda v: base64.encodebytes(b"q" * 50 + v + b"!"),
    "b64_mime_json": lambda v: json.dumps(base64.encodebytes(b"qq" * 25 + v).decode()).encode(),
    "utf16le": lambda v: v.decode().encode("utf-16-le"),
    "utf16be": lambda v: v.decode().encode("utf-16-be"),
}

# A client private key, as a destination that somehow held it would echo it.
KEY_FORMS: dict[str, Callable[[bytes], bytes]] = {
    "raw": lambda pem: pem,
    "json": lambda pem: json.dumps(pem.decode()).encode(),
    "flat": lambda pem: b"".join(pem.splitlines()[1:-1]),
    "mime": lambda pem: base64.encodebytes(base64.b64decode(b"".join(pem.splitlines()[1:-1]))),
}


def _compress(ce: str, data: bytes) -> bytes:
    if ce in ("gzip", "x-gzip"):
        return gzip.compress(data)
    if ce == "gzip2":  # two gzip members
        half = len(data) // 2
        return gzip.compress(data[:half]) + gzip.compress(data[half:])
    if ce == "deflate":
        return zlib.compress(data)
    if ce == "rawdeflate":
        c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return c.compress(data) + c.flush()
    if ce == "corrupt":
        return b"\x1f\x8b\x08\x00garbage" + data
    return data  # br, zstd, compress, stacked: labelled, not encoded (the tool must refuse)


_CE_HEADER = {"gzip2": "gzip", "rawdeflate": "deflate", "corrupt": "gzip", "stacked": "gzip, br"}
_BOMB = gzip.compress(b"\0" * 20_000_000, compresslevel=9)


class _Handler(BaseHTTPRequestHandler):
    server: EchoServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._answer()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _answer(self, head: bool = False) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        sent_body = self.rfile.read(n) if n else b""
        self.server.record(dict(self.headers.items()))
        q = {
            k: v[-1]
            for k, v in urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).items()
        }
        value = (self.headers.get(q.get("h", "x-api-key")) or "").encode("latin-1")
        name = q.get("form", "raw")
        if q.get("key") and self.server.keys:
            reflected = KEY_FORMS[name](self.server.keys[-1].encode())
        else:
            reflected = BODY_FORMS[name](value)
        doc = {"headers": dict(self.headers.items()), "body": sent_body.decode("latin-1")}
        body = b"p" * int(q.get("pad", 0)) + reflected + b"\n" + json.dumps(doc).encode()
        if q.get("ce") == "bomb":
            payload, ce = _BOMB, "gzip"
        else:
            ce = q.get("ce", "")
            payload = _compress(ce, body)
            ce = _CE_HEADER.get(ce, ce)
        status, reason = 200, "OK"
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", rng or "")
        if m and not ce:
            payload = payload[int(m.group(1)) : int(m.group(2)) + 1]
            status = 206
        if q.get("reason") and name in FORMS:
            reason = "OK " + FORMS[name](value).decode("latin-1")
        self.send_response(status, reason)
        if ce:
            self.send_header("Content-Encoding", ce)
        if q.get("where") in ("header", "both") and name in FORMS:
            self.send_header("X-Echo", FORMS[name](value).decode("latin-1"))
            self.send_header("Location", "/next?t=" + urllib.parse.quote(value))
        chunk = int(q.get("chunk", 0))
        self.send_header("Connection", "close")
        if chunk:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if not head:
                for i in range(0, len(payload), chunk):
                    piece = payload[i : i + chunk]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if not head:
            self.wfile.write(payload)


class EchoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext) -> None:
        self.tls = tls
        self.seen: list[dict[str, str]] = []
        self.keys: list[str] = []
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}"

    def record(self, headers: dict[str, str]) -> None:
        with self._lock:
            self.seen.append(headers)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(10)
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        with conn:
            super().finish_request(conn, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: a client that hangs up early is no test failure."""


@dataclass
class Echo:
    server: EchoServer
    ca: LocalCA
    ca_file: Path

    def tool(self, **overrides: Any) -> http.HTTPRequestTool:
        role = {
            "allow": [self.server.base],
            "client_cert": True,
            "inject_headers": ["X-Api-Key"],
            **overrides.pop("role", {}),
        }
        return http.HTTPRequestTool(
            http.HTTPSettings.model_validate(
                {"roles": {"analyst": role}, "ca_file": str(self.ca_file), **overrides}
            )
        )

    def ctx(self, **kw: Any) -> RecordingContext:
        ctx = RecordingContext(self.ca, **kw)
        ctx.keys = self.server.keys  # what a destination holding the key would echo
        return ctx

    def url(self, path: str = "/", **query: Any) -> str:
        return (
            f"{self.server.base}{path}?{urllib.parse.urlencode(query)}"
            if query
            else (f"{self.server.base}{path}")
        )


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Echo]:
    d = tmp_path_factory.mktemp("echo")
    ca = LocalCA.load_or_create(d / "ca", "echo test CA")
    chain, key = ca.issue_pem(
        "localhost", dns=("localhost",), ips=("127.0.0.1",), server=True, client=False
    )
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_chain_from_memory(tls, chain, key)
    tls.verify_mode = ssl.CERT_OPTIONAL
    tls.load_verify_locations(cadata=ca.cert.public_bytes(_PEM).decode())
    server = EchoServer(tls)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield Echo(server, ca, ca.cert_path)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def call(tool: http.HTTPRequestTool, ctx: RecordingContext, args: dict[str, Any]) -> dict[str, Any]:
    return tool.run(ctx, http.HTTPArgs.model_validate(args))


def refusal(tool: http.HTTPRequestTool, ctx: RecordingContext, args: dict[str, Any]) -> Coded:
    with pytest.raises((RequestRejected, AccessDenied, BackendUnavailable)) as e:
        call(tool, ctx, args)
    assert isinstance(e.value, Coded)
    return e.value


# -- an independent leak detector ------------------------------------------------------
_B64_RUN = re.compile(rb"[A-Za-z0-9+/_=-]{12,}")
_HEX_RUN = re.compile(rb"[0-9a-fA-F]{16,}")


def _decodings(text: bytes) -> Iterator[bytes]:
    """``text`` under every decoding below, so that a form of the secret shows raw."""
    flat = re.sub(rb"\\[nrt]|\s", b"", text)
    yield text
    for t in (text, flat):
        once = urllib.parse.unquote_to_bytes(t)
        yield once
        yield urllib.parse.unquote_to_bytes(once)
        yield urllib.parse.unquote_to_bytes(t.replace(b"+", b" "))
        yield html.unescape(t.decode("latin-1")).encode("latin-1", "replace")
        yield re.sub(rb"\\u00([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]), t)
        yield t.replace(b"\\/", b"/").replace(b'\\"', b'"')
        yield t.replace(b"\0", b"")
    hexflat = re.sub(rb"\\x|0x|[\s:,]", b"", text)
    for m in _HEX_RUN.finditer(hexflat):
        for off in (0, 1):
            run = m.group(0)[off:]
            yield bytes.fromhex(run[: len(run) // 2 * 2].decode())
    for t in (flat, urllib.parse.unquote_to_bytes(flat), flat.replace(b"\\/", b"/")):
        for m in _B64_RUN.finditer(t.translate(bytes.maketrans(b"-_", b"+/"))):
            run = m.group(0).rstrip(b"=")
            for off in range(4):
                piece = run[off:]
                piece = piece[: len(piece) // 4 * 4]
                with contextlib.suppress(binascii.Error, ValueError):
                    yield base64.b64decode(piece)


def leaks(secret: str, result: Any, window: int = 12) -> list[str]:
    """Pieces of ``secret`` (``window`` characters, any case) found in ``result``."""
    strings: list[str] = []
    stack = [result]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            strings.append(v)
        elif isinstance(v, dict):
            stack += [*v.keys(), *v.values()]
        elif isinstance(v, list):
            stack += v
    text = "\n".join(strings).encode("utf-8", "surrogatepass")
    if isinstance(result, dict) and result.get("body_encoding") == "base64":
        text += b"\n" + base64.b64decode(result["body"])
    raw = secret.encode().lower()
    pieces = {raw[i : i + window] for i in range(len(raw) - window + 1)} or {raw}
    found = []
    for decoded in _decodings(text):
        low = decoded.lower()
        found += [p.decode("latin-1") for p in pieces if p in low]
    return sorted(set(found))


@pytest.mark.parametrize("form", sorted(BODY_FORMS))
def test_leak_detector_sees_every_form(form: str) -> None:
    """The detector the tests rely on finds each form when nothing is redacted."""
    assert leaks(SECRET, {"body": BODY_FORMS[form](SECRET.encode()).decode("latin-1")})


# -- pure: reflect ----------------------------------------------------------------------
_SECRETS = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=8, max_size=40)


@pytest.mark.parametrize("form", sorted(BODY_FORMS))
def test_redactor_covers_every_form(form: str) -> None:
    r = reflect.Redactor([SECRET.encode()])
    data = b"<<" + BODY_FORMS[form](SECRET.encode()) + b">>"
    out = r.redact(data)
    assert reflect.REDACTED in out
    assert out.startswith(b"<<") and out.endswith(b">>")
    assert not leaks(SECRET, {"body": out.decode("latin-1")})


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    secret=_SECRETS,
    form=st.sampled_from(sorted(BODY_FORMS)),
    before=st.binary(max_size=20),
    after=st.binary(max_size=20),
)
def test_redactor_property_any_secret_any_form(
    secret: str, form: str, before: bytes, after: bytes
) -> None:
    data = before + BODY_FORMS[form](secret.encode()) + after
    out = reflect.Redactor([secret.encode()]).redact(data)
    assert not leaks(secret, {"body": out.decode("latin-1")}, window=max(12, len(secret) // 2))


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(data=st.binary(max_size=80) | st.text("%0123456789abcdefxyz", max_size=40).map(str.encode))
def test_fast_url_decode_is_the_replayed_pattern(data: bytes) -> None:
    """The view's fast decoding and the pattern replayed to map offsets agree."""
    assert reflect._url_decode(data) == reflect._URL.pattern.sub(reflect._URL.repl, data)


def test_redactor_split_secret_and_overlaps() -> None:
    r = reflect.Redactor([b"abcdefgh-secret"])
    assert r.redact(b"xxabcdefgh-secretabcdefgh-secret!") == b"xx[redacted]!"
    assert r.redact(b"abcdefgh-secre") == b"abcdefgh-secre"  # not whole: no match


def test_partial_guesses_are_not_an_oracle() -> None:
    """An agent echoing its own guesses must learn nothing from what is redacted."""
    r = reflect.Redactor([SECRET.encode()])
    for k in range(len(SECRET)):
        guess = (SECRET[:k] + "#").encode()
        assert r.redact(guess) == guess


def test_redactor_cut_is_made_after_matching() -> None:
    r = reflect.Redactor([SECRET.encode()])
    for pad in range(990, 1000 + len(SECRET)):
        data = b"p" * pad + SECRET.encode().hex().encode() + b"tail"
        out = r.redact(data, 1000)
        assert not leaks(SECRET, {"body": out.decode()}, window=8), pad


def test_redactor_refuses_short_secrets_and_keys_are_pieces(echo: Echo) -> None:
    with pytest.raises(ValueError):
        reflect.Redactor([b"short"])
    _, key = echo.ca.issue_pem("k", client=True)
    body = b"".join(key.splitlines()[1:-1])
    r = reflect.Redactor([], private_keys=[key])
    for shown in (
        key,
        json.dumps(key.decode()).encode(),
        body,
        base64.encodebytes(base64.b64decode(body)),
    ):
        assert body[:40] not in r.redact(shown).replace(b"\n", b"")


# -- pure: content codings -------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], None),
        (["identity"], None),
        (["GZIP"], "gzip"),
        (["x-gzip"], "gzip"),
        (["deflate"], "deflate"),
        (["identity, gzip"], "gzip"),
    ],
)
def test_content_coding_supported(values: list[str], expected: str | None) -> None:
    assert content_coding.coding_of(values) == expected


@pytest.mark.parametrize("values", [["br"], ["zstd"], ["compress"], ["gzip, gzip"], ["gzip", "br"]])
def test_content_coding_refused(values: list[str]) -> None:
    with pytest.raises(content_coding.UnsupportedCoding):
        content_coding.coding_of(values)


@pytest.mark.parametrize("ce", ["gzip", "gzip2", "deflate", "rawdeflate"])
def test_bounded_decoder(ce: str) -> None:
    data = bytes(range(256)) * 100
    coding = content_coding.coding_of([_CE_HEADER.get(ce, ce)])
    for limit, feed in ((1_000_000, 7), (1000, 3), (1000, 100_000)):
        d = content_coding.BoundedDecoder(coding, limit)
        raw = _compress(ce, data)
        for i in range(0, len(raw), feed):
            d.feed(raw[i : i + feed])
        assert bytes(d.output) == data[:limit]
        assert d.more is (limit < len(data))


def test_bounded_decoder_zip_bomb_costs_the_limit() -> None:
    d = content_coding.BoundedDecoder("gzip", 4096)
    tracemalloc.start()
    try:
        d.feed(_BOMB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(d.output) == 4096 and d.more
    assert peak < 2_000_000  # the input itself is ~20 kB; 20 MB were never made


def test_bounded_decoder_corrupt() -> None:
    d = content_coding.BoundedDecoder("gzip", 4096)
    with pytest.raises(content_coding.CorruptCoding):
        d.feed(b"\x1f\x8b\x08\x00 not gzip at all, not at all")


# -- pure: URL and header grammar (item 8) ----------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "https://x.example/a\tb",  # tab: urlsplit would silently drop it
        "https://x.example/\r\nHost: evil",
        "https://x.example/a b",
        "https://x.example/é",
        "https://x.example\\@evil.example/",
        "https://x.example/%zz",
        "https://x.example/a%",
        "https://u@x.example/",
        "https://x.example:0/",
        "https://x.example:99999/",
        "https://127.1/",  # resolvers read 127.0.0.1
        "https://0x7f.0.0.1/",
        "https://[::1%25eth0]/",
        "https://x..example/",
        "https://-x.example/",
        "https://x.example/[a]",
        "http://x.example/",
        "https:x.example",
        "HTTPS://x.example/\x00",
    ],
)
def test_regression_bad_url_is_bad_url(url: str) -> None:
    with pytest.raises(RequestRejected) as e:
        http.parse_url(url)
    assert e.value.code == "bad_url" and e.value.status == 400


@pytest.mark.parametrize(
    ("url", "host", "port", "sent"),
    [
        ("https://X.Example./p?q=1#frag", "x.example", 443, "https://x.example./p?q=1"),
        ("https://127.0.0.1:8443/", "127.0.0.1", 8443, "https://127.0.0.1:8443/"),
        ("https://[::1]:9/x", "::1", 9, "https://[::1]:9/x"),
        ("https://xn--nxasmq6b.example/", "xn--nxasmq6b.example", 443, None),
        ("https://x.example/%2F%41?a=%20&b=c+d", "x.example", 443, None),
    ],
)
def test_url_parsed_strictly(url: str, host: str, port: int, sent: str | None) -> None:
    d = http.parse_url(url)
    assert (d.host, d.port) == (host, port)
    assert str(d.url) == (sent or url)


_BAD_HEADERS: list[tuple[str, dict[str, str]]] = [
    ("crlf in value", {"X-A": "a\r\nB: c"}),
    ("lf in value", {"X-A": "a\nb"}),
    ("nul in value", {"X-A": "a\0b"}),
    ("non-ascii value", {"X-A": "café"}),
    ("leading space", {"X-A": " a"}),
    ("colon in name", {"X-A:": "a"}),
    ("space in name", {"X A": "a"}),
    ("non-ascii name", {"X-É": "a"}),
    ("long name", {"X" * 65: "a"}),
    ("long value", {"X-A": "a" * 8193}),
    ("twice", {"X-A": "a", "x-a": "b"}),
    ("host", {"Host": "evil"}),
    ("accept-encoding", {"Accept-Encoding": "br"}),
    ("te", {"TE": "trailers"}),
    ("transfer-encoding", {"Transfer-Encoding": "chunked"}),
    ("content-encoding", {"Content-Encoding": "gzip"}),
]


@pytest.mark.parametrize(("why", "headers"), _BAD_HEADERS, ids=[w for w, _ in _BAD_HEADERS])
def test_regression_bad_header_before_any_read(
    echo: Echo, why: str, headers: dict[str, str]
) -> None:
    ctx = echo.ctx()
    err = refusal(echo.tool(), ctx, {"url": echo.url(), "headers": headers, "client_cert": True})
    assert (err.code, err.status) == ("bad_header", 400), why
    assert not ctx.touched


_BAD_CALLS: list[tuple[str, dict[str, Any], str]] = [
    ("tab in url", {"url": "https://127.0.0.1:1/a\tb"}, "bad_url"),
    ("crlf in url", {"url": "https://127.0.0.1:1/a\r\nb"}, "bad_url"),
    (
        "non-ascii inject format",
        {"inject": {**INJECT, "format": "Bearér {value}"}},
        "bad_inject_format",
    ),
    (
        "crlf inject format",
        {"inject": {**INJECT, "format": "{value}\r\nX-B: c"}},
        "bad_inject_format",
    ),
    ("two values", {"inject": {**INJECT, "format": "{value}{value}"}}, "bad_inject_format"),
    ("field traversal", {"inject": {**INJECT, "field": "../x"}}, "bad_secret_name"),
    ("non-ascii secret", {"inject": {**INJECT, "secret": "ключ"}}, "bad_secret_name"),
    (
        "header not allowed",
        {"inject": {**INJECT, "header": "X-Other"}},
        "inject_header_not_allowed",
    ),
    (
        "non-token inject header",
        {"inject": {**INJECT, "header": "X Api"}},
        "inject_header_not_allowed",
    ),
]


@pytest.mark.parametrize(("why", "extra", "code"), _BAD_CALLS, ids=[w for w, _, _ in _BAD_CALLS])
def test_regression_bad_input_is_4xx_before_any_secret(
    echo: Echo, why: str, extra: dict[str, Any], code: str
) -> None:
    """Issue 13 item 8: these answered 500 after the KV read and a certificate."""
    ctx = echo.ctx()
    args = {"url": echo.url(), "client_cert": True, "inject": INJECT, **extra}
    err = refusal(echo.tool(), ctx, args)
    assert err.code == code and err.status < 500, why
    assert not ctx.touched


def test_regression_surrogate_body_is_invalid_arguments() -> None:
    with pytest.raises(ValidationError):
        http.HTTPArgs.model_validate({"url": "https://x.example/", "body": "a\ud800"})


def test_config_refuses_shaping_agent_headers(echo: Echo) -> None:
    from clawql_secrets.errors import ConfigError

    for bad in ("Range", "accept-charset", "Accept-Encoding", "X-Api-Key"):
        with pytest.raises(ConfigError):
            echo.tool(role={"agent_headers": [bad]})
    with pytest.raises(ConfigError):
        echo.tool(role={"inject_headers": ["Range"]})


# -- item 7: the secret never comes back -------------------------------------------------
@pytest.mark.parametrize(
    "header",
    ["Range", "If-Range", "Accept-Encoding", "TE", "Accept-Charset", "Content-Encoding", "Cookie"],
)
def test_regression_shaping_headers_refused_with_a_secret(echo: Echo, header: str) -> None:
    """Range let an agent read an echoed secret piece by piece; x-gzip hid it."""
    ctx = echo.ctx()
    args = {"url": echo.url(), "inject": INJECT, "headers": {header: "bytes=0-3"}}
    err = refusal(echo.tool(), ctx, args)
    assert (err.code, err.status) == ("bad_header", 400)
    assert not ctx.touched


def test_safe_and_configured_headers_allowed_with_a_secret(echo: Echo) -> None:
    tool = echo.tool(role={"agent_headers": ["X-Trace"]})
    headers = {"Accept": "application/json", "User-Agent": "agent/1", "X-Trace": "t1"}
    res = call(tool, echo.ctx(), {"url": echo.url(), "inject": INJECT, "headers": headers})
    assert res["status"] == 200
    seen = echo.server.seen[-1]
    assert seen["X-Trace"] == "t1" and seen["Accept-Encoding"] == "identity"
    assert seen["X-Api-Key"] == SECRET
    assert not leaks(SECRET, res)


def test_range_allowed_without_a_secret(echo: Echo) -> None:
    ctx = echo.ctx()
    res = call(echo.tool(), ctx, {"url": echo.url(), "headers": {"Range": "bytes=0-9"}})
    assert res["status"] == 206 and res["body"] == "\n" + '{"headers'[:9]
    assert ctx.reads == []


def test_regression_gateway_asks_for_identity(echo: Echo) -> None:
    call(echo.tool(), echo.ctx(), {"url": echo.url(), "inject": INJECT})
    assert echo.server.seen[-1]["Accept-Encoding"] == "identity"


@pytest.mark.parametrize("form", sorted(BODY_FORMS))
def test_regression_reflected_forms_never_returned(echo: Echo, form: str) -> None:
    where = "both" if form in FORMS else "body"
    res = call(
        echo.tool(),
        echo.ctx(),
        {"url": echo.url("/echo", form=form, where=where, reason=1), "inject": INJECT},
    )
    assert res["status"] == 200
    assert "[redacted]" in res["body"] or res["body_encoding"] == "base64"
    assert not leaks(SECRET, res), form
    if where == "both":
        assert any(k == "x-echo" and "[redacted]" in v for k, v in res["headers"])


@pytest.mark.parametrize("ce", ["gzip", "x-gzip", "gzip2", "deflate", "rawdeflate"])
@pytest.mark.parametrize("form", ["raw", "b64_1", "url", "hex"])
def test_regression_compressed_echo_decoded_then_redacted(echo: Echo, ce: str, form: str) -> None:
    res = call(echo.tool(), echo.ctx(), {"url": echo.url(ce=ce, form=form), "inject": INJECT})
    assert res["status"] == 200 and res["body_encoding"] == "utf-8"
    assert res["body"].startswith("[redacted]") and '"headers"' in res["body"]
    assert not leaks(SECRET, res)
    # The compressed length would tell how well the secret compressed next to what the
    # agent had reflected with it (BREACH).
    assert not {"content-length", "content-encoding"} & {k for k, _ in res["headers"]}


@pytest.mark.parametrize("ce", ["br", "zstd", "compress", "stacked", "corrupt"])
def test_regression_unsupported_encoding_refused(echo: Echo, ce: str) -> None:
    ctx = echo.ctx()
    err = refusal(echo.tool(), ctx, {"url": echo.url(ce=ce), "inject": INJECT})
    assert (err.code, err.status) == ("http_bad_encoding", 502)
    assert SECRET not in str(err)


def test_regression_zip_bomb_is_cut_at_the_limit(echo: Echo) -> None:
    tool = echo.tool(max_response_bytes=4096)
    tracemalloc.start()
    try:
        res = call(tool, echo.ctx(), {"url": echo.url(ce="bomb"), "inject": INJECT})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res["truncated"] is True and res["body"] == "\0" * 4096
    assert peak < 8_000_000


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_regression_secret_split_across_chunks(echo: Echo, chunk: int) -> None:
    for form in ("raw", "b64_2", "json_u"):
        url = echo.url(chunk=chunk, form=form, pad=5)
        res = call(echo.tool(), echo.ctx(), {"url": url, "inject": INJECT})
        assert res["body"].startswith("ppppp[redacted]") and not leaks(SECRET, res)


@pytest.mark.parametrize("form", ["raw", "url", "hex_colon", "b64_1", "json_u"])
def test_regression_secret_straddling_the_limit(echo: Echo, form: str) -> None:
    tool = echo.tool(max_response_bytes=1024)
    width = len(BODY_FORMS[form](SECRET.encode()))
    for pad in range(1024 - width - 1, 1025, max(1, width // 7)):
        res = call(tool, echo.ctx(), {"url": echo.url(form=form, pad=pad), "inject": INJECT})
        assert res["truncated"] is True
        assert not leaks(SECRET, res, window=6), (form, pad)


def test_regression_private_key_reflected(echo: Echo) -> None:
    for form in KEY_FORMS:
        ctx = echo.ctx()
        res = call(echo.tool(), ctx, {"url": echo.url(key=1, form=form), "client_cert": True})
        key = ctx.keys[-1]
        body = "".join(key.splitlines()[1:-1])
        assert ctx.writes and not leaks(body, res, window=24), form


def test_head_and_status_only(echo: Echo) -> None:
    res = call(echo.tool(), echo.ctx(), {"url": echo.url(), "method": "HEAD", "inject": INJECT})
    assert (res["status"], res["body"]) == (200, "")
