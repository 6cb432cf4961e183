"""Finding a credential the destination sends back, in the forms it takes on the way.

A destination can reflect what the gateway sent it (an echo service, an error
page that quotes the request, a debug endpoint) and can re-encode it on the way:
URL- or JSON-escape it, base64 it inside a longer value, hex-dump it, change its
case. The gateway redacts every form below from the whole (bounded) answer before
the agent sees it. For each secret (bytes), matched ASCII-case-insensitively
(a superset of each exact form: more is redacted, never less):

- text, character by character, any mix of: the character itself; ``%HH`` and
  ``%25HH`` (URL-encoding, also double); ``+`` for a space; JSON ``\\u00HH`` and
  ``\\/ \\" \\\\``; HTML ``&#NN;``, ``&#xHH;`` and the five named entities; a NUL
  between characters (UTF-16, either byte order);
- hex of the bytes: any case, ``\\x`` or ``0x`` per byte, spaces, ``: , . -`` or
  escaped line breaks between bytes;
- base64 and base64url of the bytes at each of the three alignments the secret can
  have inside a longer base64 stream (offset 0, 1, 2 mod 3), line breaks allowed
  between characters, ``+ / =`` also URL-escaped and ``/`` JSON-escaped. The
  characters next to a base64 match, which mix secret bits with neighbouring ones,
  are redacted with it;
- a private key: its PEM base64 body, in 64-character pieces (as above, alignment 0).

Only whole forms are matched. Redacting partial matches (a prefix of the secret)
would turn the redaction into an oracle: an agent that can make the destination
echo its own guesses would learn, character by character, how far each guess
matches. What remains (a destination that truncates, splits, hashes, encrypts or
re-encodes the secret some other way) is the residual the destination allow-list
controls; see the threat model.

Pure: bytes in, bytes out.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable

REDACTED = b"[redacted]"
MIN_SECRET_BYTES = 8
"""Shorter values cannot be redacted without redacting ordinary text too."""

# Between two characters of a base64 or hex form: line breaks and spaces (also as
# JSON escapes); bounded so that a match has a known maximum length.
_GAP = rb"(?:\s|\\[nrt]){0,4}+"
_HEX_GAP = rb"(?:[\s:,.\-]|\\[nrt]){0,4}+"
_GAP_MAX = 8
_NUL_GAP = rb"\x00?+"
_B64_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_")
_B64_PAD = (b"=", b"%3d", b"%3D")
_WIDEN = 3  # base64 characters next to a match that still carry secret bits
_NAMED = {
    ord("&"): b"&amp;",
    ord("<"): b"&lt;",
    ord(">"): b"&gt;",
    ord('"'): b"&quot;",
    ord("'"): b"&apos;",
}
_PEM_KEY_RE = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]{0,40})PRIVATE KEY-----(.{1,65536}?)-----END \1PRIVATE KEY-----",
    re.DOTALL,
)


def _text_char(b: int) -> bytes:
    """Every way one character of a text form may be written (at most 9 bytes)."""
    hh = b"%02x" % b
    alts = [
        re.escape(bytes([b])),
        rb"%(?:25)?" + hh,
        rb"\\u00" + hh,
        rb"&#0{0,3}" + str(b).encode() + b";",
        rb"&#x0{0,3}" + hh + b";",
    ]
    if b == 0x20:
        alts.append(rb"\+")
    if b in b'"\\/':
        alts.append(rb"\\" + re.escape(bytes([b])))
    if b in _NAMED:
        alts.append(re.escape(_NAMED[b]))
    return b"(?:" + b"|".join(alts) + b")"


def _text_form(secret: bytes) -> tuple[bytes, int]:
    return _NUL_GAP.join(_text_char(b) for b in secret), len(secret) * 10


def _hex_form(secret: bytes) -> tuple[bytes, int]:
    parts = [rb"(?:\\x|0x)?+" + (b"%02x" % b) for b in secret]
    return _HEX_GAP.join(parts), len(secret) * (4 + _GAP_MAX)


def _b64_char(c: int) -> bytes:
    if c == ord("+"):
        return rb"(?:\+|-|%2B)"
    if c == ord("/"):
        return rb"(?:/|_|%2F|\\/)"
    return re.escape(bytes([c]))


def _b64_form(core: bytes) -> tuple[bytes, int]:
    return _GAP.join(_b64_char(c) for c in core), len(core) * (3 + _GAP_MAX)


def b64_cores(secret: bytes) -> list[bytes]:
    """The base64 characters that depend on ``secret`` alone, for each alignment.

    Inside a longer stream the secret starts at offset 0, 1 or 2 of a 3-byte group.
    Encoding ``a`` filler bytes plus the secret, the first characters also depend on
    the filler (none, 2 or 3 of them) and a trailing partial group keeps only the
    characters made of secret bits (1 of 2, or 2 of 3).
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


class Redactor:
    """Redacts every listed form of some secrets from bytes.

    ``max_match`` bounds the length of one match: a caller that cuts an answer at
    ``limit`` reads ``limit + max_match`` bytes first, so that a secret straddling the
    cut is still whole when it is looked for.
    """

    def __init__(self, secrets: Iterable[bytes], *, private_keys: Iterable[bytes] = ()) -> None:
        text: list[bytes] = []
        b64: list[bytes] = []
        longest = 0
        for s in {bytes(x) for x in secrets}:
            if len(s) < MIN_SECRET_BYTES:
                raise ValueError(f"a secret shorter than {MIN_SECRET_BYTES} bytes")
            for pat, most in (_text_form(s), _hex_form(s)):
                text.append(pat)
                longest = max(longest, most)
            for core in b64_cores(s):
                pat, most = _b64_form(core)
                b64.append(pat)
                longest = max(longest, most + 2 * _WIDEN + 2 * 3)
        for pem in private_keys:
            for piece in pem_key_pieces(pem):
                pat, most = _b64_form(piece)
                b64.append(pat)
                longest = max(longest, most + 2 * _WIDEN + 2 * 3)
        self.max_match = longest
        groups = []
        if text:
            groups.append(b"(?P<t>" + b"|".join(text) + b")")
        if b64:
            groups.append(b"(?P<b>" + b"|".join(b64) + b")")
        self._re = re.compile(b"|".join(groups), re.IGNORECASE) if groups else None

    def __bool__(self) -> bool:
        return self._re is not None

    def spans(self, data: bytes) -> list[tuple[int, int]]:
        """Sorted, merged ``[start, end)`` of every match, overlapping ones included."""
        if self._re is None:
            return []
        found: list[tuple[int, int]] = []
        pos = 0
        while (m := self._re.search(data, pos)) is not None:
            start, end = m.span()
            if m.lastgroup == "b":
                start, end = _widen(data, start, end)
            found.append((start, end))
            pos = m.start() + 1
        found.sort()
        merged: list[tuple[int, int]] = []
        for start, end in found:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        return merged

    def redact(self, data: bytes, limit: int | None = None) -> bytes:
        """``data`` with every match replaced, cut at ``limit`` bytes of ``data``.

        The cut is made in ``data``'s coordinates after matching the whole of it, so a
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
        if self._re is None:
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
