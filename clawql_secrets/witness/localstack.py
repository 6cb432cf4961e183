"""The local stack's witness: its key, its configuration, and how the shipper reaches it.

One witness runs as its own supervised process with its own key file and
state directory (``<data-dir>/witness``), apart from the log's key in the HSM
token. It reads the log's keys from the shipper's verifier key file (see
``WitnessLogConfig.verifier_keys_file``), so a key transition after an HSM
loss reaches it without a restart, while it still refuses any tree head that
does not extend what it cosigned. Its public key is printed by ``status`` and
named as bootstrap trust in the README: ``audit verify --witness-key``.
"""

from __future__ import annotations

from pathlib import Path

from clawql_secrets.atomicfile import write_atomic
from clawql_secrets.audit import layout
from clawql_secrets.audit.cosignature import WitnessKey, WitnessSigner
from clawql_secrets.audit.ship_config import WitnessEndpoint
from clawql_secrets.cluster.layout import NODE_IDS, StackSettings
from clawql_secrets.errors import ConfigError
from clawql_secrets.witness.config import WitnessConfig, WitnessLogConfig, write_witness_config

WITNESS_NAME = "clawql.local/witness"


def key_file(settings: StackSettings) -> Path:
    return settings.witness_dir / "witness.key"


def config_file(settings: StackSettings) -> Path:
    return settings.witness_dir / "witness.json"


def witness_key(settings: StackSettings) -> WitnessKey:
    """The witness's public key (its private key file exists after ``prepare``)."""
    return WitnessSigner.from_file(key_file(settings)).witness_key()


def prepare(settings: StackSettings, verifier_file: Path) -> WitnessEndpoint:
    """Create the witness's key (once) and configuration; return the shipper's endpoint."""
    s = settings
    s.witness_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = key_file(s)
    if not path.exists():
        key = WitnessSigner.generate(WITNESS_NAME).key_string().encode()
        try:
            write_atomic(path, key, mode=0o600, replace=False)
        except OSError as exc:
            raise ConfigError(f"cannot create the witness key {path}: {exc.strerror}") from exc
    config = WitnessConfig(
        name=WITNESS_NAME,
        key_file=path,
        state_dir=s.witness_dir / "state",
        host=s.host,
        port=s.witness_port,
        logs=[
            WitnessLogConfig(
                origin=layout.origin(layout.DEFAULT_ORIGIN_PREFIX, node),
                verifier_keys_file=verifier_file,
            )
            for node in NODE_IDS
        ],
    )
    write_witness_config(config, config_file(s))
    return WitnessEndpoint(url=s.witness_addr, key=str(witness_key(s)), timeout_seconds=5.0)
