"""Configuration of ``clawql-secrets audit witness``: one JSON or YAML file.

It names the witness, where its key and state live, where it listens, and
which logs it cosigns with which keys. It holds no secret (the private key is
in ``key_file``, 0600), so it may be world-readable::

    {
      "name": "witness.example.org/w1",
      "key_file": "witness.key",
      "state_dir": "state",
      "host": "127.0.0.1",
      "port": 7380,
      "logs": [
        {"origin": "clawql.local/audit/n1",
         "verifier_keys": ["clawql.local/audit+1a2b3c4d+AT0x..."]}
      ]
    }

Relative paths are resolved against the configuration file's directory.
A log lists every key that may sign its checkpoints (any one suffices), so a
log key transition is configured by listing the old and the new key.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from clawql_secrets.audit.checkpoint import VerifierKey
from clawql_secrets.audit.cosignature import check_key_name
from clawql_secrets.errors import ConfigError, InputError
from clawql_secrets.validation import load_model
from clawql_secrets.witness.state import MAX_REQUEST_BYTES, LogPolicy

DEFAULT_PORT = 7380


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WitnessLogConfig(_Strict):
    """One log: its origin and the keys that may sign it, inline or from the log's key file.

    ``verifier_keys_file`` names the log's verifier key set (``audit/keyset.py``,
    the shipper's ``verifier.txt``) and is re-read on every request, so a key
    transition reaches the witness without a restart. It suits a witness run
    next to the log by the same operator (the local stack): the witness still
    refuses any tree head that does not extend what it cosigned, whichever key
    signed it. A witness run by someone else lists the keys inline, and its
    operator adds a new key deliberately.
    """

    origin: str = Field(min_length=1, max_length=1024)
    verifier_keys: list[str] = Field(default_factory=list, max_length=16)
    verifier_keys_file: Path | None = None

    @field_validator("verifier_keys")
    @classmethod
    def _keys_parse(cls, keys: list[str]) -> list[str]:
        for i, text in enumerate(keys):
            try:
                VerifierKey.parse(text)
            except InputError as exc:
                raise ValueError(f"key {i}: {exc.message}") from exc
        return keys

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if bool(self.verifier_keys) == (self.verifier_keys_file is not None):
            raise ValueError("give either verifier_keys or verifier_keys_file, not both or neither")
        return self

    def policy(self) -> LogPolicy:
        try:
            if self.verifier_keys_file is not None:
                from clawql_secrets.audit.key_transition import load_keyset

                # Only the newest key: a retired key signs nothing past its takeover
                # (ADR 0012), and the witness only ever moves forward.
                keys: tuple[VerifierKey, ...] = (load_keyset(self.verifier_keys_file).newest,)
            else:
                keys = tuple(VerifierKey.parse(k) for k in self.verifier_keys)
            return LogPolicy(self.origin, keys)
        except InputError as exc:
            raise ConfigError(f"log {self.origin[:200]!r}: {exc.message}") from exc


class WitnessConfig(_Strict):
    name: str = Field(min_length=1, max_length=256)
    key_file: Path
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=MAX_REQUEST_BYTES)
    read_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    max_connections: int = Field(default=64, ge=1, le=10_000)
    logs: list[WitnessLogConfig] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _name_is_key_name(cls, name: str) -> str:
        try:
            check_key_name(name)
        except InputError as exc:
            raise ValueError(exc.message) from exc
        return name

    @model_validator(mode="after")
    def _origins_unique(self) -> Self:
        origins = [log.origin for log in self.logs]
        if len(set(origins)) != len(origins):
            raise ValueError("two logs share an origin")
        for log in self.logs:
            if log.verifier_keys_file is not None:
                continue  # read per request: the log may write it after the witness starts
            try:
                log.policy()  # origin line and keys usable, or a clear error now
            except ConfigError as exc:
                raise ValueError(exc.message) from exc
        return self

    def resolved(self, base: Path) -> WitnessConfig:
        """Relative paths made absolute against ``base`` (the config file's directory)."""

        def fix(p: Path) -> Path:
            return p if p.is_absolute() else base / p

        logs = [
            log
            if log.verifier_keys_file is None
            else log.model_copy(update={"verifier_keys_file": fix(log.verifier_keys_file)})
            for log in self.logs
        ]
        return self.model_copy(
            update={"key_file": fix(self.key_file), "state_dir": fix(self.state_dir), "logs": logs}
        )

    @property
    def reloads_keys(self) -> bool:
        """True if some log's keys come from a file, re-read on every request."""
        return any(log.verifier_keys_file is not None for log in self.logs)

    def policies(self) -> dict[str, LogPolicy]:
        return {log.origin: log.policy() for log in self.logs}


def load_witness_config(path: Path) -> WitnessConfig:
    config = load_model(path, WitnessConfig, "witness configuration")
    return config.resolved(path.resolve().parent)


def write_witness_config(config: WitnessConfig, path: Path) -> None:
    """Write ``config`` as JSON (it holds no secret; 0644 is fine)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(config.model_dump_json(indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the witness configuration {path}") from exc


def witness_command(config_path: Path) -> list[str]:
    """The argv a supervisor runs: ``python -m clawql_secrets audit witness serve --config F``.

    The process prints ``witness <vkey> listening on http://HOST:PORT`` once it
    accepts connections, serves until SIGTERM/SIGINT, and exits 1 with a
    message on a configuration error (including a corrupt state file).
    """
    return [
        sys.executable,
        "-m",
        "clawql_secrets",
        "audit",
        "witness",
        "serve",
        "--config",
        str(config_path),
    ]
