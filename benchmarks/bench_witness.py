"""Witnessed checkpoints: what a witness costs the shipper, and how soon an entry is witnessed.

*Throughput*: the shipper's whole path (tail, redact, Merkle append, segment +
checkpoint to the store, cursor commit) over ``bench_redact.corpus`` lines,
publishing every ``BATCH`` lines, with and without a witness: a real
``clawql-secrets audit witness serve`` process on loopback, asked over HTTP
to cosign every checkpoint (consistency proof, Ed25519 cosignature, fsynced
state), the cosignature stored next to the checkpoint. The two modes are
interleaved, ``REPS`` times each, in one run; figures are medians and the
ratio is taken per repetition.

*Latency*: on a local stack as ``clawql-secrets up`` writes it (three OpenBao
nodes, the shipper publishing every 10 s, the witness as its own process), the
time from a KV write (OpenBao writes its audit entry) to a cosignature stored
for a checkpoint that covers that entry, for ``SAMPLES`` writes spread over
two checkpoint intervals. It is bounded below by the checkpoint interval,
which dominates it: production's 60 s interval moves it accordingly.
"""

from __future__ import annotations

import contextlib
import random
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.bench_redact import corpus
from clawql_secrets.audit import layout
from clawql_secrets.audit.checkpoint import Ed25519Signer
from clawql_secrets.audit.cosignature import WitnessSigner
from clawql_secrets.audit.redact import Redactor
from clawql_secrets.audit.shipper import Shipper, ShipperSettings, StreamSource
from clawql_secrets.audit.store import MemoryWormStore
from clawql_secrets.audit.witnessing import WitnessSubmitter
from clawql_secrets.witness.client import WitnessClient
from clawql_secrets.witness.config import WitnessConfig, witness_command, write_witness_config

