"""Finding a credential the destination sends back, in the forms it takes on the way.

A destination can reflect what the gateway sent it (an echo service, an error
page that quotes the request, a debug endpoint) and can re-encode it on the way.
Before the agent sees an answer, the gateway redacts from the whole of it (bounded)
every form below of each secret, ASCII-case-insensitively (a superset of each exact
form: more is redacted, never less):

- raw, and UTF-16 (either byte order);
- text escapes, one or two layers of them in either order: URL ``%HH`` (so also
  ``%25HH``) and ``+`` for a space, JSON ``\\u00HH`` ``\\/`` ``\\"`` ``\\\\``, HTML
  ``&#NN;`` ``&#xHH;`` and the five named entities;
- hex of the bytes, with ``\\x`` or ``0x`` per byte and spaces, ``: , . -`` or
  escaped line breaks between bytes;
- base64 and base64url at each of the three alignments the secret can have inside
  a longer base64 stream (offset 0, 1, 2 mod 3), with line breaks (also escaped)
  between characters, ``+ / =`` URL-escaped and ``/`` JSON-escaped. The
  characters next to a base64 match, which mix secret bits with neighbouring
  ones, go with it;
- a private key: its PEM base64 body, in 64-character pieces (as base64 above).

How: each family has a *view* of the answer (lower-cased, escapes decoded, gaps
removed) made by a few regular-expression passes, and the secret's form in that
family is looked up in it with ``bytes.find``. Only when something is found are the
passes replayed to map the hit back to the answer's own offsets. Nothing is
compiled per secret, so a call pays no set-up, and an answer without a hit costs a
handful of C-speed passes.

Only whole forms are matched. Redacting partial matches (a prefix of the secret)
would turn redaction into an oracle: an agent that can make the destination echo
its own guesses would learn, character by character, how far each guess matches.
What remains (a destination that truncates, splits, hashes, encrypts or encodes the
secret some other way) is the residual the destination allow-list controls; see
the threat model.

Pure: bytes in, bytes out.
"""

from __future__ import annotations

import base64
import binascii
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass

REDACTED = b"[redacted]"
MIN_SECRET_BYTES = 8
"""Shorter values cannot be redacted without redacting ordinary text too."""

# Separators between two characters of a hex or base64 form are removed however
# many there are, but ``max_match`` (what a caller reads past its cut) counts at
# most this many: a form spread wider is found only when it is whole anyway.
_GAP_RUN = 16
_ESCAPE_MAX = 9  # longest text escape of one character (``&#x00041;``)
_WIDEN = 3  # base64 characters next to a match that still carry secret bits
_B64_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_")
_B64_PAD = (b"=", b"%3d", b"%3D")
_PEM_KEY_RE = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]{0,40})PRIVATE KEY-----(.{1,65536}?)-----END \1PRIVATE KEY-----",
    re.DOTALL,
)


# -- views: passes over lower-cased bytes, each replayable to map offsets back ------------
Repl = bytes | Callable[[re.Match[bytes]], bytes]


@dataclass(frozen=True)
class _Pass:
    """One rewrite of the bytes: ``pattern.sub(repl)``, or ``fast`` doing the same faster.

    ``edits`` replays the pattern to map offsets back; it runs only after a hit.
    """

    pattern: re.Pattern[bytes]
    repl: Repl
    fast: Callable[[bytes], bytes] | None = None

    def apply(self, data: bytes) -> bytes:
        if self.fast is not None:
            return self.fast(data)
        return self.pattern.sub(self.repl, data)

    def edits(self, data: bytes) -> list[tuple[int, int, int]]:
        """``(start, end, replacement length)`` of each replaced piece of ``data``."""
        out = []
        for m in self.pattern.finditer(data):
            n = len(self.repl) if isinstance(self.repl, bytes) else len(self.repl(m))
            out.append((m.start(), m.end(), n))
        return out


def _deleting(chars: bytes) -> _Pass:
    """Delete each of ``chars`` (``bytes.translate``, many times faster than ``re.sub``)."""
    return _Pass(
        re.compile(b"[" + re.escape(chars) + b"]+"), b"", lambda d: d.translate(None, chars)
    )


# Text escapes, on lower-cased bytes (so hex digits are lower case), one kind a pass.
_PCT = {b"%02x" % i: bytes([i]).lower() for i in range(256)}


def _url_decode(data: bytes) -> bytes:
    """``%hh`` decoded: the same as ``_URL.pattern.sub``, without a call per escape."""
    first, *rest = data.split(b"%")
    get = _PCT.get
    return first + b"".join([b"%" + p if (ch := get(p[:2])) is None else ch + p[2:] for p in rest])


_URL = _Pass(re.compile(rb"%([0-9a-f]{2})"), lambda m: _PCT[m.group(1)], _url_decode)
_JSON = _Pass(
    re.compile(rb"\\u00([0-9a-f]{2})|\\([/\"\\])"),
    lambda m: _PCT[m.group(1)] if m.group(1) else m.group(2),
)
_NAMED = {b"amp": b"&", b"lt": b"<", b"gt": b">", b"quot": b'"', b"apos": b"'"}


