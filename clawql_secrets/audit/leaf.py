"""From a raw audit line to the leaf the log stores: parse, redact, canonicalise. No I/O.

A leaf is one RFC 8785 JSON object:

    {"v": 1, "id": <entry id>, "kind": "entry", "entry": <redacted OpenBao entry>}
    {"v": 1, "id": <entry id>, "kind": <notice>, "size": <bytes>, "detail": <text>}

``id`` is the tailer's stable identity of the line (SHA-256 over stream and
line bytes), so a line read twice (replay after a crash, a rotation re-read)
yields the same id and is dropped by the shipper; it is also how an
investigator ties a leaf back to the node's own audit file. The redacted
entry carries ``"redactions"`` (type and JSON pointer of every redaction,
never the value).

Fail closed: a line that cannot be parsed, redacted or canonicalised becomes
a *notice* leaf recording its kind and size only, so its presence is proven
while none of its bytes (which may hold a secret) are stored. Notices from
the tailer (rotation gaps, truncations, oversized lines) are stored the same
way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

import rfc8785

from clawql_secrets.audit.layout import AuditLimits
from clawql_secrets.audit.redact import Finding, Redactor
from clawql_secrets.audit.tail import EntryKind, RawEntry
from clawql_secrets.errors import InputError

LEAF_VERSION: Final = 1
KIND_ENTRY: Final = "entry"
KIND_UNPARSEABLE: Final = "unparseable"
KIND_UNREDACTABLE: Final = "unredactable"
KIND_TOO_LARGE: Final = "too_large"
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_SAFE_INT_DIGITS = 15  # every integer of up to 15 digits is exact in a double


@dataclass(frozen=True)
class Leaf:
    """A stored leaf: its canonical bytes, identity, kind and what was redacted."""

    data: bytes
    entry_id: str
    kind: str
    findings: tuple[Finding, ...] = ()


class _Numbers:
    """``json.loads`` hooks noting numbers the fast canonical form cannot print."""

    __slots__ = ("exotic",)

    def __init__(self) -> None:
        self.exotic = False

    def parse_float(self, text: str) -> float:
        self.exotic = True
        return float(text)

    def parse_int(self, text: str) -> int:
        if len(text) > _SAFE_INT_DIGITS:
            self.exotic = True
        return int(text)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_audit_line(line: bytes) -> tuple[dict[str, Any], bool]:
    """The JSON object of a line, and whether it holds floats or large integers.

    NaN/Infinity (which Python's decoder accepts) are refused: they are not
    JSON and have no canonical form. Raises ``ValueError`` on anything else
    that is not a JSON object.
    """
    numbers = _Numbers()
    doc = json.loads(
        line,
        parse_float=numbers.parse_float,
        parse_int=numbers.parse_int,
        parse_constant=_refuse_constant,
    )
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc, numbers.exotic


def canonical(doc: Mapping[str, Any], *, exotic_numbers: bool = True) -> bytes:
    """RFC 8785 bytes of ``doc``, by ``json.dumps`` when that is provably identical.

    For strings, booleans, nulls and integers below 2**53, RFC 8785 output is
    ``json.dumps`` with sorted keys, no whitespace and no ASCII escaping:
    same escapes (short forms, ``\\u00xx`` lowercase for other controls),
    same integers. Keys sort by UTF-16 code units in RFC 8785 and by code
    points in Python, which agree unless a character beyond U+FFFF appears.
    Floats, large integers and astral characters go to the ``rfc8785``
    package (about 6x slower). Raises ``InputError`` if ``doc`` has no
    canonical form (lone surrogates, NaN).
    """
    if not exotic_numbers:
        try:
            text = json.dumps(
                doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
            )
            if text.isascii() or _ASTRAL.search(text) is None:
                return text.encode("utf-8")
        except (UnicodeEncodeError, ValueError, TypeError):
            pass  # the slow path reports it
    try:
        data: bytes = rfc8785.dumps(cast(Any, doc))
    except (rfc8785.CanonicalizationError, TypeError, ValueError, RecursionError) as exc:
        raise InputError(f"entry has no canonical JSON form ({type(exc).__name__})") from exc
    return data


def notice(raw: RawEntry, kind: str, detail: str) -> Leaf:
    """A leaf recording that a line existed without storing any of its bytes."""
    doc = {"v": LEAF_VERSION, "id": raw.entry_id, "kind": kind, "size": raw.size, "detail": detail}
    return Leaf(canonical(doc, exotic_numbers=False), raw.entry_id, kind)


def make_leaf(raw: RawEntry, redactor: Redactor, limits: AuditLimits) -> Leaf:
    """The leaf for one tailer entry (see the module docstring). Never raises on content."""
    if raw.kind is not EntryKind.ENTRY:
        return notice(raw, str(raw.kind), raw.detail)
    try:
        doc, exotic = parse_audit_line(raw.line)
    except (ValueError, RecursionError) as exc:
        # The decoder's message can quote input: keep the exception type only.
        return notice(raw, KIND_UNPARSEABLE, f"not a JSON object ({type(exc).__name__})")
    try:
        redacted = redactor.redact(doc)
        leaf_doc = {
            "v": LEAF_VERSION,
            "id": raw.entry_id,
            "kind": KIND_ENTRY,
            "entry": redacted.entry,
        }
        data = canonical(leaf_doc, exotic_numbers=exotic)
    except (InputError, RecursionError) as exc:
        return notice(raw, KIND_UNREDACTABLE, f"cannot be redacted safely ({type(exc).__name__})")
    if len(data) > limits.max_entry_bytes:
        return notice(raw, KIND_TOO_LARGE, f"redacted entry exceeds {limits.max_entry_bytes} bytes")
    return Leaf(data, raw.entry_id, KIND_ENTRY, redacted.findings)


def leaf_id(data: bytes) -> str:
    """The entry id of a stored leaf (for de-duplication on resume)."""
    try:
        doc = json.loads(data)
        value = doc["id"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError("stored leaf has no entry id") from exc
    if not isinstance(value, str):
        raise InputError("stored leaf has no entry id")
    return value