N = 4000
BATCH = 250
REPS = 5
SAMPLES = 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def witness_process(root: Path, log_key: Ed25519Signer) -> Iterator[WitnessClient]:
    signer = WitnessSigner.generate("bench.witness/w1")
    key_file = root / "witness.key"
    key_file.write_text(signer.key_string())
    key_file.chmod(0o600)
    port = _free_port()
    config = WitnessConfig.model_validate(
        {
            "name": signer.name,
            "key_file": str(key_file),
            "state_dir": str(root / "witness-state"),
            "port": port,
            "logs": [
                {
                    "origin": layout.origin(layout.DEFAULT_ORIGIN_PREFIX, f"n{rep}"),
                    "verifier_keys": [str(log_key.verifier_key())],
                }
                for rep in range(REPS)
            ],
        }
    )
    path = root / "witness.json"
    write_witness_config(config, path)
    proc = subprocess.Popen(
        witness_command(path),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()  # the readiness line
        if "listening" not in line:
            raise SystemExit(f"the witness did not start: {line!r}")
        with WitnessClient(f"http://127.0.0.1:{port}", signer.witness_key()) as client:
            yield client
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _ship(
    root: Path, rep: int, data: list[bytes], signer: Ed25519Signer, client: WitnessClient | None
) -> tuple[float, int]:
    """Entries/s shipping ``data`` in batches; and the cosignatures stored."""
    stream = f"n{rep}"
    audit = root / f"{stream}-{'w' if client else 'p'}.log"
    audit.write_bytes(b"")
    store = MemoryWormStore()
    submitter = None if client is None else WitnessSubmitter([client], store)
    source = StreamSource(stream, audit, root / f"cursors-{stream}-{bool(client)}")
    settings = ShipperSettings()
    with Shipper(
        [source], store, signer, settings, redactor=Redactor(), witnesses=submitter
    ) as shipper:
        elapsed = 0.0
        for lo in range(0, len(data), BATCH):
            with audit.open("ab") as f:
                f.write(b"".join(d + b"\n" for d in data[lo : lo + BATCH]))
            t0 = time.perf_counter()
            shipper.drain()
            shipper.publish()
            elapsed += time.perf_counter() - t0
        if shipper.log.stream(stream).size != len(data):
            raise SystemExit("the shipper did not ship every line")
    return len(data) / elapsed, len(store.list("cosignatures/"))


def measure_throughput() -> dict[str, float]:
    data = [line.encode() for line in corpus(N)]
    signer = Ed25519Signer.generate(layout.DEFAULT_ORIGIN_PREFIX)
    plain: list[float] = []
    witnessed: list[float] = []
    ratios: list[float] = []
    cosigned = 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with witness_process(root, signer) as client:
            for rep in range(REPS):
                order = [None, client] if rep % 2 == 0 else [client, None]
                got: dict[bool, float] = {}
                for c in order:
                    rate, n = _ship(root, rep, data, signer, c)
                    got[c is not None] = rate
                    cosigned += n
                plain.append(got[False])
                witnessed.append(got[True])
                ratios.append(got[True] / got[False])
    return {
        "plain": statistics.median(plain),
        "witnessed": statistics.median(witnessed),
        "ratio": statistics.median(ratios),
        "ratio_lo": min(ratios),
        "ratio_hi": max(ratios),
        "cosigned": cosigned / REPS,
    }


def measure_latency() -> dict[str, float]:
    """Seconds from a KV write to a stored cosignature covering its audit entry (live stack)."""
    from clawql_secrets.audit.store import LocalWormStore
    from clawql_secrets.audit.witnessing import COSIGNATURES
    from clawql_secrets.cluster import bootstrap, stack
    from clawql_secrets.issuer import LocalIssuer

    rng = random.Random(14)
    with tempfile.TemporaryDirectory() as tmp:
        settings = stack.free_settings(Path(tmp) / ".clawql")
        with stack.running(settings):
            issuer = LocalIssuer.load_or_create(settings.issuer_dir, stack.ISSUER_URL)
            store = LocalWormStore(settings.audit_dir / "store")
            marks: dict[str, float] = {}
            with stack.client_for(settings, retry_for=30) as client:
                token = bootstrap.operator_login(client, issuer)
                interval = 10.0
                deadline = time.monotonic() + 2 * interval
                for i in range(SAMPLES):
                    time.sleep(max(0.0, rng.uniform(0, 2 * interval / SAMPLES)))
                    mark = f"bench-witness-{i}-{rng.getrandbits(32):08x}"
                    marks[mark] = time.time()
                    client.write(f"secret/data/ops/{mark}", {"data": {"i": i}}, token=token)
                    if time.monotonic() > deadline:
                        break
            found: dict[str, float] = {}
            give_up = time.monotonic() + 6 * interval
            located: dict[str, tuple[str, int]] = {}
            while len(found) < len(marks) and time.monotonic() < give_up:
                for name in store.list("segments/"):
                    seg = layout.parse_segment_name(name)
                    for offset, entry in enumerate(layout.decode_segment(store.get(name))):
                        for mark in marks:
                            if mark not in located and mark.encode() in entry:
                                located[mark] = (seg.stream, seg.first + offset)
                cosigned: dict[str, int] = {}
                for name in store.list(f"{COSIGNATURES}/"):
                    _, stream, size, _ = name.split("/")
                    cosigned[stream] = max(cosigned.get(stream, 0), int(size))
                now = time.time()
                for mark, (stream, index) in located.items():
                    if mark not in found and cosigned.get(stream, 0) > index:
                        found[mark] = now - marks[mark]
                time.sleep(0.1)
    if len(found) < len(marks):
        raise SystemExit(f"only {len(found)} of {len(marks)} entries were witnessed in time")
    lat = sorted(found.values())
    return {
        "p50": statistics.median(lat),
        "p99": lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))],
        "max": lat[-1],
        "n": len(lat),
        "interval": interval,
    }


def run() -> str:
    t = measure_throughput()
    lat = measure_latency()
    return "\n".join(
        [
            "## Witnessed checkpoints",
            "",
            f"Throughput: {N} audit lines shipped in batches of {BATCH} (one checkpoint per "
            f"batch per stream), one thread, with a real witness process on loopback cosigning "
            f"every checkpoint, against no witness; {REPS} interleaved repetitions, medians.",
            "",
            "| shipper | entries/s | vs no witness |",
            "|---|---:|---:|",
            f"| no witness | {t['plain']:,.0f} | 1.00 |",
            f"| every checkpoint witnessed ({t['cosigned']:.0f} cosignatures per run) "
            f"| {t['witnessed']:,.0f} | {t['ratio']:.2f} "
            f"({t['ratio_lo']:.2f} to {t['ratio_hi']:.2f}) |",
            "",
            f"Latency on a local stack (`clawql-secrets up` config: checkpoint every "
            f"{lat['interval']:.0f} s, the witness its own process): {lat['n']:.0f} KV writes "
            f"spread over two intervals, from the write to a stored cosignature covering its "
            f"audit entry: p50 {lat['p50']:.1f} s, p99 {lat['p99']:.1f} s (max "
            f"{lat['max']:.1f} s). The checkpoint interval bounds it; at production's 60 s "
            "it is up to about a minute.",
            "",
        ]
    )


if __name__ == "__main__":
    print(run())
