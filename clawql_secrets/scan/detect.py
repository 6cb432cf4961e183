"""Detection over text: pure, no I/O. Finds where a secret is and what kind, never keeps it.

Three layers, each skipping what an earlier one already claimed:

1. The audit redaction recognizers (``audit.recognizers``: OpenBao/Vault
   tokens, JWTs, PEM and base64-PEM private keys, GCP key files, AWS keys,
   passwords in URLs, secret key=value pairs), behind the same pre-filter,
   plus shapes only a scanner needs (age identities). Audit redaction is
   tuned for recall (masking too much costs nothing); a scan report must
   be actionable, so two precision rules apply here only: an assignment
   whose value is a reference (``${DB_PASSWORD}``, ``$VAR``, ``<...>``) is
   not a credential, and a bare 40-character AWS-secret shape that is
   base64 of text or sits under a public-key name (JWK ``x``) is not one.
2. Entropy of values assigned to secret-looking names (``signing_key:``,
   ``webhook_token=``) the recognizers do not name.
3. Unlabelled long random tokens. Base64 is peeled first: text inside is
   scanned in turn (so base64 of innocuous text is not flagged, base64 of a
   token is), DER inside is parsed (certificates and public keys pass,
   private keys do not). Hex, UUIDs, digests and HMACs are public, and so
   are identifiers told by their context: the value of a name that
   identifies (``sid=``, ``lease_id=``, ``request_id``, ``*_accessor``, the
   name nearest the value counting, so ``lease: lease_id=...`` in a log line
   is a lease id), an OpenBao lease id (``<mount>/creds/<role>/<24
   alphanumerics>``) and a KV v2 API path (``secret/data/<name>/<sid>/...``)
   whose segments are names. Only tokens no earlier rule claimed are
   excused: a service token, password, private key or JWT in the same place
   is still reported.

Public PEM blocks (certificates, public keys, age/PGP armour) are blanked
before any layer runs: their base64 lines are random but not secret.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import re
import string
from dataclasses import dataclass
from typing import Final

from clawql_secrets.audit import recognizers
from clawql_secrets.errors import ClawQLError
from clawql_secrets.scan import entropy
from clawql_secrets.scan.model import ScanConfig

HIGH_ENTROPY_VALUE: Final = "high_entropy_value"
HIGH_ENTROPY_TOKEN: Final = "high_entropy_token"
PRIVATE_KEY_DER: Final = "private_key_der"
AGE_SECRET_KEY: Final = "age_secret_key"
NOTE_PRIVATE_KEY: Final = "note_private_key"

KINDS: Final = (
    *recognizers.KINDS,
    AGE_SECRET_KEY,
    NOTE_PRIVATE_KEY,
    PRIVATE_KEY_DER,
    HIGH_ENTROPY_VALUE,
    HIGH_ENTROPY_TOKEN,
)
"""Every kind of credential the scanner reports."""

EXTRA_PATTERNS: Final[dict[str, re.Pattern[str]]] = {
    # age X25519 identities (Bech32, upper case): the holders' keys.
    AGE_SECRET_KEY: re.compile(r"(?<![A-Z0-9-])AGE-SECRET-KEY-1[02-9AC-HJ-NP-Z]{58}(?![A-Z0-9])"),
    # Go `note` signer keys (audit checkpoint and witness key files in development).
    NOTE_PRIVATE_KEY: re.compile(
        r"PRIVATE\+KEY\+[^\s+]{1,128}\+[0-9a-f]{8}\+[A-Za-z0-9+/]{44}(?![A-Za-z0-9+/=])"
    ),
}

# Armoured blocks that are public (or encrypted): blanked before scanning.
_ARMOUR: Final = re.compile(
    r"-----BEGIN (?P<label>(?:(?!PRIVATE KEY)[A-Z0-9 ]){1,40})-----"
    r"[\s\S]*?-----END (?P=label)-----"
)

# key <sep> value on one line: YAML, JSON, HCL, .env, INI, compose lists.
_PAIR: Final = re.compile(
    r"(?<![A-Za-z0-9_.-])(?P<key>[A-Za-z_][A-Za-z0-9_.-]{0,63})[\"']?[ \t]*(?::=|=>|[:=])"
    r"[ \t]*[\"']?(?P<value>[^\s\"'`,;\[\](){}<>]+)"
)
_TOKEN: Final = re.compile(r"(?<![A-Za-z0-9+/_.-])[A-Za-z0-9+/_-]{16,}={0,2}(?![A-Za-z0-9+/=_.-])")

_SECRET_NAME: Final = re.compile(
    r"secret|token|passw|passphrase|pwd|credential|private|api_?key|access_?key|signing_?key"
    r"|encryption_?key|master_?key|auth|cookie|session|salt|seed|(?:^|[_.-])pin(?:$|[_.-])"
    r"|(?:^|[_.-])key$"
)
_NOT_SECRET_NAME: Final = re.compile(
    r"public|pubkey|(?:^|[_.-])pub$|name$|file$|path$|dir$|url$|uri$|ref$|type$|version$|size$"
    r"|length$|ttl$|mode$|hash$|digest$|fingerprint$|checksum$|id$|ids$|count$|polic|role$"
    r"|format$|kind$|endpoint$|header$|label|annotation|selector|mount|engine|issuer|audience"
    r"|algorithm|alg$|method$|_?at$|expir|time"
)
PUBLIC_NAMES: Final = frozenset(
    {
        "x",
        "y",
        "n",
        "e",
        "x5c",
        "x5t",
        "x5t#s256",
        "kid",
        "crv",
        "kty",
        "alg",
        "use",
        "public_key",
        "publickey",
        "pubkey",
        "pub",
        "public",
        "fingerprint",
        "checksum",
        "digest",
        "sha",
        "sha1",
        "sha256",
        "sha512",
        "hash",
        "integrity",
        "commit",
        "revision",
        "rev",
        "etag",
        "uid",
        "uuid",
        "id",
        "request_id",
        "accessor",
        "sid",
        "jti",
        "ca.crt",
        "tls.crt",
    }
)
"""Names whose values are random but public (JWK members, digests, ids)."""

_REFERENCE: Final = re.compile(
    r"\$\{.*|\$\(.*|\$[A-Za-z_][A-Za-z0-9_]*|\{\{.*|<.*|%\(.*|#\{.*|\*+|x{3,}|X{3,}|\.{3}"
    r"|(?i:none|nil|null|~|-|undefined|redacted|\[redacted.*)"
)
_ALNUM: Final = re.compile(r"[A-Za-z0-9]")
_PUBLIC_PREFIX: Final = re.compile(
    r"hv[sbr]\.|[sbr]\.|eyJ|(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)"
    r"|AGE-SECRET-KEY-1|-----BEGIN[A-Z0-9 ]{0,24} PRIVATE KEY-----|LS0tLS1CRUdJTi"
)
_PREFIX_KINDS: Final = frozenset(
    {"openbao_token", "jwt", "aws_access_key_id", "pem_private_key", AGE_SECRET_KEY}
)


@dataclass(frozen=True)
class Hit:
    """One credential in a text: 1-based line and column, kind, rule, masked preview."""

    line: int
    column: int
    kind: str
    rule: str
    preview: str


@dataclass(frozen=True)
class _Span:
    at: int
    """Where to report it (start of the match)."""
    start: int
    end: int
    """The value's span: what overlaps are judged on."""
    kind: str
    rule: str
    preview: str


