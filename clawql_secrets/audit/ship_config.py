"""Configuration of ``clawql-secrets audit ship``, and the local stack's instance of it.

One JSON (or YAML) file, validated by pydantic and refused whole if anything
is off. It names files and endpoints, never a credential: S3 credentials come
from boto3's usual chain (environment, profile, instance role), the HSM PIN
from its ``pin_file`` (the HSM's bootstrap secret), and a file signing key
(tests, development) from ``key_file``.

    {
      "streams": {"n1": {"audit_file": ".../n1/audit/audit.log", "cursor_dir": ".../cursors"}},
      "store": {"kind": "local", "path": ".../audit-store"},
         or   {"kind": "s3", "uri": "s3://bucket/prefix", "endpoint_url": null, "region": null,
               "retention_days": 400},
      "signer": {"kind": "file", "key_file": ".../signing.key"},
         or    {"kind": "hsm", "token_label": "clawql", "pin_file": ".../user.pin",
                "note_key_name": "clawql.local/audit", "softhsm_conf": ".../softhsm2.conf"},
      "interval_seconds": 60,
      "origin_prefix": "clawql.local/audit",
      "metrics": {"host": "127.0.0.1", "port": 9464}
    }

Relative paths are resolved against the configuration file's directory.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from clawql_secrets.audit import layout
from clawql_secrets.audit.checkpoint import Ed25519Signer, Signer, VerifierKey
from clawql_secrets.audit.cosignature import WitnessKey
from clawql_secrets.audit.hsm_signer import DEFAULT_KEY_LABEL, HSMSigner, HSMSignerConfig
from clawql_secrets.audit.s3store import S3Location, S3WormStore, make_client
from clawql_secrets.audit.shipper import ShipperSettings, StreamSource
from clawql_secrets.audit.store import LocalWormStore, WormStore
from clawql_secrets.errors import ConfigError, InputError
from clawql_secrets.hsm.token import DEFAULT_LIB_PATH
from clawql_secrets.validation import load_model


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StreamConfig(_Strict):
    audit_file: Path
    cursor_dir: Path


class LocalStoreConfig(_Strict):
    kind: Literal["local"]
    path: Path


class S3StoreConfig(_Strict):
    kind: Literal["s3"]
    uri: str
    endpoint_url: str | None = None
    region: str | None = None
    retention_days: int = Field(default=400, ge=1, le=36500)
    connect_timeout: float = Field(default=5.0, gt=0, le=120)
    read_timeout: float = Field(default=15.0, gt=0, le=300)
    max_attempts: int = Field(default=3, ge=1, le=10)


class FileSignerConfig(_Strict):
    kind: Literal["file"]
    key_file: Path


class HSMSignerModel(_Strict):
    kind: Literal["hsm"]
    token_label: str = Field(min_length=1, max_length=32)
    pin_file: Path
    note_key_name: str = Field(min_length=1, max_length=128)
    key_label: str = Field(default=DEFAULT_KEY_LABEL, min_length=1, max_length=64)
    lib_path: Path = DEFAULT_LIB_PATH
    softhsm_conf: Path | None = None
    generate: bool = True


class MetricsConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)


class WitnessEndpoint(_Strict):
    """A witness the shipper asks to cosign every stream's newest checkpoint."""

    url: str = Field(pattern=r"^https?://", max_length=2048)
    key: str = Field(description="the witness's C2SP vkey (`audit witness init` prints it)")
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)

    @field_validator("key")
    @classmethod
    def _key_parses(cls, key: str) -> str:
        try:
            WitnessKey.parse(key)
        except InputError as exc:
            raise ValueError(exc.message) from exc
        return key

    def witness_key(self) -> WitnessKey:
        return WitnessKey.parse(self.key)


class ShipConfig(_Strict):
    streams: dict[str, StreamConfig] = Field(min_length=1)
    store: Annotated[LocalStoreConfig | S3StoreConfig, Field(discriminator="kind")]
    signer: Annotated[FileSignerConfig | HSMSignerModel, Field(discriminator="kind")]
    interval_seconds: float = Field(default=60.0, gt=0, le=86400)
    poll_seconds: float = Field(default=0.5, gt=0, le=60)
    retry_seconds: float = Field(default=5.0, gt=0, le=3600)
    origin_prefix: str = layout.DEFAULT_ORIGIN_PREFIX
    max_pending_entries: int = Field(default=200_000, ge=1)
    # Where to publish the checkpoint verifier key (public) for `audit verify --pubkey-file`.
    verifier_file: Path | None = None
    metrics: MetricsConfig | None = None
    witnesses: list[WitnessEndpoint] = Field(default_factory=list, max_length=16)

    def resolved(self, base: Path) -> ShipConfig:
        """Relative paths made absolute against ``base`` (the config file's directory)."""

        def fix(p: Path) -> Path:
            return p if p.is_absolute() else base / p

        streams = {
            n: StreamConfig(audit_file=fix(s.audit_file), cursor_dir=fix(s.cursor_dir))
            for n, s in self.streams.items()
        }
        store, signer = resolve_store_and_signer(self.store, self.signer, fix)
        verifier = None if self.verifier_file is None else fix(self.verifier_file)
        return self.model_copy(
            update={"streams": streams, "store": store, "signer": signer, "verifier_file": verifier}
        )

    def sources(self) -> list[StreamSource]:
        for name in self.streams:
            layout.check_stream(name)
        return [
            StreamSource(name, s.audit_file, s.cursor_dir)
            for name, s in sorted(self.streams.items())
        ]

    def settings(self) -> ShipperSettings:
        return ShipperSettings(
            interval_seconds=self.interval_seconds,
            poll_seconds=self.poll_seconds,
            retry_seconds=self.retry_seconds,
            origin_prefix=self.origin_prefix,
            max_pending_entries=self.max_pending_entries,
        )


