"""Decoding Fluent Bit ``http`` output bodies into audit lines. Pure: no I/O.

What Fluent Bit's ``out_http`` sends (``plugins/out_http/http.c``):

- ``Format json_lines``: ``Content-Type: application/x-ndjson``; one JSON
  object per line, the record plus the time under ``json_date_key``
  (default ``date``), each line ended by ``\\n``.
- ``Format json`` / ``json_stream``: ``Content-Type: application/json``; a
  JSON array of such objects, or objects one after another.
- ``Format msgpack`` (the default): ``Content-Type: application/msgpack``;
  the chunk as stored, i.e. MessagePack objects one after another, each
  ``[timestamp, record]`` or, since Fluent Bit 2.1, ``[[timestamp, metadata],
  record]``; the timestamp is an integer, a float or the EventTime extension
  (type 0, 8 bytes: seconds and nanoseconds, big-endian). A single outer
  array of such entries is accepted too.
- ``compress gzip`` adds ``Content-Encoding: gzip``.

With the ``tail`` input, the audit line (without its newline) is the string
under the ``log`` key of each record. The ``date`` and any other key are
ignored: the OpenBao entry carries its own ``time``.

A body that is not one of these (bad JSON or MessagePack, a record that is
not a map, too many records, too large once decompressed) is refused whole
with a ``BodyError`` naming an HTTP status; nothing of it is stored. A
well-formed record without a string under the log key is *not* an error:
it becomes a record whose ``line`` is ``None``, stored as a notice (kind and
size only), so its existence is proven without storing any of its bytes.
Error messages never quote the body.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any, Final

import msgpack  # type: ignore[import-untyped]

MIME_NDJSON: Final = "application/x-ndjson"
MIME_JSON: Final = "application/json"
MIME_MSGPACK: Final = "application/msgpack"
_EVENT_TIME_EXT: Final = 0


class BodyError(Exception):
    """A body refused whole: ``status`` is the HTTP answer (400, 413, 415)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Record:
    """One Fluent Bit record: the audit line under the log key, or None and the record's bytes."""

    line: bytes | None
    raw: bytes
    """The audit line, or (when ``line`` is None) a canonical encoding of the record for its id."""


@dataclass(frozen=True)
class BodyLimits:
    max_decoded_bytes: int = 64 << 20
    max_records: int = 100_000


def media_type(content_type: str | None) -> str:
    """``application/x-ndjson`` from ``application/x-ndjson; charset=utf-8``."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def decompress(body: bytes, content_encoding: str | None, limits: BodyLimits) -> bytes:
    """The body without its ``gzip`` encoding, refused (413) past ``max_decoded_bytes``."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        if len(body) > limits.max_decoded_bytes:
            raise BodyError(413, "body too large")
        return body
    if encoding != "gzip":
        raise BodyError(415, "unsupported Content-Encoding (gzip or none)")
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(body, limits.max_decoded_bytes + 1)
        if len(out) > limits.max_decoded_bytes or inflater.unconsumed_tail:
            raise BodyError(413, "body too large once decompressed")
        out += inflater.flush()
    except zlib.error as exc:
        raise BodyError(400, "body is not valid gzip") from exc
    if not inflater.eof or inflater.unused_data:
        raise BodyError(400, "body is not one complete gzip stream")
    if len(out) > limits.max_decoded_bytes:
        raise BodyError(413, "body too large once decompressed")
    return out


def decode_body(
    body: bytes,
    content_type: str | None,
    content_encoding: str | None = None,
    *,
    log_key: str = "log",
    limits: BodyLimits | None = None,
) -> list[Record]:
    """The records of a Fluent Bit ``http`` output body (see the module docstring)."""
    limits = limits or BodyLimits()
    data = decompress(body, content_encoding, limits)
    kind = media_type(content_type)
    if kind == MIME_MSGPACK:
        maps = _msgpack_records(data, limits)
    elif kind in (MIME_NDJSON, MIME_JSON):
        maps = _json_records(data, limits)
    else:
        raise BodyError(415, "Content-Type must be application/x-ndjson, json or msgpack")
    return [_record(m, log_key) for m in maps]