def _is_signed_note(text: str) -> bool:
    from clawql_secrets.audit.checkpoint import Checkpoint, SignedNote

    if len(text) > 4096 or "\n\u2014 " not in text:
        return False
    try:
        checkpoint = Checkpoint.parse(SignedNote.parse(text.encode("utf-8")).text)
    except (ClawQLError, ValueError):
        return False
    # Extension lines are free text: a note carrying any is scanned like any file.
    return not checkpoint.extensions


def mask(value: str, kind: str) -> str:
    """A preview that says what it is, never what it holds.

    Only a public prefix (``hvs.``, ``eyJ``, ``AKIA``, the ``BEGIN`` line of
    a PEM key) is kept, and only for kinds whose prefix is a format marker;
    the length is given as a class, not a number.
    """
    prefix = ""
    if kind in _PREFIX_KINDS:
        m = _PUBLIC_PREFIX.match(value)
        if m is not None and m.end() < len(value):
            prefix = m.group(0)
    return f"{prefix}**** ({length_class(len(value))})"


def length_class(n: int) -> str:
    for limit, label in (
        (16, "<16"),
        (32, "16-31"),
        (64, "32-63"),
        (128, "64-127"),
        (1024, "128-1023"),
    ):
        if n < limit:
            return f"{label} chars"
    return "1024+ chars"


