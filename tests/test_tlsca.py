"""The local CA's files: private keys 0600, and every directory it creates 0700."""

from __future__ import annotations

import stat
from pathlib import Path

from clawql_secrets.tlsca import LocalCA


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_new_parent_directories_are_private(tmp_path: Path) -> None:
    ca = LocalCA.load_or_create(tmp_path / "data" / "tls" / "node-ca", "test CA")
    ca.issue(tmp_path / "data" / "nodes" / "n1" / "tls", "node", dns=("localhost",))
    for d in ("data", "data/tls", "data/tls/node-ca", "data/nodes", "data/nodes/n1/tls"):
        assert _mode(tmp_path / d) == 0o700, d
    assert _mode(tmp_path / "data/tls/node-ca/ca.key") == 0o600
    assert _mode(tmp_path / "data/nodes/n1/tls/node.key") == 0o600
    # Loading again keeps the CA (same certificate).
    again = LocalCA.load_or_create(tmp_path / "data/tls/node-ca", "test CA")
    assert again.cert_path.read_bytes() == ca.cert_path.read_bytes()