def _html_unescape(m: re.Match[bytes]) -> bytes:
    dec, hx, named = m.groups()
    if dec:
        value = int(dec)
        return bytes([value]).lower() if value < 256 else m.group(0)
    if hx:
        return _PCT[hx.rjust(2, b"0")]
    return _NAMED[named]


_HTML = _Pass(
    re.compile(rb"&#0{0,3}([0-9]{1,3});|&#x0{0,3}([0-9a-f]{1,2});|&(amp|lt|gt|quot|apos);"),
    _html_unescape,
)
_TEXT_PASSES = ((_URL, b"%"), (_JSON, b"\\"), (_HTML, b"&"))
_TEXT_ROUNDS = 2  # escapes inside escapes: double URL-encoding, JSON in a query, ...
# Separators between the characters of a hex or base64 form: escaped line breaks
# (JSON), then whitespace (and for hex ``: , . -``), then the per-byte hex prefixes.
_WS = b" \t\n\r\x0b\x0c"
_ESCAPED_BREAK = _Pass(re.compile(rb"\\[nrt]"), b"")
_HEX_PASSES = (
    _ESCAPED_BREAK,
    _deleting(_WS + b":,.-"),
    _Pass(re.compile(rb"(?:\\x|0x)(?=[0-9a-f]{2})"), b""),
)
_B64_ESCAPES = {b"%2b": b"+", b"%2f": b"/", b"%3d": b"=", b"\\/": b"/"}
_B64_PASSES = (
    _ESCAPED_BREAK,
    _deleting(_WS),
    _Pass(re.compile(rb"%2b|%2f|%3d|\\/"), lambda m: _B64_ESCAPES[m.group(0)]),
)
_URLSAFE = bytes.maketrans(b"-_", b"+/")


class _View:
    """``source`` through some passes; ``source_span`` maps a hit back to ``source``."""

    def __init__(self, source: bytes, passes: Iterable[_Pass] = ()) -> None:
        self.passes: list[_Pass] = []
        self.layers = [source]
        self._maps: list[_BackMap] | None = None
        for p in passes:
            self.passes.append(p)
            self.layers.append(p.apply(self.layers[-1]))

    @property
    def text(self) -> bytes:
        return self.layers[-1]

    def then(self, p: _Pass) -> _View:
        """This view through one more pass (the earlier layers are shared)."""
        view = _View(self.layers[0])
        view.passes = [*self.passes, p]
        view.layers = [*self.layers, p.apply(self.text)]
        return view

    def source_span(self, start: int, end: int) -> tuple[int, int]:
        if self._maps is None:
            sources = self.layers[:-1]
            self._maps = [
                _BackMap(p.edits(src)) for p, src in zip(self.passes, sources, strict=True)
            ]
        for back in reversed(self._maps):
            start, end = back.char(start)[0], back.char(end - 1)[1]
        return start, end


class _BackMap:
    def __init__(self, edits: list[tuple[int, int, int]]) -> None:
        self.edits = edits
        self.outs: list[int] = []
        out = prev = 0
        for start, end, n in edits:
            out += start - prev
            self.outs.append(out)
            out += n
            prev = end

    def char(self, o: int) -> tuple[int, int]:
        """The source bytes ``[start, end)`` that output byte ``o`` came from."""
        i = bisect_right(self.outs, o) - 1
        if i < 0:
            return o, o + 1
        start, end, n = self.edits[i]
        if o < self.outs[i] + n:
            return start, end
        src = end + (o - self.outs[i] - n)
        return src, src + 1


# -- the secret's forms --------------------------------------------------------------------
def b64_cores(secret: bytes) -> list[bytes]:
    """The base64 characters that depend on ``secret`` alone, for each alignment.

    Inside a longer stream the secret starts at offset 0, 1 or 2 of a 3-byte group.
    Encoding ``align`` filler bytes plus the secret, the first characters also depend
    on the filler (none, 2 or 3 of them) and a trailing partial group keeps only the
    characters made of secret bits alone (1 of 2, or 2 of 3).
    """
    cores = []
    for align in range(3):
        full, rem = divmod(align + len(secret), 3)
        start, end = (0, 2, 3)[align], full * 4 + rem
        core = base64.b64encode(b"\0" * align + secret)[start:end]
        if len(core) >= MIN_SECRET_BYTES:
            cores.append(core)
    return cores


def pem_key_pieces(pem: bytes) -> list[bytes]:
    """The base64 body of each PEM private key in ``pem``, in 64-character pieces (a
    last piece shorter than 16 characters is left out: it would match ordinary text)."""
    pieces = []
    for m in _PEM_KEY_RE.finditer(pem):
        body = b"".join(m.group(2).split())
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            continue
        body = body.rstrip(b"=")
        pieces += [body[i : i + 64] for i in range(0, len(body), 64) if len(body) - i >= 16]
    return pieces