def is_reference(value: str) -> bool:
    """``${VAR}``, ``$VAR``, ``{{ .Values.x }}``, ``<password>``, masks: not a credential."""
    return _REFERENCE.fullmatch(value.strip()) is not None


_PUBLIC_NAME_END: Final = re.compile(
    r"(?:^|[_.-])(?:id|uid|uuid|digest|hash|checksum|fingerprint|etag|revision|commit)$"
    r"|public|pubkey"
)
_SECRET_WORD: Final = re.compile(r"secret|token|passw|credential|private|api_?key")
_ACCESSOR: Final = re.compile(r"(?:^|[_.-])accessor$")
"""An OpenBao accessor names a token (lookup, revoke) and cannot authenticate."""


def public_name(key: str) -> bool:
    """True for a name whose value is random but public (``client_id``, JWK ``x``, digests)."""
    k = key.lower()
    if _ACCESSOR.search(k) is not None:
        return True  # ``client_token_accessor``: the token's public handle
    if _SECRET_WORD.search(k):
        return False
    return k in PUBLIC_NAMES or _PUBLIC_NAME_END.search(k) is not None


# OpenBao request paths whose random segments are identifiers. A token can start
# after a port (``https://127.0.0.1:8200/v1/...``) but never after a dotted host
# name, hence the optional port and API version. Mount, role and KV names are
# lower case here (what this project writes); anything else is still judged.
_API_PREFIX = r"(?:[0-9]{1,5}/)?(?:v1/)?"
_NAME = r"[a-z][a-z0-9_-]{0,63}"
LEASE_ID: Final = re.compile(
    # <request path>/<24 base62>[.<namespace id>]: the random part of every lease id.
    _API_PREFIX + rf"(?:{_NAME}/)+(?:creds|sts|issue|sign)/[a-z0-9][a-z0-9_-]{{0,127}}/"
    r"[A-Za-z0-9]{24}(?:\.[A-Za-z0-9]{1,16})?"
)
"""An OpenBao lease id, ``database/creds/acme-analyst-pg_main/<24 alphanumerics>``."""
KV_PATH: Final = re.compile(
    _API_PREFIX + rf"(?:{_NAME}/)+(?:data|metadata|delete|undelete|destroy|subkeys)"
    r"(?:/[A-Za-z0-9_-]{1,64})+"
)
"""A KV v2 API path: its segments name a secret (``secret/data/clawql-anomalies/<sid>/...``)."""
_IDENTIFIER_MAX = 512
_KEY_BEFORE: Final = re.compile(
    r"(?<![A-Za-z0-9_.-])(?P<key>[A-Za-z_][A-Za-z0-9_.-]{0,63})[\"']?[ \t]*(?::=|=>|[:=])"
    r"[ \t]*[\"']?\Z"
)
_RUN_CHARS: Final = frozenset(string.ascii_letters + string.digits + "+/_-")


def identifier_path(value: str) -> bool:
    """An OpenBao lease id or KV v2 API path: random segments that name, not authenticate."""
    return len(value) <= _IDENTIFIER_MAX and (
        LEASE_ID.fullmatch(value) is not None or KV_PATH.fullmatch(value) is not None
    )


def _key_before(text: str, start: int) -> str | None:
    """The name right before the value at ``start`` (``lease_id`` in ``lease: lease_id=v``)."""
    line_start = text.rfind("\n", 0, start) + 1
    m = _KEY_BEFORE.search(text, max(line_start, start - 96), start)
    return m.group("key") if m is not None else None


