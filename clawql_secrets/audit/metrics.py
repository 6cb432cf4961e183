"""Prometheus metrics of the audit shipper, and the tree heads they let anyone recover.

Exported per stream (label ``stream``, a node name):

    clawql_audit_tree_size                      entries in the stream's log (this process's view)
    clawql_audit_checkpoint_info{size,root,origin}  1 for the newest stored checkpoint
    clawql_audit_checkpoint_size                tree size of the newest stored checkpoint
    clawql_audit_checkpoint_timestamp_seconds   when it was stored (Unix time)
    clawql_audit_seconds_since_checkpoint       now minus that (or since start, before any)
    clawql_audit_ingest_lag_seconds             age of the oldest entry read but not yet stored
    clawql_audit_pending_entries                entries read but not yet in a stored checkpoint
    clawql_audit_entries_total                  leaves appended (entries and notices)
    clawql_audit_duplicates_total               re-read lines dropped by entry id
    clawql_audit_notices_total{kind}            lines stored as notices (gap, unparseable...)
    clawql_audit_redactions_total{type}         redactions by type
    clawql_audit_errors_total{kind}             failures by kind (store, tail, signer, integrity)

and, from the shipper's loop (``stream_status``; not for Fluent Bit ingest streams),
recomputed at every scrape so that a stuck loop still shows:

    clawql_audit_lag_entries                    entries not yet in a stored checkpoint
                                                (appended + complete lines not yet read)
    clawql_audit_lag_seconds                    age of the oldest of them (as first seen)
    clawql_audit_stream_stalled                 1 when the stream is stalled, else 0
    clawql_audit_stream_state{state}            1 for the stream's state (ok, catching_up,
                                                failing, stalled), 0 for the others
    clawql_audit_last_error_timestamp_seconds   when the stream last failed (if it has)
    clawql_audit_checkpoint_interval_seconds    the configured checkpoint interval, so
                                                alert rules can be written in intervals

(``stream_status`` explains the states and why 1.5 intervals make a stall.)

Labels carry only stream names, fixed vocabularies and the public checkpoint
root (hex): never an entry's content, so never a secret. Because the root is
a label of ``clawql_audit_checkpoint_info``, every (size, root) a Prometheus
server scraped stays in its series index, and ``audit verify --prometheus``
can hold the log to all of them (``heads_from_series``).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from clawql_secrets.audit.checkpoint import Checkpoint
from clawql_secrets.audit.stream_status import State, StreamStatus
from clawql_secrets.errors import InputError

CHECKPOINT_INFO = "clawql_audit_checkpoint_info"
_LOOP_FAMILIES = frozenset(
    {
        "clawql_audit_lag_entries",
        "clawql_audit_lag_seconds",
        "clawql_audit_stream_stalled",
        "clawql_audit_stream_state",
        "clawql_audit_last_error_timestamp_seconds",
        "clawql_audit_checkpoint_interval_seconds",
    }
)


@dataclass
class _Stream:
    tree_size: int = 0
    checkpoint: Checkpoint | None = None
    checkpoint_time: float | None = None
    oldest_pending: float | None = None
    pending: int = 0
    entries: int = 0
    duplicates: int = 0
    notices: Counter[str] = field(default_factory=Counter)
    redactions: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    status: StreamStatus | None = None
    # per witness: submissions by outcome, and the size it last cosigned
    witness_outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    witness_cosigned: dict[str, int] = field(default_factory=dict)


class ShipperMetrics(Collector):
    """The shipper's state, updated by its loop and read by scrapes (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._streams: dict[str, _Stream] = {}

    def _s(self, stream: str) -> _Stream:
        s = self._streams.get(stream)
        if s is None:
            s = self._streams[stream] = _Stream()
        return s

    # -- updates from the shipper loop -------------------------------------

    def appended(
        self, stream: str, tree_size: int, *, kind: str, redactions: Iterable[str] = ()
    ) -> None:
        now = self._clock()
        with self._lock:
            s = self._s(stream)
            s.tree_size = tree_size
            s.entries += 1
            s.pending += 1
            if s.oldest_pending is None:
                s.oldest_pending = now
            if kind != "entry":
                s.notices[kind] += 1
            s.redactions.update(redactions)

    def duplicate(self, stream: str) -> None:
        with self._lock:
            self._s(stream).duplicates += 1

    def resumed(self, stream: str, tree_size: int, checkpoint: Checkpoint | None) -> None:
        with self._lock:
            s = self._s(stream)
            s.tree_size = tree_size
            if checkpoint is not None and s.checkpoint is None:
                s.checkpoint = checkpoint

    def published(self, stream: str, checkpoint: Checkpoint | None, tree_size: int) -> None:
        now = self._clock()
        with self._lock:
            s = self._s(stream)
            s.tree_size = tree_size
            s.pending = 0
            s.oldest_pending = None
            if checkpoint is not None:
                s.checkpoint = checkpoint
                s.checkpoint_time = now

    def error(self, stream: str, kind: str) -> None:
        with self._lock:
            self._s(stream).errors[kind] += 1

    def witnessed(self, witness: str, stream: str, outcome: str, cosigned: int | None) -> None:
        with self._lock:
            s = self._s(stream)
            s.witness_outcomes[(witness, outcome)] += 1
            if cosigned is not None:
                s.witness_cosigned[witness] = cosigned

    def stream_status(self, status: StreamStatus) -> None:
        with self._lock:
            self._s(status.stream).status = status

    # -- scrape ------------------------------------------------------------

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        now = self._clock()
        g = {
            "tree_size": GaugeMetricFamily(
                "clawql_audit_tree_size", "Entries in the stream's log.", labels=["stream"]
            ),
            "info": GaugeMetricFamily(
                CHECKPOINT_INFO,
                "The newest stored checkpoint (size, hex root); value 1.",
                labels=["stream", "origin", "size", "root"],
            ),
            "cp_size": GaugeMetricFamily(
                "clawql_audit_checkpoint_size",
                "Tree size of the newest stored checkpoint.",
                labels=["stream"],
            ),
            "cp_time": GaugeMetricFamily(
                "clawql_audit_checkpoint_timestamp_seconds",
                "When the newest checkpoint was stored.",
                labels=["stream"],
            ),
            "since": GaugeMetricFamily(
                "clawql_audit_seconds_since_checkpoint",
                "Seconds since the newest checkpoint was stored (or since start).",
                labels=["stream"],
            ),
            "lag": GaugeMetricFamily(
                "clawql_audit_ingest_lag_seconds",
                "Age of the oldest entry read but not yet stored.",
                labels=["stream"],
            ),
            "pending": GaugeMetricFamily(
                "clawql_audit_pending_entries",
                "Entries read but not yet in a stored checkpoint.",
                labels=["stream"],
            ),
            "lag_entries": GaugeMetricFamily(
                "clawql_audit_lag_entries",
                "Entries not yet in a stored checkpoint (appended + lines not yet read).",
                labels=["stream"],
            ),
            "lag_seconds": GaugeMetricFamily(
                "clawql_audit_lag_seconds",
                "Age of the oldest entry not yet in a stored checkpoint (as first seen).",
                labels=["stream"],
            ),
            "stalled": GaugeMetricFamily(
                "clawql_audit_stream_stalled",
                "1 when nothing was published for 1.5 checkpoint intervals while entries wait.",
                labels=["stream"],
            ),
            "state": GaugeMetricFamily(
                "clawql_audit_stream_state",
                "1 for the stream's state (ok, catching_up, failing, stalled), 0 for others.",
                labels=["stream", "state"],
            ),
            "error_time": GaugeMetricFamily(
                "clawql_audit_last_error_timestamp_seconds",
                "When the stream last failed (Unix time).",
                labels=["stream"],
            ),
            "interval": GaugeMetricFamily(
                "clawql_audit_checkpoint_interval_seconds",
                "The configured checkpoint interval.",
                labels=["stream"],
            ),
        }
        g["w_size"] = GaugeMetricFamily(
            "clawql_audit_witness_cosigned_size",
            "Tree size of the newest checkpoint the witness cosigned.",
            labels=["stream", "witness"],
        )
        g["w_lag"] = GaugeMetricFamily(
            "clawql_audit_witness_lag_entries",
            "Entries in the newest stored checkpoint that the witness has not cosigned.",
            labels=["stream", "witness"],
        )
        c = {
            "witness": CounterMetricFamily(
                "clawql_audit_witness_submissions",
                "Checkpoints sent to a witness, by outcome (cosigned, conflict, refused, "
                "misconfigured, unavailable).",
                labels=["stream", "witness", "outcome"],
            ),
            "entries": CounterMetricFamily(
                "clawql_audit_entries", "Leaves appended.", labels=["stream"]
            ),
            "dups": CounterMetricFamily(
                "clawql_audit_duplicates", "Re-read lines dropped by entry id.", labels=["stream"]
            ),
            "notices": CounterMetricFamily(
                "clawql_audit_notices", "Lines stored as notices.", labels=["stream", "kind"]
            ),
            "redactions": CounterMetricFamily(
                "clawql_audit_redactions", "Redactions by type.", labels=["stream", "type"]
            ),
            "errors": CounterMetricFamily(
                "clawql_audit_errors", "Failures by kind.", labels=["stream", "kind"]
            ),
        }
        with self._lock:
            for name, s in sorted(self._streams.items()):
                g["tree_size"].add_metric([name], s.tree_size)
                cp = s.checkpoint
                if cp is not None:
                    g["info"].add_metric([name, cp.origin, str(cp.size), cp.root.hex()], 1)
                    g["cp_size"].add_metric([name], cp.size)
                if s.checkpoint_time is not None:
                    g["cp_time"].add_metric([name], s.checkpoint_time)
                g["since"].add_metric([name], now - (s.checkpoint_time or self._started))
                lag = 0.0 if s.oldest_pending is None else now - s.oldest_pending
                g["lag"].add_metric([name], lag)
                g["pending"].add_metric([name], s.pending)
                c["entries"].add_metric([name], s.entries)
                c["dups"].add_metric([name], s.duplicates)
                for kind, n in sorted(s.notices.items()):
                    c["notices"].add_metric([name, kind], n)
                for kind, n in sorted(s.redactions.items()):
                    c["redactions"].add_metric([name, kind], n)
                for kind, n in sorted(s.errors.items()):
                    c["errors"].add_metric([name, kind], n)
                for (witness, outcome), n in sorted(s.witness_outcomes.items()):
                    c["witness"].add_metric([name, witness, outcome], n)
                for witness in sorted({w for w, _ in s.witness_outcomes}):
                    size = s.witness_cosigned.get(witness, 0)
                    g["w_size"].add_metric([name, witness], size)
                    g["w_lag"].add_metric([name, witness], max(0, (cp.size if cp else 0) - size))
                if s.status is not None:
                    seen = s.status.at(now)
                    g["lag_entries"].add_metric([name], seen.lag_entries)
                    g["lag_seconds"].add_metric([name], seen.lag_seconds)
                    g["stalled"].add_metric([name], 1 if seen.state is State.STALLED else 0)
                    for state in State:
                        g["state"].add_metric([name, state.value], 1 if seen.state is state else 0)
                    if seen.last_error is not None:
                        g["error_time"].add_metric([name], seen.last_error.at)
                    g["interval"].add_metric([name], seen.interval_seconds)
        # The loop's families are empty for streams without a loop (Fluent Bit ingest).
        yield from (f for f in g.values() if f.samples or f.name not in _LOOP_FAMILIES)
        yield from c.values()


