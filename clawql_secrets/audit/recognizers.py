"""Secret recognizers: regexes, their Presidio wrappers, and the pre-filter built from them.

Every secret shape the audit redactor looks for in free text is declared once,
in ``SPECS``. The regex strings feed:

- Presidio ``PatternRecognizer`` objects run by an ``AnalyzerEngine`` on a
  ``NoOpNlpEngine`` (pattern recognizers only: no spaCy model exists offline);
- ``EXACT``, their exact union, used after redaction to prove no secret
  shape is left (and as a fallback should Presidio skip a pattern).

``PREFILTER`` is one compiled regex in front of Presidio, so that a string
without a hit is never analysed (~1 µs instead of ~100 µs per string). It is
a superset of ``EXACT``: for each pattern it holds a fragment the pattern
cannot match without (a literal prefix such as ``eyJ`` or ``-----BEGIN``, a
key word followed by ``=``/``:``), written so the regex engine can skip
ahead. ``tests/audit/test_redact.py`` checks on a generated corpus that it
never misses a string Presidio alone flags, and that each of its fragments
is needed for that, so an edit to one side cannot silently break the other.

Every pattern is linear in the text length (bounded repeats, lookbehinds
that let a match start only at the start of a run), since audit strings are
partly caller-controlled and are up to the tailer's line limit long.

All patterns are case-sensitive (``DOTALL | MULTILINE``, not Presidio's
default ``IGNORECASE``): AWS key ids and token prefixes are case-sensitive,
and case-insensitive matching of ``[A-Z]`` classes would flag ordinary
words. Key names use scoped ``(?i:...)`` groups instead. Linear patterns
also mean Presidio's regex timeout, which skips a pattern silently, does not
fire.

Importing this module makes tldextract (imported by Presidio's e-mail
recognizer) unable to fetch the public suffix list: it would otherwise go to
the internet, without a timeout, the first time it is used.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

if "tldextract" not in sys.modules:
    # Read by tldextract when its module-level extractor is built at import.
    os.environ["TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"] = ""

import tldextract.tldextract as _tldextract

# Whatever the import order, the module-level extractor is offline, cacheless.
_tldextract.TLD_EXTRACTOR = _tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine

FLAGS = re.DOTALL | re.MULTILINE
"""Flags for every pattern, in Presidio and in the pre-filter alike."""

LANGUAGE = "en"
"""Presidio needs a language; the pattern recognizers are language-neutral."""

REDACTED_PREFIX = "[REDACTED:"
"""Start of every marker; patterns refuse to match a value that starts with it."""

HMAC_PREFIX = "hmac-sha256:"
"""OpenBao's HMAC'd values: not secret (keyed hash), kept for correlation."""

# A value that is already safe: an OpenBao HMAC, a redaction marker, a
# template placeholder ({{password}} in connection URLs) or a mask (****).
_SAFE_VALUE = r"(?!hmac-sha256:|\[REDACTED:|\{\{|\*{3,})"

# Value of a key=value / "key": "value" pair. Double-quoted values may be
# inside JSON that is itself inside a string (\"), so the quote may be escaped.
_VALUE = (
    r"(?:\\?\"" + _SAFE_VALUE + r"(?P<dq>(?:[^\"\\\n]|\\[^\"\n])+)"
    r"|'" + _SAFE_VALUE + r"(?P<sq>[^'\n]+)"
    r"|" + _SAFE_VALUE + r"(?!(?:null|true|false)\b)(?P<bare>[^\s\"'\\&;,)}\]<>]+))"
)

# Key names that only ever hold a secret, accepted with any separator form
# (password=, "db_password": , DB_PASSWORD: , SecretAccessKey=).
_SPECIFIC_KEYS = (
    r"pass(?:word|wd|phrase)|pwd|client[_-]?secret|secret[_-]?(?:access[_-]?)?key"
    r"|secret[_-]?id|api[_-]?(?:key|token)|apikey|(?:access|refresh|id|auth|session"
    r"|security|root|bearer)[_-]?token|private[_-]?key|credentials?|unseal[_-]?key"
    r"|recovery[_-]?key|aws[_-]?secret"
)
# Words too common in prose ("token: expired") to trust after a bare colon:
# accepted only as name= or as a quoted JSON/YAML key ("token": ...).
_GENERIC_KEYS = r"token|secret|auth|pass"
# A name prefix ending in a separator (db_password, x-api-key) needs no
# pattern: the lookbehind only refuses a letter or digit before the key word.
# Only the quoted form spells it out, anchored on the quote so it stays linear.
_KEY_PREFIX = r"(?:[A-Za-z0-9_.-]*[_.-])?"


@dataclass(frozen=True)
class RecognizerSpec:
    """One secret shape: its marker type, Presidio entity name and regexes.

    ``value_group`` patterns mark only part of the match as secret (the value
    after ``password=``, the password in a URL); the redactor narrows the
    Presidio span to it so the key name stays readable.
    """

    kind: str
    entity: str
    patterns: tuple[tuple[str, str], ...]
    value_group: bool = False


SPECS: tuple[RecognizerSpec, ...] = (
    RecognizerSpec(
        kind="openbao_token",
        entity="OPENBAO_TOKEN",
        patterns=(
            # OpenBao 2.x service/root/wrapping: s. + 24 alphanumerics (r.:
            # recovery tokens, same shape); optional .<namespace id> suffix.
            (
                "service",
                r"(?<![A-Za-z0-9_.-])[sr]\.[A-Za-z0-9]{24}(?:\.[A-Za-z0-9]{5})?(?![A-Za-z0-9_-])",
            ),
            # OpenBao batch: b. + ~159 URL-safe base64 characters.
            ("batch", r"(?<![A-Za-z0-9_.-])b\.[A-Za-z0-9_-]{40,}"),
            # Vault-style service/batch/recovery tokens.
            ("vault", r"(?<![A-Za-z0-9_.-])hv[sbr]\.[A-Za-z0-9_-]{24,}"),
        ),
    ),
    RecognizerSpec(
        kind="jwt",
        entity="JWT",
        patterns=(
            # JWS/JWE compact form: a base64url JSON header ("{" -> eyJ) and
            # at least two more dot-separated parts.
            ("compact", r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*"),
        ),
    ),
    RecognizerSpec(
        kind="pem_private_key",
        entity="PEM_PRIVATE_KEY",
        patterns=(
            # Up to the END line, or to the end of the text when truncated;
            # newlines may be real or JSON-escaped (\n).
            (
                "pem",
                r"-----BEGIN[A-Z0-9 ]{0,24} PRIVATE KEY-----"
                r"[\s\S]*?(?:-----END[A-Z0-9 ]{0,24} PRIVATE KEY-----|\Z)",
            ),
            # The same, base64-encoded ("-----BEGIN " then "PRIVATE KEY" at
            # any of the three base64 alignments).
            (
                "pem_base64",
                r"LS0tLS1CRUdJTi[A-Za-z0-9+/]{0,24}?"
                r"(?:UFJJVkFURSBLRVkt|BSSVZBVEUgS0VZ|QUklWQVRFIEtFWS0t)[A-Za-z0-9+/=]*",
            ),
        ),
    ),
    RecognizerSpec(
        kind="gcp_service_account_key",
        entity="GCP_SERVICE_ACCOUNT_KEY",
        patterns=(
            # Base64 of a service-account JSON key file (what the GCP secrets
            # engine returns as private_key_data): {"type": "service_account"
            # in its compact, spaced and pretty-printed forms. In clear text
            # the key inside is a PEM private key, caught above.
            (
                "sa_json_base64",
                r"(?:eyJ0eXBlIjogInNlcnZpY2VfYWNjb3VudC|eyJ0eXBlIjoic2VydmljZV9hY2NvdW50I"
                r"|ewogICJ0eXBlIjogInNlcnZpY2VfYWNjb3VudC)[A-Za-z0-9+/=]*",
            ),
        ),
    ),
    RecognizerSpec(
        kind="aws_access_key_id",
        entity="AWS_ACCESS_KEY_ID",
        patterns=(
            (
                "key_id",
                r"(?<![A-Za-z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)"
                r"[A-Z0-9]{16}(?![A-Za-z0-9])",
            ),
        ),
    ),
    RecognizerSpec(
        kind="aws_secret_access_key",
        entity="AWS_SECRET_ACCESS_KEY",
        patterns=(
            # 40 characters of [A-Za-z0-9/+] standing alone and mixing upper
            # case, lower case and digits: a random secret key has all three
            # (P(miss) ~ 1e-3), hex digests (lower or upper) and words do not.
            # A following "=" means a longer base64 blob, not a key.
            (
                "bare",
                r"(?<![A-Za-z0-9/+])(?=[A-Za-z0-9/+]{0,39}[A-Z])(?=[A-Za-z0-9/+]{0,39}[a-z])"
                r"(?=[A-Za-z0-9/+]{0,39}[0-9])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])",
            ),
        ),
    ),
    RecognizerSpec(
        kind="url_password",
        entity="URL_PASSWORD",
        value_group=True,
        patterns=(
            (
                "userinfo",
                r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{0,30}://[^\s:/?#@\[\]\"']*:"
                + _SAFE_VALUE
                + r"(?P<pw>[^\s/?#@\"']+)@",
            ),
        ),
    ),
    RecognizerSpec(
        kind="secret_assignment",
        entity="SECRET_ASSIGNMENT",
        value_group=True,
        patterns=(
            (
                "specific_key",
                r"(?<![A-Za-z0-9])(?i:" + _SPECIFIC_KEYS + r")"
                r"\\?[\"']?[ \t]*[:=][ \t]*" + _VALUE,
            ),
            (
                "generic_key_equals",
                r"(?<![A-Za-z0-9])(?i:" + _GENERIC_KEYS + r")=" + _VALUE,
            ),
            (
                "generic_key_quoted",
                r"[\"']"
                + _KEY_PREFIX
                + r"(?i:"
                + _GENERIC_KEYS
                + r")\\?[\"'][ \t]*:[ \t]*"
                + _VALUE,
            ),
            (
                "authorization_header",
                r"(?<![A-Za-z0-9_-])(?i:(?:proxy-)?authorization|x-vault-token|x-bao-token)"
                r"\\?[\"']?[ \t]*[:=][ \t]*\\?[\"']?(?:(?i:bearer|basic|token)[ \t]+)?"
                + _SAFE_VALUE
                + r"(?P<auth>[A-Za-z0-9._~+/=-]{8,})",
            ),
            ("bearer", r"(?<![A-Za-z0-9_-])(?i:bearer)[ \t]+(?P<bearer>[A-Za-z0-9._~+/-]{20,}=*)"),
        ),
    ),
)

KINDS: tuple[str, ...] = tuple(spec.kind for spec in SPECS)
ENTITY_TO_KIND: dict[str, str] = {spec.entity: spec.kind for spec in SPECS}

_NAMED_GROUP = re.compile(r"\(\?P<[A-Za-z_][A-Za-z0-9_]*>")


def _strip_group_names(pattern: str) -> str:
    # Group names repeat across patterns; the alternation needs none of them.
    return _NAMED_GROUP.sub("(?:", pattern)


EXACT: re.Pattern[str] = re.compile(
    "|".join(
        "(?:" + _strip_group_names(regex) + ")" for spec in SPECS for _, regex in spec.patterns
    ),
    FLAGS,
)
"""Matches iff some recognizer pattern matches: the fail-closed check after redaction."""

PREFILTER: re.Pattern[str] = re.compile(
    # One necessary condition per pattern above, in the same order. Each is
    # a literal- or narrow-class-led fragment the full pattern must contain,
    # so the regex engine can skip ahead instead of trying every pattern's
    # lookbehind at every position (3x faster than EXACT on audit strings).
    r"[sr]\.[A-Za-z0-9]{24}"
    r"|b\.[A-Za-z0-9_-]{40}"
    r"|hv[sbr]\.[A-Za-z0-9_-]{24}"
    r"|eyJ[A-Za-z0-9_-]{8}"
    r"|-----BEGIN"
    r"|LS0tLS1CRUdJTi"
    r"|eyJ0eXBlIj|ewogICJ0eXBlIj"
    r"|(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}"
    r"|(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
    r"|://[^\s:/?#@\[\]\"']*:[^\s/?#@\"']+@"
    # Every secret-assignment key name contains one of these words followed
    # by at most 11 more name characters; then the same separator. Bounded,
    # so "tokentoken..." cannot make the scan quadratic.
    r"|(?i:pass|pwd|secret|token|key|credential|auth)[A-Za-z0-9_-]{0,24}\\?[\"']?[ \t]*[:=]"
    r"|(?i:bearer)[ \t]+[A-Za-z0-9._~+/-]{20}",
    FLAGS,
)
"""The gate in front of Presidio: matches every string any recognizer matches (and more).

