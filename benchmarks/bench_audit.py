"""Audit-log benchmarks: ``verify`` throughput and inclusion proofs at 10 million entries.

Targets (ARCHITECTURE.md): ``verify`` >= 300,000 entries/s; an inclusion proof
for a 10-million-entry log <= 1 ms. Baselines measured in the same run: raw
hashlib SHA-256 over the same entry bytes (the floor any verifier pays), and a
bare list walk. Every loop is bounded in count.
"""

from __future__ import annotations

import hashlib
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from clawql_secrets.audit import layout, merkle
from clawql_secrets.audit.checkpoint import Ed25519Signer
from clawql_secrets.audit.log import StreamLog
from clawql_secrets.audit.store import LocalWormStore, MemoryWormStore, WormStore
from clawql_secrets.audit.tree import MerkleTree
from clawql_secrets.audit.verify import verify

VERIFY_ENTRIES = 1_000_000
PROOF_TREE_SIZE = 10_000_000
PROOF_SAMPLES = 2_000
RUNS = 3


def _entry(i: int) -> bytes:
    """A small, realistic, already-canonical (RFC 8785) audit entry of ~200 bytes."""
    return (
        f'{{"auth":{{"entity_id":"agent-{i % 97}","metadata":{{"tenant":"t{i % 7}"}}}},'
        f'"node":"n1","request":{{"operation":"read","path":"database/creds/agent-{i % 13}",'
        f'"remote_address":"10.0.{i % 250}.{i % 200}"}},"seq":{i},'
        f'"time":"2025-01-01T00:00:00Z","type":"response"}}'
    ).encode()


def _fill(store: WormStore, signer: Ed25519Signer, n: int) -> int:
    """Write ``n`` entries in 100,000-entry segments, each with its checkpoint."""
    log = StreamLog("n1", layout.origin(layout.DEFAULT_ORIGIN_PREFIX, "n1"))
    total = 0
    for i in range(n):
        data = _entry(i)
        total += len(data)
        log.append_canonical(data)
    for step in log.prepare([signer], None):
        if step.segment is not None:
            store.put_once(step.segment.name, step.data)
        store.put_once(step.checkpoint_name, step.note)
    return total


def _median_time(fn: Callable[[], object], runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _verify_rows() -> list[str]:
    signer = Ed25519Signer.generate("bench.local/audit")
    key = signer.verifier_key()
    memory = MemoryWormStore()
    total_bytes = _fill(memory, signer, VERIFY_ENTRIES)
    entries = [_entry(i) for i in range(VERIFY_ENTRIES)]

    def raw_sha256() -> None:
        sha = hashlib.sha256
        for e in entries:
            sha(e).digest()

    rows = []
    raw = _median_time(raw_sha256)
    in_memory = _median_time(lambda: verify(memory, key))
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        disk = LocalWormStore(Path(tmp))
        for name in memory.list(""):
            disk.put_once(name, memory.get(name))
        on_disk = _median_time(lambda: verify(disk, key))
    n = VERIFY_ENTRIES
    rows.append(f"| raw hashlib SHA-256 over the entries (baseline) | {n / raw:,.0f} | — |")
    rows.append(
        f"| `verify`, in-memory store | {n / in_memory:,.0f} | "
        f"{'met' if n / in_memory >= 300_000 else 'MISSED'} (≥ 300,000) |"
    )
    rows.append(
        f"| `verify`, local write-once directory (page cache warm) | {n / on_disk:,.0f} | "
        f"{'met' if n / on_disk >= 300_000 else 'MISSED'} (≥ 300,000) |"
    )
    header = [
        f"`verify` over {n:,} entries ({total_bytes / n:.0f} bytes each, "
        f"{n // layout.DEFAULT_LIMITS.max_segment_entries} segments and checkpoints), "
        f"median of {RUNS} runs:",
        "",
        "| what | entries/s | target |",
        "|---|---|---|",
    ]
    return header + rows


def _proof_rows() -> list[str]:
    n = PROOF_TREE_SIZE
    # Random bytes stand in for leaf hashes: proof cost does not depend on their values.
    leaves = os.urandom(n * merkle.HASH_SIZE)
    t0 = time.perf_counter()
    tree = MerkleTree.from_leaf_hashes(leaves)
    build = time.perf_counter() - t0
    del leaves
    root = tree.root()
    rng = random.Random(9162)
    indexes = [rng.randrange(n) for _ in range(PROOF_SAMPLES)] + [n - 1] * 50
    gen, both = [], []
    for index in indexes:
        t0 = time.perf_counter()
        proof = tree.inclusion_proof(index)
        t1 = time.perf_counter()
        merkle.verify_inclusion(tree.leaf(index), index, n, proof, root)
        t2 = time.perf_counter()
        gen.append(t1 - t0)
        both.append(t2 - t0)
    old = n - 1_234_567
    t0 = time.perf_counter()
    cproof = tree.consistency_proof(old)
    merkle.verify_consistency(old, n, cproof, tree.root(old), root)
    consistency = time.perf_counter() - t0
    p50 = statistics.median(both) * 1e3
    p99 = statistics.quantiles(both, n=100)[98] * 1e3
    return [
        f"Inclusion proofs in a {n:,}-leaf tree (level store built from leaf hashes in "
        f"{build:.1f} s, {2 * n * merkle.HASH_SIZE / 2**20:,.0f} MiB), "
        f"{len(indexes):,} proofs ({PROOF_SAMPLES:,} random leaves and the last leaf):",
        "",
        "| what | median | p99 | target |",
        "|---|---|---|---|",
        f"| generate | {statistics.median(gen) * 1e3:.3f} ms | "
        f"{statistics.quantiles(gen, n=100)[98] * 1e3:.3f} ms | — |",
        f"| generate + verify (RFC 9162 §2.1.3.2) | {p50:.3f} ms | {p99:.3f} ms | "
        f"{'met' if p50 <= 1.0 else 'MISSED'} (≤ 1 ms) |",
        f"| consistency proof {old:,} → {n:,}, generate + verify | {consistency * 1e3:.3f} ms "
        "| — | — |",
    ]


def run() -> str:
    lines = ["## Audit log", "", *_verify_rows(), "", *_proof_rows(), ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
