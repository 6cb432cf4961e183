"""Redaction of one parsed OpenBao audit entry, before anything is stored.

The shipped log is permanent and WORM: a secret that reaches it can never be
removed (invariant 1). So redaction is fail-closed and runs in two layers.

1. Structured rules, by field (cheap, exact):

   - ``hmac-sha256:<hex>`` values are kept as they are everywhere: OpenBao
     HMACs tokens, accessors, login JWTs and creds with a per-device key; the
     digest is not reversible and lets investigators correlate entries.
   - A field whose *name* only ever holds a secret (``SECRET_FIELD_NAMES``:
     password, client_token, token, jwt, private_key, secret_key,
     plaintext, ciphertext, recovery keys, authorization headers...)
     has every non-HMAC leaf masked, wherever it appears in the entry. OpenBao
     HMACs most of these itself; this layer covers devices configured with
     ``audit_non_hmac_*_keys`` or ``log_raw``. ``ciphertext`` is masked too:
     the log outlives keys, and a transit ciphertext is the secret once its
     key leaks. ``username`` is kept (dynamic users are named after roles,
     not secret; the password next to it is what matters).
   - Endpoints whose data is secret by nature (``sys/init``, ``sys/unseal``,
     ``sys/rekey``, ``sys/generate-root``, ``sys/wrapping/wrap|unwrap``...):
     all request and response data is masked.
   - KV (and cubbyhole) secret values: under a ``kv`` mount the whole
     ``data.data`` of ``<mount>/data/...`` (v2) or the whole ``data`` of any
     other non-API path (v1) is masked, whatever the key names are. ``list``
     operations and v2 ``metadata``/``delete``/... paths are not masked: they
     carry secret *names* and versions, which investigators need.
   - Everything else is kept as a field: path, operation, mount type and
     accessor, remote address, request/response ids, entity ids, display
     names, policies, auth metadata (role, tenant, agent_role), token type and
     TTL, lease ids, errors. Kept does not mean unscanned: see layer 2.

2. Pattern recognizers on every other string (and dict key), behind the
   pre-filter in ``recognizers``: OpenBao/Vault tokens, JWTs, PEM and
   base64-PEM private keys, GCP service-account keys, AWS key ids and secret
   keys, passwords in URLs, secret-looking key=value pairs. A hit replaces
   the secret (for key=value and URLs: only the value) with
   ``[REDACTED:<type>]``; the string is then re-scanned, and masked whole if
   it still matches, so no output string matches any recognizer.

Decisions on look-alikes (tests name each): UUIDs, SHA-256 hex, HMAC strings,
lease ids (``database/creds/role/<24 chars>``), mount accessors and public
PEM certificates are not secrets and are kept. A 40-character run that could
be an AWS secret key is kept when it sits inside a PEM ``CERTIFICATE`` /
``PUBLIC KEY`` block (certificate lines are base64 too).

Every redaction is recorded in the entry under ``"redactions"`` as
``{"type", "path"}`` (RFC 6901 JSON pointer into the redacted entry), never
with the value or its length. The result is deterministic (same input, same
output: the Merkle leaf depends on it) and the input is never mutated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from clawql_secrets.audit import recognizers
from clawql_secrets.errors import InputError

REDACTIONS_KEY: Final = "redactions"
"""Top-level key of the redacted entry listing what was redacted."""

MASK_KIND_FIELD: Final = "secret_field"
MASK_KIND_KV: Final = "kv_value"
MASK_KIND_SYS: Final = "sys_secret"
MASK_KIND_DEPTH: Final = "too_deep"
MASK_KIND_RESIDUE: Final = "unclassified"
"""Kinds produced by the structured layer and the fail-closed fallbacks."""

_HMAC_VALUE = re.compile(r"hmac-sha256:[0-9a-f]{64}")


def _normalise(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


SECRET_FIELD_NAMES: Final[frozenset[str]] = frozenset(
    _normalise(n)
    for n in (
        # passwords and shared secrets
        "password", "passwd", "passphrase", "secret_key", "secret_access_key",
        "aws_secret_access_key", "client_secret", "secret_id", "otp", "pin",
        "so_pin", "user_pin",
        # tokens
        "token", "client_token", "root_token", "encoded_token", "encoded_root_token",
        "access_token", "refresh_token", "id_token", "auth_token", "session_token",
        "security_token", "jwt", "api_key", "api_token", "x-vault-token",
        "x-bao-token", "authorization", "proxy-authorization", "cookie", "set-cookie",
        # key material ("key"/"keys" alone are too common: see _SYS_SECRET_PATHS)
        "private_key", "private_key_data", "credentials", "keys_base64",
        "recovery_keys", "recovery_keys_base64", "unseal_key", "pem_bundle",
        "plaintext", "ciphertext", "access_key",
    )
)  # fmt: skip
"""Normalised (lower case, no ``_``/``-``) names whose values are always secret.