A superset of ``EXACT``; precision only costs speed, recall is what the
recall test holds it to.
"""

KIND_PATTERNS: dict[str, re.Pattern[str]] = {
    spec.kind: re.compile(
        "|".join("(?:" + _strip_group_names(regex) + ")" for _, regex in spec.patterns), FLAGS
    )
    for spec in SPECS
}
"""Exact union of each kind's patterns: labels matches when Presidio is bypassed."""

VALUE_PATTERNS: dict[str, tuple[re.Pattern[str], ...]] = {
    spec.kind: tuple(re.compile(regex, FLAGS) for _, regex in spec.patterns)
    for spec in SPECS
    if spec.value_group
}
"""For kinds whose secret is one group of the match: used to narrow Presidio's span."""


@cache
def analyzer() -> AnalyzerEngine:
    """The process-wide Presidio engine with only this module's recognizers.

    Built lazily (importing Presidio pulls in spaCy: ~1 s) and once: the
    engine is stateless per call, so sharing it is safe. ``NoOpNlpEngine``
    loads no model; passing our own registry keeps Presidio's 17 built-in
    recognizers (phone numbers, names...) out, which are 20x slower and
    irrelevant to secrets.
    """
    from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NoOpNlpEngine

    recognizers = [
        PatternRecognizer(
            supported_entity=spec.entity,
            name=f"clawql_{spec.kind}",
            patterns=[Pattern(name=name, regex=regex, score=0.9) for name, regex in spec.patterns],
            global_regex_flags=FLAGS,
        )
        for spec in SPECS
    ]
    registry = RecognizerRegistry(
        recognizers=recognizers, global_regex_flags=FLAGS, supported_languages=[LANGUAGE]
    )
    nlp = NoOpNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": "no_op"}])
    return AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=[LANGUAGE])


ENTITIES: list[str] = [spec.entity for spec in SPECS]