def _record(doc: dict[str, Any], log_key: str) -> Record:
    value = doc.get(log_key)
    if isinstance(value, str):
        try:
            text = value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates from JSON escapes: a notice
            pass
        else:
            return Record(text, text)
    elif isinstance(value, bytes):
        return Record(value, value)
    try:
        raw = msgpack.packb(doc, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        raw = repr(sorted(doc)).encode("utf-8", "backslashreplace")
    return Record(None, bytes(raw))


# -- JSON ------------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_records(data: bytes, limits: BodyLimits) -> list[dict[str, Any]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(400, "body is not UTF-8") from exc
    decoder = json.JSONDecoder(parse_constant=_refuse_constant)
    out: list[dict[str, Any]] = []
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos] in " \t\r\n":
            pos += 1
        if pos >= end:
            break
        try:
            doc, pos = decoder.raw_decode(text, pos)
        except (ValueError, RecursionError) as exc:
            # The decoder's message can quote input: give the position only.
            raise BodyError(400, f"body is not JSON lines (error near byte {pos})") from exc
        items = doc if isinstance(doc, list) else [doc]
        for item in items:
            if not isinstance(item, dict):
                raise BodyError(400, "every JSON record must be an object")
            out.append(item)
        if len(out) > limits.max_records:
            raise BodyError(413, f"more than {limits.max_records} records")
    if not out:
        raise BodyError(400, "body holds no record")
    return out


# -- MessagePack -----------------------------------------------------------------


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EVENT_TIME_EXT and len(data) == 8:
        return int.from_bytes(data[:4], "big") + int.from_bytes(data[4:], "big") / 1e9
    return msgpack.ExtType(code, data)


def _is_time(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _event_record(obj: Any) -> dict[str, Any] | None:
    """The record of ``[ts, record]`` or ``[[ts, metadata], record]``; None if not an event."""
    if not isinstance(obj, list) or len(obj) != 2 or not isinstance(obj[1], dict):
        return None
    head = obj[0]
    if _is_time(head):
        return obj[1]
    if (
        isinstance(head, list)
        and len(head) == 2
        and _is_time(head[0])
        and isinstance(head[1], dict)
    ):
        return obj[1]
    return None


def _msgpack_records(data: bytes, limits: BodyLimits) -> list[dict[str, Any]]:
    unpacker = msgpack.Unpacker(
        raw=False,
        strict_map_key=False,
        ext_hook=_ext_hook,
        max_buffer_size=max(len(data), 1),
        max_array_len=limits.max_records * 2 + 2,
        max_map_len=1 << 16,
    )
    unpacker.feed(data)
    out: list[dict[str, Any]] = []
    try:
        for obj in unpacker:
            record = _event_record(obj)
            if record is not None:
                out.append(record)
            elif isinstance(obj, list) and obj and all(_event_record(e) is not None for e in obj):
                out.extend(r for e in obj if (r := _event_record(e)) is not None)
            else:
                raise BodyError(400, "every MessagePack entry must be [timestamp, record]")
            if len(out) > limits.max_records:
                raise BodyError(413, f"more than {limits.max_records} records")
    except BodyError:
        raise
    except (ValueError, TypeError, RecursionError, msgpack.UnpackException) as exc:
        raise BodyError(400, f"body is not MessagePack ({type(exc).__name__})") from exc
    if unpacker.tell() != len(data):
        raise BodyError(400, "body ends inside a MessagePack object")
    if not out:
        raise BodyError(400, "body holds no record")
    for record in out:
        if not all(isinstance(k, str) for k in record):
            raise BodyError(400, "record keys must be strings")
    return out
