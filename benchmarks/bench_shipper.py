"""Audit shipper throughput with redaction, vs JSON parsing alone, in the same run.

Corpus: ``bench_redact.corpus`` (the real OpenBao audit samples varied into
distinct ~1.4 KB lines, a few percent carrying a planted secret), written to
an audit file. One process, one thread: figures are per core.

- *JSON parse alone*: ``json.loads`` of every line.
- *leaf*: parse + redact + RFC 8785 canonical form (``leaf.make_leaf``).
- *shipper*: the whole path a line takes: tail the file, de-duplicate,
  make the leaf, append to the Merkle tree, then write the segment and an
  Ed25519-signed checkpoint to an in-memory WORM store and commit the cursor.

Each figure is the median of ``REPS`` repetitions over the same ``N`` lines;
every repetition gets a fresh ``Redactor`` (cold memo; its Presidio set-up
is not timed) and, for the shipper, a fresh cursor (the file is read from 0).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.bench_redact import corpus
from clawql_secrets.audit.checkpoint import Ed25519Signer
from clawql_secrets.audit.layout import DEFAULT_LIMITS
from clawql_secrets.audit.leaf import make_leaf
from clawql_secrets.audit.redact import Redactor
from clawql_secrets.audit.shipper import Shipper, ShipperSettings, StreamSource
from clawql_secrets.audit.store import MemoryWormStore
from clawql_secrets.audit.tail import AuditTailer, CursorFile

N = 4000
REPS = 5
TARGET = 5000


def _median_rate(samples: list[float]) -> float:
    return statistics.median(samples)


def measure() -> dict[str, float]:
    lines = corpus(N)
    data = [line.encode() for line in lines]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        audit = root / "audit.log"
        audit.write_bytes(b"".join(d + b"\n" for d in data))
        signer = Ed25519Signer.generate("bench/audit")

        parse: list[float] = []
        for _ in range(REPS):
            t0 = time.perf_counter()
            for d in data:
                json.loads(d)
            parse.append(N / (time.perf_counter() - t0))

        leaf: list[float] = []
        raws = AuditTailer(audit, "n1", CursorFile(root / "scratch.cursor")).poll()
        if len(raws) < N:
            raise SystemExit("the tailer returned fewer lines than written")
        for _ in range(REPS):
            redactor = Redactor()
            t0 = time.perf_counter()
            for raw in raws:
                make_leaf(raw, redactor, DEFAULT_LIMITS)
            leaf.append(N / (time.perf_counter() - t0))

        ship: list[float] = []
        checkpoints = 0
        for rep in range(REPS):
            source = StreamSource("n1", audit, root / f"cursors-{rep}")
            store = MemoryWormStore()
            with Shipper([source], store, signer, ShipperSettings(), redactor=Redactor()) as s:
                t0 = time.perf_counter()
                s.drain()
                s.publish()
                elapsed = time.perf_counter() - t0
                if s.log.stream("n1").size != N:
                    raise SystemExit("the shipper did not ship every line")
            checkpoints += len(store.list("checkpoints/"))
            ship.append(N / elapsed)
    return {
        "parse": _median_rate(parse),
        "leaf": _median_rate(leaf),
        "ship": _median_rate(ship),
        "checkpoints": checkpoints / REPS,
    }


def run() -> str:
    m = measure()
    verdict = "meets" if m["ship"] >= TARGET else "MISSES"
    return "\n".join(
        [
            "## Audit shipper (tail → redact → Merkle log → WORM)",
            "",
            f"{N} real-looking OpenBao audit lines (~1.4 KB, ~3 % with a planted secret), "
            f"one thread; medians of {REPS} runs.",
            "",
            "| path | entries/s | vs JSON parse |",
            "|---|---:|---:|",
            f"| JSON parse alone | {m['parse']:,.0f} | 1.00 |",
            f"| parse + redact + canonical JSON (leaf) | {m['leaf']:,.0f} "
            f"| {m['leaf'] / m['parse']:.2f} |",
            f"| shipper: tail + leaf + Merkle append + segment/checkpoint write "
            f"| {m['ship']:,.0f} | {m['ship'] / m['parse']:.2f} |",
            "",
            f"Target ≥ {TARGET:,}/s per core: the shipper {verdict} it.",
            "",
        ]
    )


if __name__ == "__main__":
    print(run())
