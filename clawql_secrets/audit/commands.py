"""CLI: ``audit ship|verify|prove|consistency|check-proof|query``.

Exit codes carry the verdict: 0 only when everything checked holds. Every
problem is printed with where it was found; secrets never appear because the
log holds none and the checks print names and indexes, not entry contents.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from clawql_secrets.audit import layout, verify
from clawql_secrets.audit.checkpoint import Checkpoint, VerifierKey, open_checkpoint
from clawql_secrets.audit.store import LocalWormStore, WormStore
from clawql_secrets.errors import ConfigError, InputError


def register(sub: Any) -> None:
    audit = sub.add_parser("audit", help="verify and prove the tamper-evident audit log")
    asub = audit.add_subparsers(dest="audit_command", metavar="ACTION")
    asub.required = True

    p = asub.add_parser("verify", help="recompute every stream and check every checkpoint")
    _store(p)
    _pubkey(p, required=True)
    p.add_argument(
        "--known",
        type=Path,
        action="append",
        default=[],
        metavar="NOTE",
        help="a signed checkpoint kept outside the store; the log must still extend it",
    )
    p.add_argument(
        "--prometheus",
        metavar="URL",
        help="a Prometheus server: every checkpoint (size, root) it recorded must fit the log",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_verify)

    p = asub.add_parser("prove", help="print an inclusion proof against the latest checkpoint")
    _store(p)
    _pubkey(p, required=False)
    p.add_argument("--stream", required=True, help="log stream (one per OpenBao node)")
    p.add_argument("--index", type=int, required=True, help="0-based entry index")
    p.set_defaults(func=_prove)

    p = asub.add_parser(
        "consistency", help="print a consistency proof between two signed sizes of a stream"
    )
    _store(p)
    _pubkey(p, required=False)
    p.add_argument("--stream", required=True, help="log stream (one per OpenBao node)")
    p.add_argument("--old", type=int, required=True, help="the older signed tree size")
    p.add_argument("--new", type=int, required=True, help="the newer signed tree size")
    p.set_defaults(func=_consistency)

    p = asub.add_parser(
        "check-proof", help="check a proof printed by `audit prove` or `audit consistency`"
    )
    _pubkey(p, required=True)
    p.add_argument("--origin-prefix", default=layout.DEFAULT_ORIGIN_PREFIX)
    p.add_argument("proof", type=Path, help="the proof JSON file ('-' for stdin)")
    p.set_defaults(func=_check_proof)

    p = asub.add_parser(
        "query", help="entries of an agent (optionally tenant, path, time), each with its proof"
    )
    _store(p)
    _pubkey(p, required=True)
    p.add_argument("--agent", required=True, help="entity id, display name or agent name")
    p.add_argument("--tenant", help="auth metadata tenant")
    p.add_argument("--path", help="request path, or a shell-style pattern (secret/data/x/*)")
    p.add_argument("--since", help="ISO 8601 time with zone (inclusive)")
    p.add_argument("--until", help="ISO 8601 time with zone (inclusive)")
    p.add_argument("--stream", action="append", default=[], help="only these streams")
    p.set_defaults(func=_query)

    p = asub.add_parser("ship", help="tail, redact and ship the nodes' audit files (foreground)")
    p.add_argument("--config", type=Path, required=True, help="shipper configuration (JSON/YAML)")
    p.set_defaults(func=_ship)

    p = asub.add_parser(
        "ingest", help="serve an mTLS endpoint for Fluent Bit's http output (foreground)"
    )
    p.add_argument("--config", type=Path, required=True, help="ingest configuration (JSON/YAML)")
    p.set_defaults(func=_ingest)


def _store(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        required=True,
        help="the local write-once directory, or s3://bucket[/prefix] (boto3 credentials)",
    )
    p.add_argument("--s3-endpoint", metavar="URL", help="S3 endpoint (for S3-compatible stores)")
    p.add_argument(
        "--origin-prefix",
        default=layout.DEFAULT_ORIGIN_PREFIX,
        help=f"checkpoint origin prefix (default {layout.DEFAULT_ORIGIN_PREFIX})",
    )


def _pubkey(p: argparse.ArgumentParser, *, required: bool) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--pubkey", metavar="VERIFIER_KEY", help="C2SP verifier key <name>+<hash>+<key>")
    g.add_argument("--pubkey-file", type=Path, help="a file holding the verifier key")


def _verifier(args: argparse.Namespace) -> VerifierKey | None:
    if args.pubkey_file is not None:
        try:
            return VerifierKey.parse(args.pubkey_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read verifier key file {args.pubkey_file}") from exc
    return None if args.pubkey is None else VerifierKey.parse(args.pubkey)


def _open_store(args: argparse.Namespace) -> WormStore:
    if str(args.store).startswith("s3://"):
        from clawql_secrets.audit.s3store import S3Location, S3WormStore, make_client

        store = S3WormStore(
            make_client(endpoint_url=args.s3_endpoint), S3Location.parse(str(args.store))
        )
        store.check_bucket()
        return store
    path = Path(args.store)
    if not path.is_dir():
        raise InputError(f"audit store {path} is not a directory")
    return LocalWormStore(path)


def _read(path: Path) -> bytes:
    try:
        return sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}") from exc


def _verify(args: argparse.Namespace) -> int:
    verifier = _verifier(args)
    if verifier is None:  # argparse makes one of the two required
        raise InputError("a verifier key is required")
    known: list[Checkpoint] = []
    for path in args.known:
        known.append(open_checkpoint(_read(path), verifier))
    if args.prometheus:
        from clawql_secrets.audit.query import prometheus_heads

        heads = prometheus_heads(args.prometheus)
        if not heads:
            raise InputError(f"Prometheus at {args.prometheus} holds no audit checkpoint record")
        known.extend(h.checkpoint for h in heads)
        print(f"checking {len(heads)} tree heads recorded by Prometheus", file=sys.stderr)
    result = verify.report(
        _open_store(args), verifier, origin_prefix=args.origin_prefix, known=known
    )
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        if result.problem:
            print(f"FAIL: {result.problem}")
        for s in result.streams:
            if s.problem:
                print(f"FAIL {s.stream}: {s.problem}")
            else:
                print(
                    f"ok   {s.stream}: {s.entries} entries, {s.checkpoints} checkpoints, "
                    f"latest size {s.latest_size} root {s.latest_root}"
                )
        print("verified" if result.ok else "NOT verified")
    return 0 if result.ok else 1


def _prove(args: argparse.Namespace) -> int:
    proof = verify.prove(
        _open_store(args),
        args.stream,
        args.index,
        _verifier(args),
        origin_prefix=args.origin_prefix,
    )
    print(json.dumps(proof.to_json(), indent=2))
    return 0


def _check_proof(args: argparse.Namespace) -> int:
    verifier = _verifier(args)
    if verifier is None:
        raise InputError("a verifier key is required")
    try:
        document = json.loads(_read(args.proof))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{args.proof} is not JSON") from exc
    if isinstance(document, dict) and document.get("format") == verify.CONSISTENCY_FORMAT:
        cons = verify.ConsistencyProof.from_json(document)
        old, new = verify.check_consistency(cons, verifier, origin_prefix=args.origin_prefix)
        print(
            f"stream {cons.stream!r}: the signed tree of size {old.size} is a prefix of "
            f"the signed tree of size {new.size}"
        )
        return 0
    proof = verify.InclusionProof.from_json(document)
    cp = verify.check_inclusion(proof, verifier, origin_prefix=args.origin_prefix)
    print(f"entry {proof.index} of stream {proof.stream!r} is in the log at tree size {cp.size}")
    return 0


def _consistency(args: argparse.Namespace) -> int:
    proof = verify.consistency(
        _open_store(args),
        args.stream,
        args.old,
        args.new,
        _verifier(args),
        origin_prefix=args.origin_prefix,
    )
    print(json.dumps(proof.to_json(), indent=2))
    return 0


def _query(args: argparse.Namespace) -> int:
    from clawql_secrets.audit.query import QueryFilter, parse_time, query

    verifier = _verifier(args)
    if verifier is None:
        raise InputError("a verifier key is required")
    flt = QueryFilter(
        agent=args.agent,
        tenant=args.tenant,
        path=args.path,
        since=None if args.since is None else parse_time(args.since),
        until=None if args.until is None else parse_time(args.until),
    )
    matches = query(
        _open_store(args),
        verifier,
        flt,
        origin_prefix=args.origin_prefix,
        only_streams=args.stream,
    )
    print(json.dumps({"matches": [m.to_json() for m in matches]}, indent=2))
    return 0


def _ship(args: argparse.Namespace) -> int:
    from clawql_secrets.audit.metrics import registry_for
    from clawql_secrets.audit.ship_config import load_config, open_signer, open_store
    from clawql_secrets.audit.shipper import Shipper

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("clawql_secrets").setLevel(logging.INFO)
    config = load_config(args.config)
    store = open_store(config.store)
    signer, release = open_signer(config.signer)
    if config.verifier_file is not None:
        from clawql_secrets.audit.ship_config import verifier_of

        try:
            config.verifier_file.parent.mkdir(parents=True, exist_ok=True)
            config.verifier_file.write_text(str(verifier_of(signer)) + "\n", encoding="utf-8")
        except OSError as exc:
            release()
            raise ConfigError(f"cannot write the verifier key to {config.verifier_file}") from exc
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = None
    try:
        with Shipper(config.sources(), store, signer, config.settings()) as shipper:
            if config.metrics is not None:
                from prometheus_client import start_http_server

                try:
                    server, _ = start_http_server(
                        config.metrics.port,
                        addr=config.metrics.host,
                        registry=registry_for(shipper.metrics),
                    )
                except OSError as exc:
                    raise ConfigError(
                        f"cannot serve metrics on {config.metrics.host}:{config.metrics.port}"
                    ) from exc
                print(
                    f"metrics on http://{config.metrics.host}:{server.server_port}/metrics",
                    flush=True,
                )
            print(f"shipping {', '.join(shipper.streams)}", flush=True)
            shipper.run(stop)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        release()
    print("stopped", flush=True)
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from clawql_secrets.audit.fluentbit import load_ingest_config, serve
    from clawql_secrets.audit.ship_config import open_signer, open_store

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("clawql_secrets").setLevel(logging.INFO)
    config = load_ingest_config(args.config)
    store = open_store(config.store)
    signer, release = open_signer(config.signer)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve(config, store, signer, stop)
    finally:
        release()
    print("stopped", flush=True)
    return 0
