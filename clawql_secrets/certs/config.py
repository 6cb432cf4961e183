"""``certs.yaml``: which internal services get certificates, and how the renewer logs in.

Nothing in it is a secret. The renewer's OpenBao identity comes from a workload
JWT in ``identity.jwt_file`` (a projected Kubernetes service-account token, or
one the local issuer mints), re-read before every login because the platform
rotates it; private keys are generated on this host and only a CSR leaves it.
"""

from __future__ import annotations

import re
import signal as signals
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from clawql_secrets.errors import ConfigError

Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,62}$")]
MountPath = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")]
DnsName = Annotated[
    str,
    StringConstraints(
        max_length=253,
        pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$",
    ),
]
UriSan = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9+.-]*://[^\s,]{1,500}$")]

DEFAULT_TTL = 15 * 60
MIN_TTL, MAX_TTL = 10, 86400  # seconds: a certificate's life the renewer accepts
_SIGNALS = ("HUP", "USR1", "USR2", "TERM", "INT")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpenBaoSettings(_Strict):
    addrs: list[str] = Field(min_length=1)
    ca_file: Path
    timeout: float = Field(default=5.0, gt=0, le=60)
    # Short: one outage must not stall every other service's renewal for long;
    # the renewer's own backoff takes over after this.
    retry_for: float = Field(default=5.0, ge=0, le=60)


class Identity(_Strict):
    """The renewer's own identity: a JWT login on ``mount`` as ``role``."""

    mount: MountPath = "workload"
    role: Name = "certs-renewer"
    jwt_file: Path


class Reload(_Strict):
    """How the service learns of a new certificate: a command, or a signal to a pid file."""

    command: list[str] | None = Field(default=None, min_length=1)
    signal: str | None = None
    pid_file: Path | None = None
    timeout: float = Field(default=10.0, gt=0, le=300)

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, v: str | None) -> str | None:
        if v is None:
            return v
        name = v.upper().removeprefix("SIG")
        if name not in _SIGNALS:
            raise ValueError(f"signal must be one of {', '.join(_SIGNALS)}")
        return name

    @model_validator(mode="after")
    def _one_way(self) -> Reload:
        if (self.command is None) == (self.signal is None):
            raise ValueError("set exactly one of command or signal")
        if (self.signal is None) != (self.pid_file is None):
            raise ValueError("signal and pid_file go together")
        return self

    @property
    def signum(self) -> signals.Signals | None:
        return None if self.signal is None else signals.Signals[f"SIG{self.signal}"]


class Service(_Strict):
    """One internal service: the PKI role it may use, the names it proves, where files go."""

    name: Name
    pki_role: Name
    common_name: DnsName
    dns_sans: list[DnsName] = []
    uri_sans: list[UriSan] = []
    ttl: int = Field(default=DEFAULT_TTL, ge=MIN_TTL, le=MAX_TTL)
    key_file: Path
    cert_file: Path
    ca_file: Path
    # Key and chain in one file, for services that re-read their certificate on
    # every connection: one rename replaces both, so key and cert never mismatch.
    bundle_file: Path | None = None
    reload: Reload | None = None
    # `certs check` fails when less than this is left (default: a sixth of ttl).
    check_threshold: int | None = Field(default=None, ge=0)

    @property
    def threshold(self) -> int:
        return self.ttl // 6 if self.check_threshold is None else self.check_threshold

    def files(self) -> list[Path]:
        out = [self.key_file, self.cert_file, self.ca_file]
        return out if self.bundle_file is None else [*out, self.bundle_file]


class Metrics(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)


class Schedule(_Strict):
    jitter: float = Field(default=0.05, ge=0, le=1 / 6)
    backoff_initial: float = Field(default=1.0, gt=0, le=300)
    backoff_max: float = Field(default=30.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _order(self) -> Schedule:
        if self.backoff_initial > self.backoff_max:
            raise ValueError("backoff_initial must not exceed backoff_max")
        return self


class CertsConfig(_Strict):
    openbao: OpenBaoSettings
    identity: Identity
    pki_mount: MountPath = "pki_int"
    services: list[Service] = Field(min_length=1)
    schedule: Schedule = Schedule()
    metrics: Metrics | None = None

    @model_validator(mode="after")
    def _distinct(self) -> CertsConfig:
        names = [s.name for s in self.services]
        if len(set(names)) != len(names):
            raise ValueError("service names must be distinct")
        files = [f.resolve() for s in self.services for f in s.files()]
        if len(set(files)) != len(files):
            raise ValueError("every key, cert, ca and bundle file must be a distinct path")
        return self


_LOC = re.compile(r"[^A-Za-z0-9_.]")


def load(path: Path) -> CertsConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"certs config {path} cannot be read ({type(exc).__name__})",
            fix="point --config at a YAML file (see docs/certs.md)",
        ) from exc
    try:
        return CertsConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(_LOC.sub("", str(p)) for p in first["loc"]) or "(top level)"
        raise ConfigError(
            f"certs config {path} is invalid at {where}: {first['msg']}",
            fix="see docs/certs.md for the format",
        ) from exc
