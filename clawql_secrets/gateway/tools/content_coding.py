"""Undoing an HTTP answer's ``Content-Encoding``, with the output bounded.

The gateway asks destinations for ``identity`` (no content coding). One that
compresses anyway is decoded here, with the standard library, because redaction
must see the plain bytes: ``gzip``/``x-gzip`` (several members too) and
``deflate`` (zlib-wrapped, or raw as some servers send it). The output stops at a
limit however small the input (a zip bomb costs the limit, not its expansion).
Any other coding (``br``, ``zstd``, ``compress``, stacked codings) is refused: it
would hide a reflected secret from redaction, and decoding it needs a dependency.

Pure: bytes in, bytes out.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

SUPPORTED = frozenset({"gzip", "x-gzip", "deflate"})
_GZIP_MAGIC = b"\x1f\x8b"


class UnsupportedCoding(ValueError):
    """The answer's ``Content-Encoding`` is not one the gateway decodes."""


class CorruptCoding(ValueError):
    """The answer's body is not valid in its ``Content-Encoding``."""


def coding_of(values: Iterable[str]) -> str | None:
    """The content coding to undo, from every ``Content-Encoding`` value; ``None`` for
    identity. Raises ``UnsupportedCoding`` for anything else, stacked codings included."""
    tokens = [t.strip().lower() for v in values for t in v.split(",")]
    tokens = [t for t in tokens if t and t != "identity"]
    if not tokens:
        return None
    if len(tokens) > 1:
        raise UnsupportedCoding("stacked content codings")
    if tokens[0] not in SUPPORTED:
        raise UnsupportedCoding("an unsupported content coding")
    return "gzip" if tokens[0] == "x-gzip" else tokens[0]


class BoundedDecoder:
    """Feed raw body bytes; ``output`` holds at most ``limit`` decoded bytes, and ``more``
    says that the body decodes to more than that."""

    def __init__(self, coding: str | None, limit: int) -> None:
        if coding not in (None, "gzip", "deflate"):
            raise UnsupportedCoding("an unsupported content coding")
        self.coding = coding
        self.limit = limit
        self.output = bytearray()
        self.more = False
        self._z: zlib._Decompress | None = None
        self._head = b""  # deflate: the first bytes, until the wrapper is known

    def feed(self, data: bytes) -> None:
        if self.more or not data:
            return
        if self.coding is None:
            room = self.limit - len(self.output)
            self.output += data[:room]
            self.more = len(data) > room
            return
        if self._z is None:
            if self.coding == "gzip":
                self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
            else:
                self._head += data
                if len(self._head) < 2:
                    return
                data, self._head = self._head, b""
                self._z = zlib.decompressobj(
                    zlib.MAX_WBITS if _zlib_header(data) else -zlib.MAX_WBITS
                )
        self._inflate(self._z, data)

    def _inflate(self, z: zlib._Decompress, data: bytes) -> None:
        try:
            while data and not self.more:
                room = self.limit - len(self.output)
                if room <= 0:
                    # Full: only whether one more byte would come.
                    self.more = bool(z.decompress(data, 1))
                    return
                self.output += z.decompress(data, room)
                data = z.unconsumed_tail
                if z.eof:
                    rest = z.unused_data
                    if self.coding != "gzip" or not rest.startswith(_GZIP_MAGIC):
                        return  # trailing bytes after the stream: ignored
                    z = self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    data = rest
        except zlib.error:
            raise CorruptCoding("the body is not valid in its content coding") from None


def _zlib_header(head: bytes) -> bool:
    """Whether ``head`` starts with a zlib (RFC 1950) header, not raw deflate."""
    cmf, flg = head[0], head[1]
    return cmf & 0x0F == 8 and (cmf << 8 | flg) % 31 == 0