StoreModel = LocalStoreConfig | S3StoreConfig
SignerModel = FileSignerConfig | HSMSignerModel


def resolve_store_and_signer(
    store: StoreModel, signer: SignerModel, fix: Callable[[Path], Path]
) -> tuple[StoreModel, SignerModel]:
    """The store's and signer's relative paths resolved by ``fix`` (shipper and ingest)."""
    if isinstance(store, LocalStoreConfig):
        store = store.model_copy(update={"path": fix(store.path)})
    if isinstance(signer, FileSignerConfig):
        return store, signer.model_copy(update={"key_file": fix(signer.key_file)})
    conf = None if signer.softhsm_conf is None else fix(signer.softhsm_conf)
    return store, signer.model_copy(update={"pin_file": fix(signer.pin_file), "softhsm_conf": conf})


def load_config(path: Path) -> ShipConfig:
    return load_model(path, ShipConfig, "shipper configuration").resolved(path.resolve().parent)


def open_store(config: LocalStoreConfig | S3StoreConfig) -> WormStore:
    if isinstance(config, LocalStoreConfig):
        try:
            config.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the audit store directory {config.path}") from exc
        return LocalWormStore(config.path)
    client = make_client(
        endpoint_url=config.endpoint_url,
        region=config.region,
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        max_attempts=config.max_attempts,
    )
    try:
        location = S3Location.parse(config.uri)
    except InputError as exc:
        raise ConfigError(f"store.uri: {exc.message}") from exc
    store = S3WormStore(client, location, retention_days=config.retention_days)
    store.check_bucket()
    return store


def open_signer(config: FileSignerConfig | HSMSignerModel) -> tuple[Signer, Callable[[], None]]:
    """The signer and a function releasing it (the HSM session)."""
    if isinstance(config, FileSignerConfig):
        return Ed25519Signer.from_file(config.key_file), lambda: None
    signer = HSMSigner.open(
        HSMSignerConfig(
            token_label=config.token_label,
            pin_file=config.pin_file,
            note_key_name=config.note_key_name,
            key_label=config.key_label,
            lib_path=config.lib_path,
            softhsm_conf=config.softhsm_conf,
            generate=config.generate,
        )
    )
    return signer, signer.close


def verifier_of(signer: Signer) -> VerifierKey:
    return VerifierKey.from_public_key(signer.key_name, signer.public_key_bytes())


# -- the local stack -----------------------------------------------------------


def stack_config(
    data_dir: Path,
    node_ids: tuple[str, ...] = ("n1", "n2", "n3"),
    *,
    metrics_port: int = 0,
    interval_seconds: float = 60.0,
    token_label: str = "clawql",  # noqa: S107 (a token label, not a secret)
    witnesses: Sequence[WitnessEndpoint] = (),
) -> ShipConfig:
    """The shipper of a local stack rooted at ``data_dir`` (``cluster.layout`` paths).

    Each node's audit file is ``<data_dir>/nodes/<n>/audit/audit.log``; the
    store is the local write-once directory ``<data_dir>/audit/store``; the
    checkpoint key is an Ed25519 key generated in the stack's SoftHSM token
    (``<data_dir>/hsm``, the bridge's token), so no signing key file exists.
    """
    audit = data_dir / "audit"
    hsm = data_dir / "hsm"
    return ShipConfig(
        streams={
            n: StreamConfig(
                audit_file=data_dir / "nodes" / n / "audit" / "audit.log",
                cursor_dir=audit / "cursors",
            )
            for n in node_ids
        },
        store=LocalStoreConfig(kind="local", path=audit / "store"),
        signer=HSMSignerModel(
            kind="hsm",
            token_label=token_label,
            pin_file=hsm / "user.pin",
            softhsm_conf=hsm / "softhsm2.conf",
            note_key_name="clawql.local/audit",
        ),
        interval_seconds=interval_seconds,
        metrics=MetricsConfig(port=metrics_port) if metrics_port else None,
        verifier_file=audit / "verifier.txt",
        witnesses=list(witnesses),
    )


def write_config(config: ShipConfig, path: Path) -> None:
    """Write ``config`` as JSON (it holds no secret; 0644 is fine)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(config.model_dump_json(indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the shipper configuration {path}") from exc


def shipper_command(config_path: Path) -> list[str]:
    """The argv a supervisor runs: ``python -m clawql_secrets audit ship --config FILE``.

    The process ships until SIGTERM/SIGINT, then drains, publishes a last
    checkpoint and exits 0; it exits 1 with a message on a configuration error.
    Run it with a clean environment plus whatever S3 credentials the store needs.
    """
    return [sys.executable, "-m", "clawql_secrets", "audit", "ship", "--config", str(config_path)]