def registry_for(metrics: ShipperMetrics) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    return registry


@dataclass(frozen=True)
class RecordedHead:
    """A (stream, origin, size, root) that a metrics system recorded."""

    stream: str
    checkpoint: Checkpoint


def heads_from_labels(label_sets: Iterable[Mapping[str, str]]) -> list[RecordedHead]:
    """Tree heads from ``clawql_audit_checkpoint_info`` label sets (series or samples).

    Strict: a label set of that metric that does not parse is an ``InputError``
    (a record we cannot read is not a record we may skip).
    """
    heads: dict[tuple[str, str, int, bytes], RecordedHead] = {}
    for labels in label_sets:
        if labels.get("__name__", CHECKPOINT_INFO) != CHECKPOINT_INFO:
            continue
        try:
            stream, origin, size_text, root_hex = (
                labels["stream"],
                labels["origin"],
                labels["size"],
                labels["root"],
            )
            size = int(size_text)
            root = bytes.fromhex(root_hex)
            if str(size) != size_text or root.hex() != root_hex:
                raise ValueError("not canonical")
            cp = Checkpoint(origin, size, root)
        except (KeyError, ValueError, InputError) as exc:
            raise InputError(f"unreadable {CHECKPOINT_INFO} label set") from exc
        heads[(stream, origin, size, root)] = RecordedHead(stream, cp)
    return [heads[k] for k in sorted(heads)]
