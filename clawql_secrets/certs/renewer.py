"""The renewal loop: one state per service, one thread, a clock passed in.

Per service, each time it is due:

1. If no certificate is in place, or renewal time (2/3 of its life, jittered)
   has come: generate a key here, have OpenBao sign a CSR, verify the answer,
   write key and chain atomically. The old files stay until the new ones are
   verified and renamed over them: during an OpenBao outage the service keeps
   its current certificate until it expires.
2. If a reload is pending (a new certificate, or a reload that failed): tell
   the service.
3. On failure, retry with backoff (``schedule.Backoff``), and once more just
   before the certificate in place expires; on success, sleep until renewal.

``step()`` does what is due and returns when to wake up; ``run()`` loops it.
Unit tests drive ``step()`` with a fake clock and a fake ``Authority``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from clawql_secrets.certs import files, x509check
from clawql_secrets.certs.authority import Authority
from clawql_secrets.certs.config import CertsConfig, Service
from clawql_secrets.certs.metrics import CertsMetrics
from clawql_secrets.certs.reload import reload as default_reload
from clawql_secrets.certs.schedule import Backoff, renew_at
from clawql_secrets.errors import ClawQLError

log = logging.getLogger(__name__)

MAX_SLEEP = 5.0  # re-read the clock at least this often (suspend, clock steps)


@dataclass
class _State:
    service: Service
    current: x509check.CertInfo | None = None
    renew_after: float = 0.0
    next_attempt: float = 0.0
    failures: int = 0
    reload_pending: bool = False


class Renewer:
    def __init__(
        self,
        config: CertsConfig,
        authority: Authority,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        reloader: Callable[[Service], None] = default_reload,
        metrics: CertsMetrics | None = None,
    ) -> None:
        self._cfg = config
        self._authority = authority
        self._clock = clock
        self._rng = rng or random.SystemRandom()
        self._reload = reloader
        self._backoff = Backoff(config.schedule.backoff_initial, config.schedule.backoff_max)
        self.metrics = metrics or CertsMetrics(clock)
        now = clock()
        self._states = [self._adopt(s, now) for s in config.services]

    # -- start: keep what is on disk if it is still good ------------------------
    def _adopt(self, service: Service, now: float) -> _State:
        st = _State(service)
        info = files.try_read_installed(service)
        if info is not None and now < info.not_after:
            st.current = info
            st.renew_after = self._renew_time(info, info.not_before)
            st.next_attempt = max(now, st.renew_after)
            log.info(
                "%s: keeping certificate %s (expires %s)",
                service.name,
                info.serial,
                _t(info.not_after),
            )
        else:
            st.next_attempt = now
        self.metrics.in_place(service.name, None if info is None else info.not_after)
        self.metrics.scheduled(service.name, st.next_attempt)
        return st

    def _renew_time(self, info: x509check.CertInfo, received: float) -> float:
        start = max(info.not_before, received)
        return renew_at(start, info.not_after, jitter=self._cfg.schedule.jitter, rng=self._rng)

    # -- the loop ------------------------------------------------------------
    def step(self) -> float:
        """Act on every service that is due; return the next wake-up time."""
        for st in self._states:
            if st.next_attempt <= self._clock():
                self._act(st)
        return min(st.next_attempt for st in self._states)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            wake = self.step()
            stop.wait(min(max(wake - self._clock(), 0.0), MAX_SLEEP))

    def _act(self, st: _State) -> None:
        svc = st.service
        now = self._clock()
        # 1. issue and write when none is in place, it expired, or renewal is due
        if st.current is None or now >= st.renew_after or now >= st.current.not_after:
            stage = "issue"
            try:
                key = x509check.new_key()
                leaf, chain = self._authority.sign(svc, x509check.csr_for(svc, key))
                received = self._clock()
                issued = x509check.verify_issued(svc, key, leaf, chain, now=received)
                stage = "write"
                files.install(svc, issued)
            except ClawQLError as exc:
                self._failed(st, stage, exc)
                return
            st.current = issued.info
            st.renew_after = self._renew_time(issued.info, received)
            st.reload_pending = svc.reload is not None
            self.metrics.renewed(svc.name, issued.info.not_after)
            log.info(
                "%s: new certificate %s, expires %s, renewal at %s",
                svc.name,
                issued.info.serial,
                _t(issued.info.not_after),
                _t(st.renew_after),
            )
        # 2. tell the service
        if st.reload_pending:
            try:
                self._reload(svc)
            except ClawQLError as exc:
                self._failed(st, "reload", exc)
                return
            st.reload_pending = False
            self.metrics.reloaded(svc.name)
        # 3. success: sleep until renewal
        st.failures = 0
        st.next_attempt = st.renew_after
        self.metrics.succeeded(svc.name)
        self.metrics.scheduled(svc.name, st.next_attempt)

    def _failed(self, st: _State, stage: str, exc: ClawQLError) -> None:
        st.failures += 1
        now = self._clock()
        not_after = None if st.current is None else st.current.not_after
        st.next_attempt = self._backoff.next_attempt(
            now, st.failures, self._rng, not_after=not_after
        )
        self.metrics.failed(st.service.name, stage, type(exc).__name__)
        self.metrics.scheduled(st.service.name, st.next_attempt)
        left = (
            "no certificate in place"
            if not_after is None
            else (f"current certificate expires in {not_after - now:.0f}s")
        )
        log.warning(
            "%s: %s failed (attempt %d; %s; retry in %.1fs): %s",
            st.service.name,
            stage,
            st.failures,
            left,
            st.next_attempt - now,
            exc.message,
        )

    # -- for --once and tests --------------------------------------------------
    def in_place(self) -> dict[str, x509check.CertInfo | None]:
        return {st.service.name: st.current for st in self._states}

    def failures(self) -> dict[str, int]:
        return {st.service.name: st.failures for st in self._states}


def _t(ts: float) -> str:
    return time.strftime("%H:%M:%SZ", time.gmtime(ts))