def _identifier(text: str, start: int, token: str) -> bool:
    """A random token that is an identifier by its context (module docstring)."""
    if identifier_path(token):
        return True
    key = _key_before(text, start)
    return key is not None and public_name(key)


def secret_name(key: str) -> bool:
    """True for a name that holds a secret (``db_password``, ``signing_key``)."""
    k = key.lower()
    return _SECRET_NAME.search(k) is not None and _NOT_SECRET_NAME.search(k) is None


class Detector:
    """Finds credentials in text. Stateless apart from its configuration."""

    def __init__(self, config: ScanConfig | None = None) -> None:
        self.config = config or ScanConfig()

    def scan_text(self, text: str) -> list[Hit]:
        """Every credential in ``text`` with its line and column."""
        if _is_signed_note(text):
            # A C2SP signed note (an audit checkpoint): origin, size, a Merkle root
            # and signatures, all public by design.
            return []
        return _located(text, self._scan(text, 0, secret_context=False))

    def scan_value(
        self, key: str, value: str, *, line: int, column: int, secret_storage: bool
    ) -> list[Hit]:
        """A value paired with its name by structure (``Secret`` entries, container env).

        ``secret_storage``: a ``Secret`` entry, judged on entropy whatever its
        key. Hits are reported at ``line``/``column`` (the value in its file).
        """
        spans = self._scan(f"{key}: {value}", 0, secret_context=secret_storage)
        return [Hit(line, column, s.kind, s.rule, s.preview) for s in _dedupe(spans)]

    # -- layers -----------------------------------------------------------

    def _scan(self, text: str, depth: int, *, secret_context: bool) -> list[_Span]:
        text = _blank_armour(text)
        pairs = [(m.group("key"), m.start("value"), m.end("value")) for m in _PAIR.finditer(text)]
        spans = self._recognized(text, pairs)
        self._assignments(text, pairs, spans, secret_context)
        self._tokens(text, pairs, spans, depth)
        return _dedupe(spans)

    def _recognized(self, text: str, pairs: list[tuple[str, int, int]]) -> list[_Span]:
        spans: list[_Span] = []
        if recognizers.PREFILTER.search(text) is not None:
            for kind, pattern in recognizers.KIND_PATTERNS.items():
                for m in pattern.finditer(text):
                    start, end = _narrow(text, m.start(), m.end(), kind)
                    value = text[start:end]
                    if _dismissed(kind, value, text, start, pairs):
                        continue
                    spans.append(
                        _Span(m.start(), start, end, kind, f"recognizer:{kind}", mask(value, kind))
                    )
        for kind, pattern in EXTRA_PATTERNS.items():
            for m in pattern.finditer(text):
                spans.append(
                    _Span(
                        m.start(),
                        m.start(),
                        m.end(),
                        kind,
                        f"pattern:{kind}",
                        mask(m.group(0), kind),
                    )
                )
        return spans

    def _assignments(
        self,
        text: str,
        pairs: list[tuple[str, int, int]],
        spans: list[_Span],
        secret_context: bool,
    ) -> None:
        cfg = self.config
        claimed = _Claimed(spans)
        for key, start, end in pairs:
            if claimed.overlaps(start, end) or not (secret_context or secret_name(key)):
                continue
            value = text[start:end]
            if entropy.HEX.fullmatch(value) is None:
                value = entropy.without_public_parts(value)
            if len(value) < cfg.value_min_len or _public_before(text, start):
                continue
            if public_name(key) or _not_random(value):
                continue
            data = entropy.b64decode(value)
            if data is not None and entropy.as_text(data) is None:
                der = entropy.der_kind(data)
                if der in ("certificate", "public_key"):
                    continue
                if der == "private_key":
                    spans.append(
                        _Span(
                            start,
                            start,
                            end,
                            PRIVATE_KEY_DER,
                            "der:private_key",
                            mask(value, PRIVATE_KEY_DER),
                        )
                    )
                    continue
            elif data is not None:
                continue  # base64 of text: the token layer scans the text
            hex_secret = entropy.HEX.fullmatch(value) is not None and len(value) >= 32
            if entropy.shannon(value) >= cfg.value_min_entropy and (
                entropy.classes(value) >= 2 or hex_secret
            ):
                spans.append(
                    _Span(
                        start,
                        start,
                        end,
                        HIGH_ENTROPY_VALUE,
                        "entropy:assignment",
                        mask(value, HIGH_ENTROPY_VALUE),
                    )
                )

    def _tokens(
        self, text: str, pairs: list[tuple[str, int, int]], spans: list[_Span], depth: int
    ) -> None:
        cfg = self.config
        claimed = _Claimed(spans)
        for m in _TOKEN.finditer(text):
            start, end = m.span()
            token = m.group(0)
            if claimed.overlaps(start, end) or entropy.is_hash_like(token):
                continue
            if entropy.DIGEST_PREFIX.match(token):
                continue
            if _public_before(text, start) or entropy.is_path_like(token):
                continue
            key = _key_at(pairs, start)
            if key is not None and public_name(key):
                continue
            data = entropy.b64decode(token)
            if data is not None:
                inner = entropy.as_text(data)
                if inner is not None:
                    if depth < cfg.max_decode_depth:
                        for s in self._scan(inner, depth + 1, secret_context=False):
                            spans.append(
                                _Span(start, start, end, s.kind, f"base64>{s.rule}", s.preview)
                            )
                    continue
                der = entropy.der_kind(data)
                if der == "private_key":
                    spans.append(
                        _Span(
                            start,
                            start,
                            end,
                            PRIVATE_KEY_DER,
                            "der:private_key",
                            mask(token, PRIVATE_KEY_DER),
                        )
                    )
                    continue
                if der is not None:
                    continue
            if (
                len(token) >= cfg.token_min_len
                and entropy.classes(token) == 3
                and entropy.shannon(token) >= cfg.token_min_entropy
                and not _identifier(text, start, token)
            ):
                spans.append(
                    _Span(
                        start,
                        start,
                        end,
                        HIGH_ENTROPY_TOKEN,
                        "entropy:token",
                        mask(token, HIGH_ENTROPY_TOKEN),
                    )
                )