``secret`` is deliberately absent: ``response.secret`` holds the lease id.
``key``/``keys`` too: KV list responses and transit key reads use them for
names and versions; the unseal-key endpoints are covered by path instead.
"""

_SYS_SECRET_PATHS: Final = (
    "sys/init",
    "sys/unseal",
    "sys/rekey",
    "sys/generate-root",
    "sys/generate-recovery-token",
    "sys/decode-token",
    "sys/wrapping/wrap",
    "sys/wrapping/unwrap",
)
"""Endpoints whose request and response data is secret by nature.

Unseal/recovery key shares and root tokens (key ceremonies), and response
wrapping, whose payload is whatever secret was wrapped.
"""

_KV_MOUNT_TYPES: Final = frozenset({"kv", "cubbyhole"})
_KV2_API_SEGMENTS: Final = frozenset(
    {"metadata", "delete", "undelete", "destroy", "config", "subkeys"}
)
_PUBLIC_PEM = re.compile(
    r"-----BEGIN (?:CERTIFICATE|PUBLIC KEY|X509 CRL|CERTIFICATE REQUEST)-----"
    r"[\s\S]*?(?:-----END [A-Z0-9 ]+-----|\Z)"
)
_MAX_PASSES = 3
_MEMO_MAX_LEN = 96
_MEMO_ENTRIES = 16_384


@dataclass(frozen=True)
class Finding:
    """One redaction: what kind of secret, and where (JSON pointer), never the value."""

    type: str
    path: str

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "path": self.path}


@dataclass(frozen=True)
class RedactedEntry:
    """A redacted copy of an entry (with ``"redactions"`` in it) and its findings."""

    entry: dict[str, Any]
    findings: tuple[Finding, ...]


@dataclass(frozen=True)
class RedactionConfig:
    """Limits of the walk: deeper subtrees are masked whole, not walked.

    Audit entries are ~5 levels deep; request data is caller-controlled and
    could be nested arbitrarily deep to exhaust the stack.
    """

    max_depth: int = 64
    extra_secret_fields: frozenset[str] = field(default_factory=frozenset)


def marker(kind: str) -> str:
    """The text that replaces a secret of this kind."""
    return f"{recognizers.REDACTED_PREFIX}{kind}]"


def _pointer(parent: str, token: str | int) -> str:
    text = str(token).replace("~", "~0").replace("/", "~1")
    return f"{parent}/{text}"


def is_hmac(value: str) -> bool:
    """True for an OpenBao HMAC'd value, which is kept as it is."""
    return _HMAC_VALUE.fullmatch(value) is not None


