"""Prometheus metrics of the certificate renewer (label ``service``).

    clawql_certs_expiry_timestamp_seconds     notAfter of the certificate in place
    clawql_certs_seconds_until_expiry         that minus now, at scrape time (< 0: expired)
    clawql_certs_next_attempt_timestamp_seconds  when the renewer acts next
    clawql_certs_valid                        1 while a certificate is in place and unexpired
    clawql_certs_renewals_total               certificates issued and written
    clawql_certs_reloads_total                reloads the service was told of
    clawql_certs_failures_total{stage,error}  failed attempts (stage: issue, write, reload)
    clawql_certs_consecutive_failures         failed attempts since the last success

Labels are service names and fixed vocabularies (error class names): no
serial, key, token or JWT ever becomes a label or value.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry


@dataclass
class _Svc:
    not_after: float | None = None
    next_attempt: float | None = None
    renewals: int = 0
    reloads: int = 0
    consecutive: int = 0
    failures: Counter[tuple[str, str]] = field(default_factory=Counter)


class CertsMetrics(Collector):
    """Updated by the renewer loop, read by scrapes on another thread."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._svcs: dict[str, _Svc] = {}

    def _s(self, name: str) -> _Svc:
        return self._svcs.setdefault(name, _Svc())

    def in_place(self, name: str, not_after: float | None) -> None:
        with self._lock:
            self._s(name).not_after = not_after

    def scheduled(self, name: str, at: float) -> None:
        with self._lock:
            self._s(name).next_attempt = at

    def renewed(self, name: str, not_after: float) -> None:
        with self._lock:
            s = self._s(name)
            s.not_after = not_after
            s.renewals += 1

    def reloaded(self, name: str) -> None:
        with self._lock:
            self._s(name).reloads += 1

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._s(name).consecutive = 0

    def failed(self, name: str, stage: str, error: str) -> None:
        with self._lock:
            s = self._s(name)
            s.failures[(stage, error)] += 1
            s.consecutive += 1

    def snapshot(self, name: str) -> _Svc:
        with self._lock:
            s = self._s(name)
            return _Svc(
                s.not_after, s.next_attempt, s.renewals, s.reloads, s.consecutive, s.failures.copy()
            )

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        now = self._clock()
        p = "clawql_certs_"
        expiry = GaugeMetricFamily(
            p + "expiry_timestamp_seconds",
            "notAfter of the certificate in place",
            labels=["service"],
        )
        left = GaugeMetricFamily(
            p + "seconds_until_expiry", "seconds left (negative: expired)", labels=["service"]
        )
        nxt = GaugeMetricFamily(
            p + "next_attempt_timestamp_seconds", "when the renewer acts next", labels=["service"]
        )
        valid = GaugeMetricFamily(
            p + "valid", "1 while an unexpired certificate is in place", labels=["service"]
        )
        renewals = CounterMetricFamily(p + "renewals", "certificates issued", labels=["service"])
        reloads = CounterMetricFamily(p + "reloads", "service reloads", labels=["service"])
        failures = CounterMetricFamily(
            p + "failures", "failed attempts", labels=["service", "stage", "error"]
        )
        consecutive = GaugeMetricFamily(
            p + "consecutive_failures", "failures since the last success", labels=["service"]
        )
        with self._lock:
            for name, s in sorted(self._svcs.items()):
                if s.not_after is not None:
                    expiry.add_metric([name], s.not_after)
                    left.add_metric([name], s.not_after - now)
                valid.add_metric(
                    [name], 1.0 if s.not_after is not None and now < s.not_after else 0
                )
                if s.next_attempt is not None:
                    nxt.add_metric([name], s.next_attempt)
                renewals.add_metric([name], s.renewals)
                reloads.add_metric([name], s.reloads)
                consecutive.add_metric([name], s.consecutive)
                for (stage, error), n in sorted(s.failures.items()):
                    failures.add_metric([name, stage, error], n)
        yield from (expiry, left, nxt, valid, renewals, reloads, failures, consecutive)


def registry_for(metrics: CertsMetrics) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    return registry
