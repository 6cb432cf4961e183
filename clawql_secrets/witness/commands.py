"""CLI: ``audit witness init|serve --config FILE``.

``init`` is idempotent: it creates the witness key (0600, never printed) and
the state directory if missing and prints the witness's public vkey, which is
what logs and verifiers are configured with. ``serve`` runs the witness in the
foreground. Heavy imports wait for the handler, since the parser is built on
every CLI start.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clawql_secrets.errors import ConfigError

if TYPE_CHECKING:
    from clawql_secrets.audit.cosignature import WitnessSigner


def register(asub: Any) -> None:
    """Add ``witness`` to the ``audit`` sub-commands."""
    witness = asub.add_parser(
        "witness", help="run a C2SP tlog-witness that cosigns logs' checkpoints"
    )
    wsub = witness.add_subparsers(dest="witness_command", metavar="ACTION")
    wsub.required = True

    p = wsub.add_parser("init", help="create the witness key if missing; print its public key")
    p.add_argument("--config", type=Path, required=True, help="witness configuration (JSON/YAML)")
    p.set_defaults(func=_init)

    p = wsub.add_parser("serve", help="serve POST /add-checkpoint until interrupted")
    p.add_argument("--config", type=Path, required=True, help="witness configuration (JSON/YAML)")
    p.set_defaults(func=_serve)


def _init(args: argparse.Namespace) -> int:
    from clawql_secrets.audit.cosignature import WitnessSigner
    from clawql_secrets.witness.config import load_witness_config

    config = load_witness_config(args.config)
    path = config.key_file
    if not os.path.lexists(path):
        _write_new_key(path, WitnessSigner.generate(config.name))
        print(f"created witness key {path}", file=sys.stderr)
    signer = WitnessSigner.from_file(path)
    if signer.name != config.name:
        raise ConfigError(
            f"the witness key file {path} is for {signer.name!r}, "
            f"but the configuration names the witness {config.name!r}",
            fix="fix the name in the configuration, or point key_file elsewhere",
        )
    try:
        config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the witness state directory {config.state_dir}") from exc
    print(signer.witness_key())
    return 0


def _write_new_key(path: Path, signer: WitnessSigner) -> None:
    """Create the key file 0600 from the start; never replace an existing one."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
    except OSError as exc:
        raise ConfigError(f"cannot create the witness key file {path} ({exc.strerror})") from exc
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(signer.key_string() + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise ConfigError(f"cannot write the witness key file {path}") from exc


def _serve(args: argparse.Namespace) -> int:
    from clawql_secrets.witness.config import load_witness_config
    from clawql_secrets.witness.server import serve

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("clawql_secrets").setLevel(logging.INFO)
    serve(load_witness_config(args.config))
    print("stopped", flush=True)
    return 0