class Redactor:
    """Redacts audit entries; one instance is reusable and thread-compatible.

    ``use_prefilter=False`` runs Presidio on every string: only for the
    benchmark and the recall test, which compare the two paths.
    """

    def __init__(
        self, config: RedactionConfig | None = None, *, use_prefilter: bool = True
    ) -> None:
        self._config = config or RedactionConfig()
        self._secret_fields = SECRET_FIELD_NAMES | frozenset(
            _normalise(n) for n in self._config.extra_secret_fields
        )
        self._use_prefilter = use_prefilter
        self._analyzer = recognizers.analyzer()
        # Memos of pure functions of short strings: audit entries repeat the
        # same keys and values ("read", "default", mount paths) endlessly.
        self._gate_memo: dict[str, bool] = {}
        self._field_memo: dict[str, bool] = {}

    # -- public -----------------------------------------------------------

    def redact(self, entry: Mapping[str, Any]) -> RedactedEntry:
        """Return a redacted copy of ``entry`` and what was redacted.

        Raises ``InputError`` if the entry is not a JSON object, already has
        a ``"redactions"`` key (OpenBao never writes one; accepting it would
        let the input forge the record), or holds non-JSON values.
        """
        if not isinstance(entry, Mapping):
            raise InputError("an audit entry must be a JSON object")
        if REDACTIONS_KEY in entry:
            raise InputError(f"audit entry already has a {REDACTIONS_KEY!r} key")
        findings: list[Finding] = []
        out = self._walk_dict(entry, "", 0, _secret_subtrees(entry), findings)
        out[REDACTIONS_KEY] = [f.to_json() for f in findings]
        return RedactedEntry(entry=out, findings=tuple(findings))

    def needs_scan(self, text: str) -> bool:
        """The pre-filter: False means no recognizer can match, skip Presidio."""
        if not self._use_prefilter:
            return True
        if len(text) > _MEMO_MAX_LEN:
            return recognizers.PREFILTER.search(text) is not None
        hit = self._gate_memo.get(text)
        if hit is None:
            if len(self._gate_memo) >= _MEMO_ENTRIES:
                self._gate_memo.clear()
            hit = recognizers.PREFILTER.search(text) is not None
            self._gate_memo[text] = hit
        return hit

    def scan_text(self, text: str) -> list[tuple[int, int, str]]:
        """Spans ``(start, end, kind)`` to redact in ``text``: sorted, merged, narrowed."""
        if not self.needs_scan(text):
            return []
        return self._spans(text)

    def presidio_spans(self, text: str) -> list[tuple[int, int, str]]:
        """What Presidio alone finds in ``text``, as ``(start, end, kind)``.

        Spans of key=value and URL findings are narrowed to the value. This is
        the reference the recall test holds the pre-filter to.
        """
        results = self._analyzer.analyze(
            text=text, language=recognizers.LANGUAGE, entities=recognizers.ENTITIES
        )
        spans: list[tuple[int, int, str]] = []
        for r in results:
            kind = recognizers.ENTITY_TO_KIND.get(r.entity_type)
            if kind is not None:
                spans.append((*_narrow(text, r.start, r.end, kind), kind))
        return spans

    # -- walk -------------------------------------------------------------

    def _walk_dict(
        self,
        obj: Mapping[str, Any],
        path: str,
        depth: int,
        subtrees: Mapping[str, str],
        findings: list[Finding],
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise InputError(f"audit entry has a non-string key under {path or '/'}")
            out_key = key
            if self.needs_scan(key) and not is_hmac(key):
                out_key = self._redact_key(key, path, out, findings)
            if self._is_secret_field(key):
                out[out_key] = self._mask(
                    value, _pointer(path, out_key), depth + 1, findings, MASK_KIND_FIELD
                )
                continue
            if subtrees:
                child = _pointer(path, out_key)
                subtree_kind = subtrees.get(child)
                if subtree_kind is not None:
                    out[out_key] = self._mask(value, child, depth + 1, findings, subtree_kind)
                    continue
            out[out_key] = self._value(value, path, out_key, depth + 1, subtrees, findings)
        return out

    def _value(
        self,
        value: Any,
        parent: str,
        token: str | int,
        depth: int,
        subtrees: Mapping[str, str],
        findings: list[Finding],
    ) -> Any:
        kind = type(value)
        if kind is str:
            if not self.needs_scan(value) or is_hmac(value):
                return value
            return self._redact_string(value, _pointer(parent, token), findings)
        if value is None or kind is bool or kind is int or kind is float:
            return value
        path = _pointer(parent, token)
        if isinstance(value, Mapping | list | tuple) and depth > self._config.max_depth:
            findings.append(Finding(MASK_KIND_DEPTH, path))
            return marker(MASK_KIND_DEPTH)
        if isinstance(value, Mapping):
            return self._walk_dict(value, path, depth, subtrees, findings)
        if isinstance(value, list | tuple):
            return [
                self._value(item, path, i, depth + 1, subtrees, findings)
                for i, item in enumerate(value)
            ]
        if isinstance(value, str):
            return self._value(str(value), parent, token, depth, subtrees, findings)
        if isinstance(value, int | float):
            return value
        raise InputError(f"audit entry holds a non-JSON value ({kind.__name__}) at {path}")

    def _mask(
        self, value: Any, path: str, depth: int, findings: list[Finding], mask_kind: str
    ) -> Any:
        """Mask every leaf of a secret subtree; keep HMACs, empties, booleans and nulls."""
        if isinstance(value, str):
            if value == "" or is_hmac(value):
                return value
            findings.append(Finding(mask_kind, path))
            return marker(mask_kind)
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int | float):
            findings.append(Finding(mask_kind, path))
            return marker(mask_kind)
        if depth > self._config.max_depth:
            findings.append(Finding(MASK_KIND_DEPTH, path))
            return marker(MASK_KIND_DEPTH)
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise InputError(f"audit entry has a non-string key under {path}")
                # Key names under a secret field are names, not secrets (KV
                # keys); they are still scanned for secret shapes.
                out_key = key
                if self.needs_scan(key) and not is_hmac(key):
                    out_key = self._redact_key(key, path, out, findings)
                out[out_key] = self._mask(
                    item, _pointer(path, out_key), depth + 1, findings, mask_kind
                )
            return out
        if isinstance(value, list | tuple):
            return [
                self._mask(item, _pointer(path, i), depth + 1, findings, mask_kind)
                for i, item in enumerate(value)
            ]
        raise InputError(f"audit entry holds a non-JSON value ({type(value).__name__}) at {path}")

    def _is_secret_field(self, key: str) -> bool:
        hit = self._field_memo.get(key)
        if hit is None:
            if len(self._field_memo) >= _MEMO_ENTRIES:
                self._field_memo.clear()
            hit = _normalise(key) in self._secret_fields
            self._field_memo[key] = hit
        return hit

    def _redact_key(
        self, key: str, path: str, siblings: Mapping[str, Any], findings: list[Finding]
    ) -> str:
        # Secrets used as map keys (header maps, KV keys) would survive a
        # value-only walk; redacted keys get a suffix if two collapse together.
        spans = self._spans(key)
        redacted = _apply(key, spans) if spans else key
        if _leftover(redacted):
            spans = [(0, len(key), MASK_KIND_RESIDUE)]
            redacted = marker(MASK_KIND_RESIDUE)
        if not spans:
            return key
        candidate, n = redacted, 2
        while candidate in siblings:
            candidate, n = f"{redacted}#{n}", n + 1
        findings.extend(Finding(kind, _pointer(path, candidate)) for _, _, kind in spans)
        return candidate

    # -- strings ----------------------------------------------------------

    def _redact_string(self, text: str, path: str, findings: list[Finding]) -> str:
        current = text
        for _ in range(_MAX_PASSES):
            spans = self._spans(current)
            if spans:
                findings.extend(Finding(kind, path) for _, _, kind in spans)
                current = _apply(current, spans)
            if not _leftover(current):
                return current
            if not spans:
                break
        # Still matching after several passes: give up on precision, not on secrecy.
        findings.append(Finding(MASK_KIND_RESIDUE, path))
        return marker(MASK_KIND_RESIDUE)

    def _spans(self, text: str) -> list[tuple[int, int, str]]:
        spans = self.presidio_spans(text)
        if not spans:
            # Presidio skips a pattern on regex timeout; if an exact pattern
            # matches, redact what it matched rather than let it through.
            spans = _exact_spans(text)
        return _merge(_drop_public_pem(text, spans))


