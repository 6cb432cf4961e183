"""What a scan reports: findings (never values), where they are, and the scan limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

SECRET: Final = "secret"
"""A static credential: always a failure."""

BOOTSTRAP: Final = "bootstrap"
"""Named bootstrap trust (ARCHITECTURE invariant 8): reported, a failure only if unprotected."""

CATEGORIES: Final = (SECRET, BOOTSTRAP)


@dataclass(frozen=True)
class Location:
    """Where a finding is: a file and line, an environment variable, or a KV path."""

    source: str
    """``file``, ``env`` or ``kv``."""
    name: str
    """The file path, ``<pid>:<VARIABLE>`` (``self`` for this process), or ``<mount>/<path>``."""
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        if self.source == "file" and self.line is not None:
            return f"{self.name}:{self.line}:{self.column or 1}"
        return f"{self.source}:{self.name}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "name": self.name}
        if self.line is not None:
            out["line"] = self.line
            out["column"] = self.column or 1
        return out


@dataclass(frozen=True)
class Finding:
    """One static credential, or one bootstrap item, described without its value.

    ``preview`` is a mask (a public prefix such as ``hvs.`` at most, and a
    length class); ``problems`` lists what is wrong with a bootstrap item's
    protection (empty: correctly protected, not a failure).
    """

    category: str
    kind: str
    location: Location
    preview: str
    rule: str
    problems: tuple[str, ...] = ()

    @property
    def failing(self) -> bool:
        return self.category == SECRET or bool(self.problems)

    def to_json(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "kind": self.kind,
            "location": self.location.to_json(),
            "preview": self.preview,
            "rule": self.rule,
            "failing": self.failing,
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class Skipped:
    """Something not scanned (binary, too large, unreadable): said, never silently dropped."""

    name: str
    reason: str
    incomplete: bool
    """True if a credential could hide there (unreadable); False for binary files."""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "reason": self.reason, "incomplete": self.incomplete}


@dataclass
class ScanResult:
    findings: list[Finding] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    scanned: int = 0
    """Files, variables and KV secrets looked at."""

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.failing]

    @property
    def incomplete(self) -> bool:
        return any(s.incomplete for s in self.skipped)

    def exit_code(self) -> int:
        """0 clean; 1 a failing finding; 3 nothing found but part could not be scanned."""
        if self.failures:
            return 1
        return 3 if self.incomplete else 0

    def extend(self, other: ScanResult) -> None:
        self.findings.extend(other.findings)
        self.skipped.extend(other.skipped)
        self.scanned += other.scanned

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.exit_code() == 0,
            "scanned": self.scanned,
            "failures": len(self.failures),
            "findings": [f.to_json() for f in self.findings],
            "skipped": [s.to_json() for s in self.skipped],
        }


@dataclass(frozen=True)
class ScanConfig:
    """Limits and thresholds, enforced where data comes in."""

    max_file_bytes: int = 4 * 1024 * 1024
    """Larger files are scanned up to this size and marked incomplete."""
    max_decode_depth: int = 2
    """How many layers of base64 are peeled off to look inside."""
    token_min_len: int = 32
    """An unlabelled token shorter than this is never flagged on entropy alone."""
    token_min_entropy: float = 4.0
    """Bits per character for an unlabelled token (random base64 of 32 chars: ~4.6)."""
    value_min_len: int = 12
    """A value of a secret-looking key shorter than this is not judged on entropy."""
    value_min_entropy: float = 3.0
    """Bits per character for a value of a secret-looking key."""
    exclude_dirs: frozenset[str] = frozenset(
        {
            ".git",
            ".venv",
            "venv",
            "node_modules",
            "__pycache__",
            ".mypy_cache",
            ".ruff_cache",
            ".pytest_cache",
            ".hypothesis",
        }
    )