def _not_random(value: str) -> bool:
    return (
        is_reference(value)
        or entropy.UUID.fullmatch(value) is not None
        or "://" in value
        or entropy.is_path_like(value)
        or entropy.is_slug(value)
        or value.startswith(recognizers.HMAC_PREFIX)
        or identifier_path(value)
    )


def _dismissed(
    kind: str, value: str, text: str, start: int, pairs: list[tuple[str, int, int]]
) -> bool:
    """The two precision rules of the module docstring."""
    if kind in ("secret_assignment", "url_password"):
        # ``"auth": {...`` in JSON: the value is structure, not a credential.
        return is_reference(value) or value.startswith(("{", "[")) or not _ALNUM.search(value)
    if kind == "aws_secret_access_key":
        key = _key_at(pairs, start)
        if key is not None and public_name(key):
            return True
        if _public_before(text, start):
            return True
        # 40 of [A-Za-z0-9/+] inside a lease id or KV path (``db/creds/reader/<24>``).
        if identifier_path(_enclosing_run(text, start, start + len(value))):
            return True
        data = entropy.b64decode(value)
        return data is not None and entropy.as_text(data) is not None
    return False


def _enclosing_run(text: str, start: int, end: int) -> str:
    """The run of token and path characters around ``text[start:end]`` (bounded)."""
    i, j = start, end
    while i > 0 and end - i < _IDENTIFIER_MAX and text[i - 1] in _RUN_CHARS:
        i -= 1
    while j < len(text) and j - i < _IDENTIFIER_MAX and text[j] in _RUN_CHARS:
        j += 1
    return text[i:j]


def _public_before(text: str, start: int) -> bool:
    line_start = text.rfind("\n", 0, start) + 1
    return entropy.NOT_SECRET_BEFORE.search(text[max(line_start, start - 64) : start]) is not None


def _key_at(pairs: list[tuple[str, int, int]], pos: int) -> str | None:
    """The key whose value span holds ``pos`` (value spans are disjoint and in order)."""
    i = bisect.bisect_right(pairs, pos, key=lambda p: p[1]) - 1
    if i >= 0 and pairs[i][1] <= pos < pairs[i][2]:
        return pairs[i][0]
    return None


