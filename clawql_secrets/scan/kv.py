"""Static secrets in a KV v2 mount: every live secret not on the allow-list.

Injected third-party secrets (API keys the gateway adds to an agent's
requests) are the one legitimate use of KV; they are named on an allow-list
of path globs. Anything else stored in KV is a static credential. The walk
lists ``<mount>/metadata/`` and reads each secret's *metadata* only (is the
current version live?); values are never read.

Allow-list globs are relative to the mount: ``*`` matches within one path
segment, ``**`` across segments (``agents/**/stripe``). Lines starting with
``#`` and blank lines are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from clawql_secrets.errors import InputError

Lister = Callable[[str], list[str] | None]
"""``prefix`` -> child names (``"a"``, ``"dir/"``); None if listing is not permitted."""
MetadataReader = Callable[[str], dict[str, Any] | None]
"""``path`` -> the metadata's ``data``; None if not permitted."""

MAX_SECRETS = 100_000
"""The walk stops (incomplete) beyond this many secrets: a limit, not a promise."""


@dataclass(frozen=True)
class AllowList:
    globs: tuple[str, ...] = ()
    _compiled: tuple[re.Pattern[str], ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def of(cls, globs: Iterable[str]) -> AllowList:
        clean = tuple(g.strip().strip("/") for g in globs if g.strip() and not g.startswith("#"))
        for g in clean:
            if ".." in g.split("/"):
                raise InputError(f"allow-list entry {g!r} contains '..'")
        return cls(clean, tuple(_glob(g) for g in clean))

    @classmethod
    def parse(cls, text: str) -> AllowList:
        return cls.of(line.strip() for line in text.splitlines())

    def allows(self, path: str) -> bool:
        p = path.strip("/")
        return any(rx.fullmatch(p) for rx in self._compiled)


def _glob(g: str) -> re.Pattern[str]:
    out = []
    for part in re.split(r"(\*\*|\*)", g):
        if part == "**":
            out.append(".*")
        elif part == "*":
            out.append("[^/]*")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out))


@dataclass
class KVWalk:
    secrets: list[tuple[str, int]] = field(default_factory=list)
    """Live secrets: path relative to the mount, current version."""
    denied: list[str] = field(default_factory=list)
    """Prefixes or paths the identity could not list or read."""
    truncated: bool = False


def walk(list_keys: Lister, read_metadata: MetadataReader, prefix: str = "") -> KVWalk:
    """Every live secret under ``prefix`` (depth-first, sorted)."""
    result = KVWalk()
    stack = [prefix.strip("/") + "/" if prefix.strip("/") else ""]
    while stack:
        current = stack.pop()
        names = list_keys(current)
        if names is None:
            result.denied.append(current or "/")
            continue
        for name in sorted(names, reverse=True):
            if "/" in name.rstrip("/") or name in ("", ".", "..", "./", "../"):
                continue  # not a name OpenBao returns; never follow it
            path = current + name
            if name.endswith("/"):
                stack.append(path)
                continue
            if len(result.secrets) >= MAX_SECRETS:
                result.truncated = True
                return result
            meta = read_metadata(path)
            if meta is None:
                result.denied.append(path)
                continue
            version = live_version(meta)
            if version is not None:
                result.secrets.append((path, version))
    result.secrets.sort()
    return result


def live_version(meta: dict[str, Any], now: datetime | None = None) -> int | None:
    """The current version if it is neither deleted nor destroyed, else None."""
    try:
        current = int(meta.get("current_version") or 0)
    except (TypeError, ValueError):
        return None
    versions = meta.get("versions") or {}
    info = versions.get(str(current)) if isinstance(versions, dict) else None
    if not current or not isinstance(info, dict):
        return None
    if info.get("destroyed"):
        return None
    deleted = info.get("deletion_time")
    if deleted:
        # delete_version_after sets a deletion time in the future: live until then.
        try:
            text = re.sub(r"(\.\d{6})\d+", r"\1", str(deleted)).replace("Z", "+00:00")
            when = datetime.fromisoformat(text)
        except ValueError:
            return None
        if when <= (now or datetime.now(UTC)):
            return None
    return current
