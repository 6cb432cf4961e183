"""The named bootstrap trust (ARCHITECTURE invariant 8) and the check of its protection.

These files hold secrets on purpose: the local stack cannot start without
them (README, "Security model"). The scan reports each as category
``bootstrap``, not hidden and not a failure, unless its protection is loose:

1. the file is a regular file, not a symlink (a link's protection is its target's);
2. its mode grants nothing to group or others (0600 or stricter);
3. it is owned by the user running the scan (the stack runs as that user);
4. its directory grants nothing to others and is not group-writable
   (README: 0700), so names cannot be listed or files swapped.

Paths are matched on their last components, so the catalog applies to a
data directory wherever it is (``.clawql/``, a test's temporary stack).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import PurePosixPath
from typing import Final


@dataclass(frozen=True)
class BootstrapItem:
    kind: str
    pattern: str
    """Glob over the path's last components; ``*`` matches within one component."""
    description: str


CATALOG: Final[tuple[BootstrapItem, ...]] = (
    BootstrapItem("hsm_pin", "hsm/user.pin", "HSM user PIN: use of the unseal key"),
    BootstrapItem(
        "hsm_pin_verifier", "hsm/user.pin.verifier", "salted scrypt of the HSM PIN (guessable)"
    ),
    BootstrapItem(
        "hsm_token_object", "hsm/tokens/*/*.object", "SoftHSM2 token object (sealed by the PIN)"
    ),
    BootstrapItem("node_tls_key", "nodes/*/tls/*.key", "node TLS key: identity to peers/bridge"),
    BootstrapItem("ca_key", "tls/*/ca.key", "local CA key: mints identities"),
    BootstrapItem("bridge_tls_key", "tls/bridge/*.key", "HSM bridge TLS key: its server identity"),
    BootstrapItem("issuer_key", "issuer/signing.key", "workload issuer key: operator logins"),
    BootstrapItem(
        "session_issuer_key",
        "sessions-issuer/signing.key",
        "local session issuer key: agent sessions (the platform's issuer in production)",
    ),
    BootstrapItem(
        "gateway_exchange_key",
        "gateway-exchange/signing.key",
        "gateway exchange key: signs the assertions OpenBao trusts for agent tokens "
        "(ADR 0010; rotate by listing a new public key in exchange.public_keys first)",
    ),
    BootstrapItem(
        "witness_key",
        "witness/witness.key",
        "audit witness key: its cosignatures vouch that the log was not forked or rolled back "
        "(held by another party in production)",
    ),
    BootstrapItem(
        "holder_identity", "holders/*.key", "DEV ONLY: a recovery key holder's age identity"
    ),
)


def match(path: PurePosixPath) -> BootstrapItem | None:
    """The catalog entry for ``path``, if it is a piece of named bootstrap trust."""
    for item in CATALOG:
        n = len(PurePosixPath(item.pattern).parts)
        if len(path.parts) >= n:
            tail = "/".join(path.parts[-n:])
            if fnmatchcase(tail, item.pattern):
                return item
    return None


@dataclass(frozen=True)
class FileFacts:
    """What the protection check needs from ``lstat`` of a file and ``stat`` of its directory."""

    mode: int
    uid: int
    dir_mode: int


def protection_problems(facts: FileFacts, expected_uid: int) -> tuple[str, ...]:
    """What is wrong with the protection (empty: correctly protected). Steps: module docstring."""
    problems: list[str] = []
    # 1. A regular file.
    if stat.S_ISLNK(facts.mode):
        problems.append("is a symlink (protection depends on its target)")
    elif not stat.S_ISREG(facts.mode):
        problems.append("is not a regular file")
    # 2. 0600 or stricter.
    perms = stat.S_IMODE(facts.mode)
    if perms & 0o077:
        problems.append(f"mode {perms:04o} grants group/other access (want 0600 or stricter)")
    # 3. Owned by the user running the stack.
    if facts.uid != expected_uid:
        problems.append(f"owned by uid {facts.uid}, not the current user ({expected_uid})")
    # 4. Directory closed to others, not group-writable.
    dperms = stat.S_IMODE(facts.dir_mode)
    if dperms & 0o007 or dperms & 0o020:
        problems.append(
            f"directory mode {dperms:04o} is open to others or group-writable (want 0700)"
        )
    return tuple(problems)