def _apply(text: str, spans: list[tuple[int, int, str]]) -> str:
    """Replace each (sorted, disjoint) span with its marker."""
    parts: list[str] = []
    pos = 0
    for start, end, kind in spans:
        parts.append(text[pos:start])
        parts.append(marker(kind))
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


def _exact_spans(text: str) -> list[tuple[int, int, str]]:
    """Every match of every recognizer pattern, labelled, without Presidio."""
    if recognizers.EXACT.search(text) is None:
        return []
    return [
        (*_narrow(text, m.start(), m.end(), kind), kind)
        for kind, pattern in recognizers.KIND_PATTERNS.items()
        for m in pattern.finditer(text)
    ]


def _leftover(text: str) -> bool:
    """True if a secret shape is still in ``text`` (after redaction)."""
    return bool(_drop_public_pem(text, _exact_spans(text)))


def _narrow(text: str, start: int, end: int, kind: str) -> tuple[int, int]:
    """Shrink a key=value / URL match to its value group; whole match if unsure."""
    patterns = recognizers.VALUE_PATTERNS.get(kind)
    if not patterns:
        return start, end
    for pattern in patterns:
        m = pattern.match(text, start)
        if m is None or m.end() != end:
            continue
        for name in pattern.groupindex:
            group_start, group_end = m.span(name)
            if group_start >= 0:
                return group_start, group_end
    return start, end