def _find_all(haystack: bytes, needle: bytes) -> Iterable[int]:
    i = haystack.find(needle)
    while i >= 0:
        yield i
        i = haystack.find(needle, i + 1)


class Redactor:
    """Redacts every listed form of some secrets from bytes.

    ``max_match`` bounds the length of one match in the answer: a caller that cuts an
    answer at ``limit`` reads ``limit + max_match`` bytes first, so that a secret
    straddling the cut is still whole when it is looked for.
    """

    def __init__(self, secrets: Iterable[bytes], *, private_keys: Iterable[bytes] = ()) -> None:
        text: set[bytes] = set()
        utf16: set[bytes] = set()
        hexes: set[bytes] = set()
        b64: set[bytes] = set()
        longest = 0
        for s in secrets:
            if len(s) < MIN_SECRET_BYTES:
                raise ValueError(f"a secret shorter than {MIN_SECRET_BYTES} bytes")
            low = s.lower()
            text |= {low, low.replace(b" ", b"+")}
            utf16 |= {low.decode("latin-1").encode(c) for c in ("utf-16-le", "utf-16-be")}
            hexes.add(s.hex().encode())
            b64 |= {c.lower().translate(_URLSAFE) for c in b64_cores(s)}
            longest = max(longest, len(s) * max(_ESCAPE_MAX**2, 2 + 2 + 2 * _GAP_RUN))
        for pem in private_keys:
            b64 |= {p.lower().translate(_URLSAFE) for p in pem_key_pieces(pem)}
        if b64:
            widest = max(len(c) for c in b64) * (3 + 2 * _GAP_RUN) + 2 * _WIDEN + 6
            longest = max(longest, widest)
        self._text = sorted(text)
        self._utf16 = sorted(utf16)
        self._hex = sorted(hexes)
        self._b64 = sorted(b64)
        self.max_match = longest

    def __bool__(self) -> bool:
        return bool(self._text or self._b64)

    def spans(self, data: bytes) -> list[tuple[int, int]]:
        """Sorted, merged ``[start, end)`` of every match in ``data``."""
        if not self:
            return []
        found: list[tuple[int, int]] = []
        low = data.lower()
        # 1. raw and UTF-16: the lower-cased answer itself.
        for needle in (*self._text, *self._utf16):
            found += [(i, i + len(needle)) for i in _find_all(low, needle)]
        # 2. text escapes: every sequence of up to two kinds of decoding (one kind
        #    would destroy another's literal characters, so each order is its own view).
        frontier = [_View(low)]
        for _ in range(_TEXT_ROUNDS):
            deeper = []
            for view in frontier:
                for p, trigger in _TEXT_PASSES:
                    if trigger not in view.text:
                        continue
                    seen = view.then(p)
                    deeper.append(seen)
                    for needle in self._text:
                        hits = _find_all(seen.text, needle)
                        found += [seen.source_span(i, i + len(needle)) for i in hits]
            frontier = deeper
        # 3. hex.
        if self._hex:
            view = _View(low, _HEX_PASSES)
            for needle in self._hex:
                found += [
                    view.source_span(i, i + len(needle)) for i in _find_all(view.text, needle)
                ]
        # 4. base64 and base64url, each alignment, and private key pieces.
        view = _View(low, _B64_PASSES)
        b64_text = view.text.translate(_URLSAFE)
        for needle in self._b64:
            for i in _find_all(b64_text, needle):
                found.append(_widen(data, *view.source_span(i, i + len(needle))))
        return _merge(found)

    def redact(self, data: bytes, limit: int | None = None) -> bytes:
        """``data`` with every match replaced, cut at ``limit`` bytes of ``data``.

        The cut is made in ``data``'s offsets after matching the whole of it, so a
        match that crosses the cut is replaced whole and nothing after it is kept.
        """
        cut = len(data) if limit is None else min(limit, len(data))
        out = bytearray()
        pos = 0
        for start, end in self.spans(data):
            if start >= cut:
                break
            out += data[pos:start]
            out += REDACTED
            pos = end
        if pos < cut:
            out += data[pos:cut]
        return bytes(out)

    def redact_text(self, text: str) -> str:
        """``text`` redacted as its UTF-8 bytes (unchanged, and not re-encoded, if clean)."""
        if not self:
            return text
        data = text.encode("utf-8", "surrogatepass")
        if not self.spans(data):
            return text
        return self.redact(data).decode("utf-8", "replace")


def _widen(data: bytes, start: int, end: int) -> tuple[int, int]:
    """Take in up to three base64 characters on each side, and trailing padding."""
    n = 0
    while n < _WIDEN and start > 0 and data[start - 1] in _B64_CHARS:
        start -= 1
        n += 1
    n = 0
    while n < _WIDEN and end < len(data) and data[end] in _B64_CHARS:
        end += 1
        n += 1
    for _ in range(2):
        for pad in _B64_PAD:
            if data.startswith(pad, end):
                end += len(pad)
                break
        else:
            break
    return start, end


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged
