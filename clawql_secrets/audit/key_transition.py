"""Continue the log under a new checkpoint key: the I/O half of ``keyset``.

When the shipper starts with a signing key the verifier key file does not
know (the HSM token holding the old key was lost and restored without it, or
the key was rotated), ``adopt`` performs a *key transition*: it reads every
stream's newest stored checkpoint, checks it against the key set (signature
and range), records those sizes as where the new key takes over, and rewrites
the file atomically. From then on ``verify`` accepts the old key up to those
sizes and the new key after them, and requires the old key's last checkpoint,
so the chain is checked whole (see ``keyset``'s docstring and ADR 0012).

What ``adopt`` refuses, so that nothing is signed over a history it cannot
vouch for: a retired key (it signs nothing ever again), a store whose newest
checkpoint no key of the set signed in range, and a store with checkpoints but
no key file naming the key that signed them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from clawql_secrets.atomicfile import write_atomic
from clawql_secrets.audit import layout
from clawql_secrets.audit.checkpoint import VerifierKey
from clawql_secrets.audit.keyset import MAX_FILE_BYTES, KeySet
from clawql_secrets.audit.log import latest_note
from clawql_secrets.audit.store import WormStore
from clawql_secrets.audit.verify import streams
from clawql_secrets.errors import ClawQLError, ConfigError, InputError

log = logging.getLogger(__name__)


def load_keyset(path: Path) -> KeySet:
    """The key set in ``path``: one verifier key per line, oldest first (``keyset``)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read verifier key file {path}") from exc
    try:
        return KeySet.parse(text)
    except InputError as exc:
        raise ConfigError(f"verifier key file {path}: {exc.message}") from exc


def save_keyset(keys: KeySet, path: Path) -> None:
    """Write the key set atomically; it is public (0644), the auditor's trust anchor."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, str(keys).encode(), mode=0o644)
    except OSError as exc:
        raise ConfigError(f"cannot write verifier key file {path}: {exc.strerror}") from exc


def signed_sizes(
    store: WormStore, keys: KeySet, origin_prefix: str = layout.DEFAULT_ORIGIN_PREFIX
) -> dict[str, int]:
    """Each stream's newest stored checkpoint size, each checked against ``keys``."""
    sizes = {}
    for stream in streams(store):
        note = latest_note(store, stream)
        if note is None:
            continue
        origin = layout.origin(origin_prefix, stream)
        try:
            sizes[stream] = keys.open(note, stream=stream, origin=origin)[0].size
        except ClawQLError as exc:
            raise ConfigError(
                f"stream {stream!r}: the newest stored checkpoint is not signed by the log's "
                f"keys ({exc.message}); refusing to sign over it",
                fix="run `clawql-secrets audit verify` on the store; if the log's key file is "
                "missing or stale, restore the one auditors pinned",
            ) from exc
    return sizes


def adopt(
    store: WormStore,
    signer_key: VerifierKey,
    path: Path,
    *,
    origin_prefix: str = layout.DEFAULT_ORIGIN_PREFIX,
) -> KeySet:
    """The key set the log goes on with under ``signer_key``; see the module docstring."""
    if not path.exists():
        # 1. First start: whatever the store holds must already be this key's.
        keys = KeySet.single(signer_key)
        signed_sizes(store, keys, origin_prefix)
        save_keyset(keys, path)
        return keys
    keys = load_keyset(path)
    index = keys.index_of(signer_key)
    # 2. The current key: nothing changes.
    if index == len(keys.epochs) - 1:
        return keys
    # 3. A retired key never signs again, or the range check would be meaningless.
    if index is not None:
        raise ConfigError(
            f"the checkpoint key {signer_key} (#{index + 1} in {path}) was retired when "
            f"{keys.newest.name!r} #{len(keys.epochs)} took over; it signs nothing again",
            fix="configure the shipper with the current key (the HSM token holding it)",
        )
    # 4. A new key: it takes over after each stream's newest verified checkpoint.
    after = signed_sizes(store, keys, origin_prefix)
    new = keys.extended(signer_key, after)
    save_keyset(new, path)
    log.warning(
        "audit key transition: %s takes over from %s after %s; give auditors the new %s",
        signer_key,
        keys.newest,
        ", ".join(f"{s}={n}" for s, n in sorted(after.items())) or "no signed checkpoint",
        path,
    )
    return new