def _drop_public_pem(text: str, spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Keep certificate lines that happen to look like a bare AWS secret key."""
    if "-----BEGIN" not in text or not any(k == "aws_secret_access_key" for *_, k in spans):
        return spans
    blocks = [m.span() for m in _PUBLIC_PEM.finditer(text)]
    return [
        (s, e, k)
        for s, e, k in spans
        if k != "aws_secret_access_key" or not any(bs <= s and e <= be for bs, be in blocks)
    ]


def _merge(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Sort and merge overlapping spans; a merged span keeps the earliest, longest kind."""
    ordered = sorted(spans, key=lambda s: (s[0], -(s[1] - s[0]), s[2]))
    merged: list[tuple[int, int, str]] = []
    for start, end, kind in ordered:
        if merged and start < merged[-1][1]:
            ps, pe, pk = merged[-1]
            merged[-1] = (ps, max(pe, end), pk)
        else:
            merged.append((start, end, kind))
    return merged


def _secret_subtrees(entry: Mapping[str, Any]) -> dict[str, str]:
    """JSON pointers whose whole subtree is secret for this entry, with the mask kind.

    Decided from ``request.mount_type``, ``mount_point``, ``path`` and
    ``operation``, which OpenBao always logs in clear.
    """
    request = entry.get("request")
    if not isinstance(request, Mapping):
        return {}
    req_path = request.get("path")
    if not isinstance(req_path, str):
        return {}
    both = ("/request/data", "/response/data")
    if req_path.startswith(_SYS_SECRET_PATHS):
        return dict.fromkeys(both, MASK_KIND_SYS)
    mount_type = request.get("mount_type")
    if mount_type not in _KV_MOUNT_TYPES or request.get("operation") == "list":
        return {}
    mount_point = request.get("mount_point")
    rest = req_path
    if isinstance(mount_point, str) and req_path.startswith(mount_point):
        rest = req_path[len(mount_point) :]
    first = rest.split("/", 1)[0]
    if mount_type == "kv" and first == "data":
        return dict.fromkeys(("/request/data/data", "/response/data/data"), MASK_KIND_KV)
    if mount_type == "kv" and first in _KV2_API_SEGMENTS:
        return {}
    return dict.fromkeys(both, MASK_KIND_KV)