class _Claimed:
    """Spans already reported, for O(log n) overlap checks on long files."""

    def __init__(self, spans: list[_Span]) -> None:
        ordered = sorted(spans, key=lambda s: s.start)
        self._starts = [s.start for s in ordered]
        self._max_end: list[int] = []
        for s in ordered:
            self._max_end.append(max(s.end, self._max_end[-1] if self._max_end else 0))

    def overlaps(self, start: int, end: int) -> bool:
        j = bisect.bisect_left(self._starts, end)
        return j > 0 and self._max_end[j - 1] > start


def _narrow(text: str, start: int, end: int, kind: str) -> tuple[int, int]:
    """The value group of a key=value / URL match (the secret, not its name)."""
    for pattern in recognizers.VALUE_PATTERNS.get(kind, ()):
        m = pattern.match(text, start)
        if m is None or m.end() != end:
            continue
        for name in pattern.groupindex:
            group_start, group_end = m.span(name)
            if group_start >= 0:
                return group_start, group_end
    return start, end


def _blank_armour(text: str) -> str:
    """Public armoured blocks, C2SP verifier keys and signed-note signature lines
    replaced by spaces, newlines kept (offsets and lines hold)."""
    if "-----BEGIN" in text:
        text = _ARMOUR.sub(lambda m: _spaces(m.group(0)), text)
    if "+" in text:
        text = _VKEY.sub(
            lambda m: _spaces(m.group(0)) if _is_vkey(m.group(0)) else m.group(0), text
        )
    if "\u2014 " in text:
        text = _SIGNATURE_LINE.sub(
            lambda m: _spaces(m.group(0)) if _is_signature(m.group(1)) else m.group(0), text
        )
    return text


def _spaces(s: str) -> str:
    return re.sub(r"[^\n]", " ", s)


# A C2SP vkey: <name>+<8 hex>+<base64(type || 32-byte key)>; public by construction.
_VKEY: Final = re.compile(
    r"(?<![A-Za-z0-9+/=])(?<!KEY\+)[^\s\"'+,]{1,128}\+[0-9a-f]{8}\+[A-Za-z0-9+/]{44}"
    r"(?![A-Za-z0-9+/=])"
)
# One signature line of a C2SP signed note (the log's signature or a witness's cosignature).
_SIGNATURE_LINE: Final = re.compile(r"(?m)^\u2014 [^\s]{1,256} ([A-Za-z0-9+/]{80,112}={0,2})$")


def _is_vkey(text: str) -> bool:
    """True when ``text`` parses as a log or witness verifier key (its hash checks out)."""
    from clawql_secrets.audit.checkpoint import VerifierKey
    from clawql_secrets.audit.cosignature import WitnessKey

    for parse in (VerifierKey.parse, WitnessKey.parse):
        try:
            parse(text)
        except (ClawQLError, ValueError):
            continue
        return True
    return False


def _is_signature(blob: str) -> bool:
    """4-byte key hash + Ed25519 signature (68 bytes), or + timestamp (76: cosignature/v1)."""
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(raw) in (68, 76)


def _dedupe(spans: list[_Span]) -> list[_Span]:
    """One span per kind per value: overlapping recognizer patterns report once."""
    kept: list[_Span] = []
    reach: dict[str, int] = {}
    for s in sorted(spans, key=lambda s: (s.start, -s.end, s.kind, s.rule)):
        if s.start < reach.get(s.kind, -1):
            continue
        reach[s.kind] = max(reach.get(s.kind, -1), s.end)
        kept.append(s)
    return sorted(kept, key=lambda s: (s.at, s.start, s.kind))


def _located(text: str, spans: list[_Span]) -> list[Hit]:
    starts = [0] + [m.end() for m in re.finditer("\n", text)]
    hits = []
    for s in spans:
        i = bisect.bisect_right(starts, s.at) - 1
        hits.append(Hit(i + 1, s.at - starts[i] + 1, s.kind, s.rule, s.preview))
    return hits
