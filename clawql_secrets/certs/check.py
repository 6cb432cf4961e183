"""``certs check``: is every declared service's certificate in place and not about to expire?

Reads only the files (the renewer may be down, that is the point): a missing,
unreadable, mismatched (key not for the certificate), expired or nearly
expired certificate, or a key readable by others, is a problem. The result
never raises for a problem; it is a value for display and the exit status.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from clawql_secrets.certs import files
from clawql_secrets.certs.config import CertsConfig, Service
from clawql_secrets.errors import ClawQLError


@dataclass(frozen=True)
class ServiceCheck:
    service: str
    ok: bool
    status: str  # ok, expiring, expired, missing, invalid, exposed
    detail: str
    serial: str | None = None
    not_after: float | None = None
    seconds_left: float | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def check_service(service: Service, now: float, threshold: int | None = None) -> ServiceCheck:
    limit = service.threshold if threshold is None else threshold
    name = service.name
    if not service.cert_file.exists() or not service.key_file.exists():
        return ServiceCheck(name, False, "missing", "no certificate or key file yet")
    try:
        info = files.read_installed(service)
    except ClawQLError as exc:
        return ServiceCheck(name, False, "invalid", exc.message)
    left = info.not_after - now

    def result(ok: bool, status: str, detail: str) -> ServiceCheck:
        return ServiceCheck(name, ok, status, detail, info.serial, info.not_after, round(left, 1))

    exposed = [p for p in (files.mode_problem(f) for f in service.files()) if p]
    if exposed:
        return result(False, "exposed", "; ".join(exposed))
    if left <= 0:
        return result(False, "expired", f"expired {-left:.0f}s ago")
    if left < limit:
        return result(False, "expiring", f"{left:.0f}s left, under the {limit}s threshold")
    return result(True, "ok", f"{left:.0f}s left")


def check_all(config: CertsConfig, now: float, threshold: int | None = None) -> list[ServiceCheck]:
    return [check_service(s, now, threshold) for s in config.services]
