"""Where the log keeps things in a WORM store, and how entries are encoded.

Per stream (one per OpenBao node):

    segments/<stream>/<first>-<last>.jsonl   entries first..last, one canonical JSON per line
    checkpoints/<stream>/<size>.txt           signed checkpoint of the first <size> entries

Indexes are zero-padded to 20 digits so a plain listing is in log order, and
names are parsed back strictly: an object whose name does not fit is itself a
sign of tampering. Entries are RFC 8785 canonical JSON, so one audit event has
exactly one byte string and one leaf hash, whoever re-serialises it; canonical
JSON escapes control characters, so a newline can only end an entry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import rfc8785

from clawql_secrets.errors import InputError

SEGMENTS = "segments"
CHECKPOINTS = "checkpoints"
DEFAULT_ORIGIN_PREFIX = "clawql.local/audit"
STREAM_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_STREAM = STREAM_PATTERN
_SEGMENT_NAME = re.compile(rf"{SEGMENTS}/({_STREAM})/([0-9]{{20}})-([0-9]{{20}})\.jsonl")
_CHECKPOINT_NAME = re.compile(rf"{CHECKPOINTS}/({_STREAM})/([0-9]{{20}})\.txt")


@dataclass(frozen=True)
class AuditLimits:
    """Bounds enforced where entries come in (append) and where stored data is read (verify)."""

    max_entry_bytes: int = 256 * 1024
    max_segment_entries: int = 100_000


DEFAULT_LIMITS = AuditLimits()


@dataclass(frozen=True, order=True)
class SegmentName:
    first: int
    last: int
    stream: str

    @property
    def name(self) -> str:
        return f"{SEGMENTS}/{self.stream}/{self.first:020d}-{self.last:020d}.jsonl"

    @property
    def count(self) -> int:
        return self.last - self.first + 1


def check_stream(stream: str) -> str:
    if not re.fullmatch(_STREAM, stream):
        raise InputError(f"invalid stream name {stream!r}: 1-64 of [A-Za-z0-9._-]")
    return stream


def origin(prefix: str, stream: str) -> str:
    """The checkpoint origin line of a stream: one log identity per node."""
    return f"{prefix}/{check_stream(stream)}"


def checkpoint_name(stream: str, size: int) -> str:
    return f"{CHECKPOINTS}/{check_stream(stream)}/{size:020d}.txt"


def parse_segment_name(name: str) -> SegmentName:
    m = _SEGMENT_NAME.fullmatch(name)
    if not m or int(m[2]) > int(m[3]):
        raise InputError(f"{name!r} is not a segment name")
    return SegmentName(int(m[2]), int(m[3]), m[1])


def parse_checkpoint_name(name: str) -> tuple[str, int]:
    m = _CHECKPOINT_NAME.fullmatch(name)
    if not m:
        raise InputError(f"{name!r} is not a checkpoint name")
    return m[1], int(m[2])


def stream_of(name: str) -> str | None:
    """The stream an object under segments/ or checkpoints/ belongs to, if any."""
    parts = name.split("/")
    if len(parts) >= 3 and parts[0] in (SEGMENTS, CHECKPOINTS):
        return parts[1]
    return None


def canonical_entry(entry: Mapping[str, object], limits: AuditLimits) -> bytes:
    """RFC 8785 bytes of one audit entry (a JSON object), bounded in size."""
    if not isinstance(entry, Mapping):
        raise InputError("an audit entry must be a JSON object")
    try:
        data: bytes = rfc8785.dumps(cast(Any, entry))
    except (rfc8785.CanonicalizationError, TypeError, ValueError, RecursionError) as exc:
        raise InputError(f"audit entry is not canonicalisable JSON: {exc}") from exc
    if len(data) > limits.max_entry_bytes:
        raise InputError(f"audit entry of {len(data)} bytes exceeds {limits.max_entry_bytes}")
    return data


def encode_segment(entries: Sequence[bytes]) -> bytes:
    return b"".join(e + b"\n" for e in entries)


def decode_segment(data: bytes) -> list[bytes]:
    """Entries of a segment: non-empty lines, each ended by a newline."""
    if not data.endswith(b"\n"):
        raise InputError("segment does not end with a newline (truncated?)")
    entries = data[:-1].split(b"\n")
    if not all(entries):
        raise InputError("segment contains an empty line")
    return entries
